//! Session ids hashed at rest: a store adapter that keys every record by a hash of its id.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::{Capabilities, Record, SessionId, SessionInfo, SessionLimit, SessionStore, StoreError};

/// [`HashedIds::new`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashedIdsError {
    /// The store lays records out for express-session (Node looks them up by the raw id).
    #[error("express-compatible mode stores sessions under the raw id for Node; it cannot hash ids at rest")]
    ExpressLayout,
}

/// How long a [`hashed_key`] is: 43 base64url characters.
pub const HASHED_KEY_LEN: usize = 43;

/// The key under which a hashing store keeps session `id`: SHA-256 of a
/// domain-separation prefix and the id, base64url (43 characters).
///
/// A plain hash, not an HMAC: a generated id is 192 random bits, so its hash can be neither
/// inverted nor brute-forced, and a key would be one more secret to keep and rotate with no
/// gain (scs's `HashTokenInStore` and Rails' `"2::" + sha256(id)` are plain hashes too).
pub fn hashed_key(id: &SessionId) -> SessionId {
    let digest = Sha256::new()
        .chain_update(b"coatcheck session id v1\0")
        .chain_update(id.as_str().as_bytes())
        .finalize();
    SessionId::parse(&URL_SAFE_NO_PAD.encode(digest))
        .expect("43 base64url characters are a valid session id")
}

/// A store that never sees a raw session id: every record is keyed by [`hashed_key`] of
/// its id, so a dump, a replica, a slow-query log or a Redis `MONITOR` stream holds no id
/// that a cookie could carry. Wraps any native store; the user index, device handles and
/// every other column work as before (they hold the hashes). A lookup by hash also removes
/// the timing side channel of comparing attacker-chosen ids against stored keys (the Rails
/// CVE-2019-16782 family).
///
/// [`list_for_user`](SessionStore::list_for_user) answers the stored (hashed) ids: use
/// device handles ([`SessionStore::delete_device`]) to act on one listed session, or
/// [`SessionStore::stored_id`] to recognise one.
///
/// Turning it on for a store that already holds sessions:
/// [`raw_fallback(true)`](Self::raw_fallback) lets records stored under the raw id be read, saved, touched and
/// deleted there, while every new record — including the one a `login()` or
/// `regenerate()` rotates a session into — is stored hashed. A raw-keyed session stays
/// under its raw id until its next `login()`/`regenerate()` or its end: a session kept
/// alive by activity keeps it (up to its absolute timeout, if the policy has one). Turn the
/// fallback off when that window has passed, or accept that the sessions still under a
/// raw id are then signed out. Without the
/// fallback (the default), a raw-keyed record is never found: that is what keeps a leaked
/// raw key useless. The fallback never looks up an id as long as a hashed key
/// ([`HASHED_KEY_LEN`]): otherwise a hashed key taken from a dump and signed as a cookie
/// would find its record under the raw lookup (found by the history checker, which saw
/// sessions live under two ids). Generated ids are 32 characters; an application whose
/// own id generator makes 43-character ids cannot migrate with the fallback.
///
/// Express-compatible stores are refused ([`HashedIdsError::ExpressLayout`]): Node looks
/// sessions up by the raw id.
///
/// ```
/// # #[derive(Debug)] struct S;
/// # #[async_trait::async_trait] impl coatcheck::core::SessionStore for S {
/// # async fn create(&self, _: &coatcheck::core::Record) -> Result<(), coatcheck::core::StoreError> { Ok(()) }
/// # async fn load(&self, _: &coatcheck::core::SessionId) -> Result<Option<coatcheck::core::Record>, coatcheck::core::StoreError> { Ok(None) }
/// # async fn save(&self, _: &coatcheck::core::Record) -> Result<u64, coatcheck::core::StoreError> { Ok(2) }
/// # async fn touch(&self, _: &coatcheck::core::SessionId, _: coatcheck::core::Timestamp) -> Result<bool, coatcheck::core::StoreError> { Ok(false) }
/// # async fn delete(&self, _: &coatcheck::core::SessionId) -> Result<bool, coatcheck::core::StoreError> { Ok(false) }
/// # async fn list_for_user(&self, _: &str) -> Result<Vec<coatcheck::core::SessionInfo>, coatcheck::core::StoreError> { Ok(vec![]) }
/// # async fn delete_for_user(&self, _: &str, _: Option<&coatcheck::core::SessionId>) -> Result<u64, coatcheck::core::StoreError> { Ok(0) }
/// # async fn delete_expired(&self) -> Result<u64, coatcheck::core::StoreError> { Ok(0) }
/// # fn capabilities(&self) -> coatcheck::core::Capabilities { coatcheck::core::Capabilities::new() }
/// # }
/// # let my_store = S;
/// use coatcheck::core::{HashedIds, SessionId, SessionStore};
///
/// // While migrating an existing store; drop `.raw_fallback(true)` later.
/// let store = HashedIds::new(my_store).unwrap().raw_fallback(true);
/// let id = SessionId::generate();
/// assert_ne!(store.stored_id(&id), id);
/// ```
#[derive(Debug, Clone)]
pub struct HashedIds<S> {
    inner: S,
    raw_fallback: bool,
}

