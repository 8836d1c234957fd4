//! Sessions bound to the user's credentials: a fingerprint of them is stored at `login()`
//! and compared on every load, so a password change made anywhere (another app, an admin
//! script, SQL) signs out every device of that user on its next request.
//!
//! What is stored: under [`CREDENTIAL_KEY`], the SHA-256 of a domain-separation prefix, the
//! user id (length-prefixed) and the fingerprint the application returns, base64url — never the fingerprint itself, so a
//! password hash given as the fingerprint does not land in the session store. A plain hash
//! rather than an HMAC under the cookie secret: rotating the cookie secrets must not sign
//! everyone out, and the stamp guards nothing by being secret (whoever can write the store
//! can write any session anyway). It is compared with the current one in constant time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{SessionError, SessionLayerBuilder};

/// The data key under which a session keeps the stamp of its user's credentials (see
/// [`SessionLayerBuilder::credential_check`]). Like [`REMEMBER_ME_KEY`](crate::REMEMBER_ME_KEY)
/// it is the session's own: the application cannot read or write it, and
/// [`Session::clear`](crate::Session::clear) keeps it.
pub const CREDENTIAL_KEY: &str = coatcheck_core::keys::CREDENTIAL_KEY;

/// What a credential lookup may fail with (the application's own error, boxed).
pub type CredentialLookupError = Box<dyn std::error::Error + Send + Sync>;

type LookupFuture =
    Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, CredentialLookupError>> + Send>>;
type Lookup = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// The layer's side of the check: the application's lookup.
#[derive(Clone)]
pub(crate) struct CredentialCheck {
    lookup: Lookup,
}

/// A fingerprint as stored: what [`CredentialCheck::stamp`] returns.
pub(crate) struct Stamp(String);

impl Stamp {
    /// The stamp of `fingerprint` for `user`, as the application verified it
    /// ([`Session::login_verified`](crate::Session::login_verified)).
    pub(crate) fn verified(user: &str, fingerprint: &[u8]) -> Self {
        Self::of(user, fingerprint)
    }

    /// Binds the user too: two users whose fingerprints happen to be equal (a credentials
    /// version both are at) never share a stamp, so a session whose principal changes
    /// without a login (express mode's principal key written directly) fails the check
    /// (found by a review).
    fn of(user: &str, fingerprint: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"coatcheck credential stamp v1\0");
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(fingerprint);
        Stamp(URL_SAFE_NO_PAD.encode(h.finalize()))
    }

    /// The value stored under [`CREDENTIAL_KEY`].
    pub(crate) fn into_value(self) -> Value {
        Value::String(self.0)
    }

    /// Whether `stored` (the session's value under [`CREDENTIAL_KEY`]) is this stamp;
    /// a missing or malformed value is not. Constant time in the stamp's bytes.
    pub(crate) fn matches(&self, stored: Option<&Value>) -> bool {
        match stored {
            Some(Value::String(s)) => bool::from(s.as_bytes().ct_eq(self.0.as_bytes())),
            _ => false,
        }
    }
}

impl CredentialCheck {
    /// The stamp of `user`'s current credentials; `None` when the lookup says the user is
    /// gone.
    ///
    /// Bounded by the layer's [`store_timeout`](crate::SessionConfig::store_timeout), like
    /// a store call: a hung user database fails the request with `503` instead of hanging
    /// every signed-in request.
    pub(crate) async fn stamp(
        &self,
        user: &str,
        limit: Option<Duration>,
    ) -> Result<Option<Stamp>, SessionError> {
        let lookup = (self.lookup)(user.to_owned());
        let fingerprint = match limit {
            None => lookup.await,
            Some(after) => match tokio::time::timeout(after, lookup).await {
                Ok(found) => found,
                Err(_) => {
                    tracing::warn!(?after, "credential lookup timed out");
                    Err(Box::new(crate::StoreTimedOut::new("credential lookup", after)) as _)
                }
            },
        }
        .map_err(SessionError::CredentialLookup)?;
        Ok(fingerprint.as_deref().map(|fp| Stamp::of(user, fp)))
    }
}

impl<T> SessionLayerBuilder<T> {
    /// Binds every signed-in session to its user's credentials. `lookup` answers, for a
    /// user id, a fingerprint of that user's current credentials — anything that changes
    /// when they do: the password hash, a credentials version, the time of the last
    /// password change — or `None` when the user no longer exists.
    ///
    /// [`Session::login`](crate::Session::login) stores a stamp of it (SHA-256, never the
    /// fingerprint itself) in the same write as the login; every later load of a signed-in
    /// session asks `lookup` again and compares, in constant time. A mismatch, a user that
    /// is gone, or a signed-in session without a stamp (one logged in before the check was
    /// turned on, or by writing the principal's key directly in express-compatible mode)
    /// deletes the session from the store and the request carries on logged out, with
    /// the cookie cleared and [`SessionEvent::CredentialsChanged`](crate::SessionEvent)
    /// sent. So a password change made anywhere — another service, an admin script, SQL —
    /// signs out every device of that user on its next request (axum-login's
    /// `session_auth_hash`, Django's `get_session_auth_hash`).
    ///
    /// The cost: one call of `lookup` per request that reads a signed-in session. A lookup
    /// error fails the request with [`SessionError::CredentialLookup`] (`500`); it never
    /// passes a session unchecked.
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, RwLock};
    ///
    /// // user id -> password hash, as the application's user table keeps it.
    /// let users: Arc<RwLock<HashMap<String, String>>> = Arc::default();
    /// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .credential_check(move |user: String| {
    ///         let users = users.clone();
    ///         async move {
    ///             let users = users.read().map_err(|_| "user table lock poisoned")?;
    ///             Ok::<_, &str>(users.get(&user).map(|hash| hash.as_bytes().to_vec()))
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn credential_check<F, Fut, E>(mut self, lookup: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Vec<u8>>, E>> + Send + 'static,
        E: Into<CredentialLookupError>,
    {
        let lookup: Lookup = Arc::new(move |user| {
            let fut = lookup(user);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        self.credential_check = Some(CredentialCheck { lookup });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_matches_only_its_own_user_and_fingerprint() {
        let stamp = Stamp::of("ada", b"$argon2id$v=19$old");
        let stored = Stamp::of("ada", b"$argon2id$v=19$old").into_value();
        assert!(stamp.matches(Some(&stored)));
        assert!(!Stamp::of("ada", b"$argon2id$v=19$new").matches(Some(&stored)));
        assert!(
            !Stamp::of("bob", b"$argon2id$v=19$old").matches(Some(&stored)),
            "another user with the same fingerprint"
        );
        assert!(!Stamp::of("ad", b"a$argon2id$v=19$old").matches(Some(&stored)));
        assert!(!stamp.matches(None));
        assert!(!stamp.matches(Some(&Value::Bool(true))));
        // Never the fingerprint itself.
        assert!(!stored.to_string().contains("argon2"));
    }
}
