//! How the session token travels: the cookie (browsers), a request header (API and mobile
//! clients), or both on the same routes.

use coatcheck_core::{KeyRing, Verified};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The response header that carries the token back in [`Transport::bearer`] mode.
pub const BEARER_RESPONSE_HEADER: &str = "x-session-token";

/// Where the layer reads the session token and where it sends a new one.
///
/// - [`Transport::cookie`] (the default): the `Cookie` / `Set-Cookie` headers.
/// - [`Transport::header`]: a request header you name (Spring Session's `X-Auth-Token`); when
///   the session is created or its id rotates (`login`, `regenerate`) the response carries
///   the new token in the same header, and after `destroy` an empty one. No cookie is read
///   or written.
/// - [`Transport::bearer`]: `Authorization: Bearer <token>` in requests, the token back in
///   [`BEARER_RESPONSE_HEADER`].
/// - [`Transport::and_cookie`] on either: both on the same routes — a request that carries
///   the header is answered in the header, any other one with the cookie.
///
/// The token is the same signed value as the cookie (`s:<id>.<signature>`, percent-encoded),
/// never a raw id: an unknown, forged or expired token is treated exactly as such a cookie
/// (no session; a write creates one under a fresh id).
///
/// ```
/// use coatcheck::{KeyRing, SessionLayer, Transport};
/// use coatcheck::memory::MemoryStore;
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let layer = SessionLayer::builder(MemoryStore::new(), keys)
///     .transport(Transport::bearer().and_cookie())
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    cookie: bool,
    header: Option<TokenHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenHeader {
    Named(HeaderName),
    Bearer,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::cookie()
    }
}

impl Transport {
    /// The cookie only (the default).
    pub fn cookie() -> Self {
        Transport {
            cookie: true,
            header: None,
        }
    }

    /// A request header named `name` (e.g. `HeaderName::from_static("x-auth-token")`); the
    /// same header answers.
    pub fn header(name: HeaderName) -> Self {
        Transport {
            cookie: false,
            header: Some(TokenHeader::Named(name)),
        }
    }

    /// `Authorization: Bearer <token>`; answers in [`BEARER_RESPONSE_HEADER`].
    pub fn bearer() -> Self {
        Transport {
            cookie: false,
            header: Some(TokenHeader::Bearer),
        }
    }

    /// Also the cookie, for browsers on the same routes.
    pub fn and_cookie(mut self) -> Self {
        self.cookie = true;
        self
    }

    /// Whether the cookie is read and written.
    pub fn uses_cookie(&self) -> bool {
        self.cookie
    }

    /// Whether a header token is read and written.
    pub fn uses_header(&self) -> bool {
        self.header.is_some()
    }

    /// The token of the request's header, verified: `Some(None)` when the header is there
    /// but does not verify (no session, as for a bad cookie), `None` when it is absent.
    pub(crate) fn read(&self, headers: &HeaderMap, keys: &KeyRing) -> Option<Option<Verified>> {
        let raw = match self.header.as_ref()? {
            TokenHeader::Named(name) => headers.get(name)?.to_str().ok().map(str::trim),
            // An `Authorization` of another scheme (HTTP Basic, which browsers add behind a
            // basic-auth proxy) is not a session token at all: it must not hide the cookie.
            TokenHeader::Bearer => {
                let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
                let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                Some(token.trim())
            }
        };
        Some(
            raw.filter(|t| !t.is_empty())
                .and_then(|t| keys.verify_cookie_value(t)),
        )
    }

    /// The request header the token is read from.
    pub(crate) fn request_header(&self) -> Option<HeaderName> {
        match self.header.as_ref()? {
            TokenHeader::Named(name) => Some(name.clone()),
            TokenHeader::Bearer => Some(AUTHORIZATION),
        }
    }

    /// The header a response carries the token in.
    pub(crate) fn response_header(&self) -> Option<HeaderName> {
        match self.header.as_ref()? {
            TokenHeader::Named(name) => Some(name.clone()),
            TokenHeader::Bearer => Some(HeaderName::from_static(BEARER_RESPONSE_HEADER)),
        }
    }
}

/// The token for a response: the signed id, or empty (the session is over).
pub(crate) fn token_value(keys: &KeyRing, id: Option<&coatcheck_core::SessionId>) -> HeaderValue {
    match id {
        Some(id) => HeaderValue::from_str(&keys.sign_cookie_value(id))
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        None => HeaderValue::from_static(""),
    }
}