impl<S: SessionStore> HashedIds<S> {
    /// Keys `inner`'s records by hashed ids.
    pub fn new(inner: S) -> Result<Self, HashedIdsError> {
        if inner.capabilities().express_layout {
            return Err(HashedIdsError::ExpressLayout);
        }
        Ok(HashedIds {
            inner,
            raw_fallback: false,
        })
    }

    /// Whether records stored under the raw id (before hashing was turned on) are still
    /// found (default `false`). Costs a second round trip whenever the hashed key misses.
    pub fn raw_fallback(mut self, yes: bool) -> Self {
        self.raw_fallback = yes;
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether `id` may be looked up under itself (the migration fallback): never an id
    /// shaped like a hashed key.
    fn raw_lookup(&self, id: &SessionId) -> bool {
        self.raw_fallback && id.as_str().len() != HASHED_KEY_LEN
    }

    fn hashed(record: &Record) -> Record {
        let mut r = record.clone();
        r.id = hashed_key(&record.id);
        r
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for HashedIds<S> {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        self.inner.create(&Self::hashed(record)).await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        match self.inner.load(&hashed_key(id)).await? {
            Some(mut r) => {
                r.id = id.clone();
                Ok(Some(r))
            }
            None if self.raw_lookup(id) => self.inner.load(id).await,
            None => Ok(None),
        }
    }

    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        match self.inner.save(&Self::hashed(record)).await {
            Err(StoreError::NotFound) if self.raw_lookup(&record.id) => {
                self.inner.save(record).await
            }
            other => other,
        }
    }

    async fn touch(
        &self,
        id: &SessionId,
        expires_at: crate::Timestamp,
    ) -> Result<bool, StoreError> {
        match self.inner.touch(&hashed_key(id), expires_at).await? {
            false if self.raw_lookup(id) => self.inner.touch(id, expires_at).await,
            found => Ok(found),
        }
    }

    /// Also takes an id as [`list_for_user`](SessionStore::list_for_user) answers it (a
    /// hashed key): deleting the listed sessions is how an application caps or prunes a
    /// user's sessions (SECURITY.md), and hashing a listed id again would delete nothing.
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        if id.as_str().len() == HASHED_KEY_LEN {
            // Generated ids are never of this length; a listed (stored) key is.
            let listed = self.inner.delete(id).await?;
            let hashed = self.inner.delete(&hashed_key(id)).await?;
            return Ok(listed || hashed);
        }
        let hashed = self.inner.delete(&hashed_key(id)).await?;
        if self.raw_lookup(id) {
            // Both: a raw record must not outlive its session's logout.
            let raw = self.inner.delete(id).await?;
            return Ok(hashed || raw);
        }
        Ok(hashed)
    }

    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        match self.inner.delete_version(&hashed_key(id), version).await {
            Err(StoreError::NotFound) if self.raw_lookup(id) => {
                self.inner.delete_version(id, version).await
            }
            other => other,
        }
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        self.inner.list_for_user(user_id).await
    }

    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let Some(except) = except else {
            return self.inner.delete_for_user(user_id, None).await;
        };
        let mut keep = hashed_key(except);
        if self.raw_lookup(except) && self.inner.load(&keep).await?.is_none() {
            // The session to keep may still be stored under its raw id.
            keep = except.clone();
        }
        self.inner.delete_for_user(user_id, Some(&keep)).await
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.inner.delete_expired().await
    }

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        self.inner.delete_device(user_id, handle).await
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.inner
            .create_limited(&Self::hashed(record), limit)
            .await
    }

    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        // Listed ids are the keys themselves (and, in a migration, raw ids).
        self.inner.load(id).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn stored_id(&self, id: &SessionId) -> SessionId {
        hashed_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_a_valid_id_that_reveals_nothing_of_the_id() {
        let id = SessionId::generate();
        let key = hashed_key(&id);
        assert_eq!(key.as_str().len(), HASHED_KEY_LEN);
        assert_ne!(
            id.as_str().len(),
            HASHED_KEY_LEN,
            "generated ids can fall back"
        );
        assert_ne!(key, id);
        assert!(!key.as_str().contains(id.as_str()));
        assert_eq!(key, hashed_key(&id), "deterministic");
        assert_ne!(key, hashed_key(&SessionId::generate()));
    }
}
