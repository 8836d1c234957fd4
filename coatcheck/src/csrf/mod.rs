//! CSRF protection: a synchroniser token per session, checked on unsafe methods, behind
//! a first line of Fetch Metadata and `Origin` checks.
//!
//! The session keeps one random secret (under
//! [`CSRF_KEY`](coatcheck_core::keys::CSRF_KEY)); pages get it masked with a fresh random
//! pad on every call of [`Session::csrf_token`](crate::Session::csrf_token), so the token
//! in a compressed response changes every time (BREACH); the secret changes at every
//! `login` and `regenerate`. [`CsrfLayer`] refuses an unsafe request (anything but `GET`,
//! `HEAD`, `OPTIONS`, `TRACE`) with `403 Forbidden` unless:
//!
//! 1. the browser did not say it is cross-site (`Sec-Fetch-Site: cross-site` is refused;
//!    without that header, an `Origin` that is neither the request's own host nor a
//!    [trusted origin](CsrfLayer::trusted_origin) is refused), and
//! 2. it carries a token of this session, in the `x-csrf-token` header or, for an
//!    `application/x-www-form-urlencoded` body, in the `csrf_token` field, compared in
//!    constant time.
//!
//! A refusal ends nothing and writes nothing: the handler does not run, the session is as
//! it was. It is a [`SessionEvent::CsrfRefused`] and
//! counted in the metrics.
//!
//! Requests that carry their session in a header token
//! ([`Transport::header`](crate::Transport::header), `bearer`) are not checked by
//! default: a browser attaches no such header by itself, so a forged cross-site request
//! cannot carry it — CSRF needs an ambient credential, and a header token is not one.

mod tower;
pub use tower::CsrfService;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderName, Method, StatusCode};
use subtle::ConstantTimeEq;

use crate::{Session, SessionEvent};

const SECRET_LEN: usize = 32;

/// The header [`CsrfLayer`] reads the token from by default.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field [`CsrfLayer`] reads the token from by default.
pub const CSRF_FORM_FIELD: &str = "csrf_token";
/// The largest form body [`CsrfLayer`] reads for the token by default (64 KiB).
pub const DEFAULT_MAX_FORM_BYTES: usize = 64 * 1024;

/// A fresh secret: 32 random bytes, base64url.
pub(crate) fn new_secret() -> String {
    let mut b = [0u8; SECRET_LEN];
    // The id generator's source; a machine without one cannot make sessions either.
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(b)
}

/// `secret` masked with a fresh random pad: base64url(pad ‖ secret ⊕ pad).
pub(crate) fn mask(secret: &str) -> String {
    let secret = decode_secret(secret).unwrap_or([0; SECRET_LEN]);
    let mut out = [0u8; 2 * SECRET_LEN];
    getrandom::fill(&mut out[..SECRET_LEN]).expect("the operating system's random source failed");
    for i in 0..SECRET_LEN {
        out[SECRET_LEN + i] = secret[i] ^ out[i];
    }
    URL_SAFE_NO_PAD.encode(out)
}

fn decode_secret(secret: &str) -> Option<[u8; SECRET_LEN]> {
    URL_SAFE_NO_PAD.decode(secret).ok()?.try_into().ok()
}

/// Whether `token` is `secret` masked (in constant time).
fn verify(secret: &str, token: &str) -> Result<(), CsrfReason> {
    let raw: [u8; 2 * SECRET_LEN] = URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CsrfReason::Malformed)?;
    let secret = decode_secret(secret).ok_or(CsrfReason::Mismatch)?;
    let mut unmasked = [0u8; SECRET_LEN];
    for i in 0..SECRET_LEN {
        unmasked[i] = raw[SECRET_LEN + i] ^ raw[i];
    }
    if bool::from(unmasked.ct_eq(&secret)) {
        Ok(())
    } else {
        Err(CsrfReason::Mismatch)
    }
}

/// Why [`CsrfLayer`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CsrfReason {
    /// The browser said the request is cross-site (`Sec-Fetch-Site: cross-site`).
    CrossSite,
    /// No `Sec-Fetch-Site`, and an `Origin` that is not this host nor a trusted origin
    /// (or `null`).
    Origin,
    /// No token in the header nor the form.
    Missing,
    /// The token is not a masked token (a raw secret, truncated, not base64url).
    Malformed,
    /// The token is of another session, or of this session before its id changed.
    Mismatch,
    /// The session has no token: none was ever handed out, or it signed in (its id
    /// changed) since.
    NotIssued,
    /// The request has no session (it expired, was ended, or never existed).
    NoSession,
    /// The form was larger than [`CsrfLayer::max_form_bytes`] (`413`).
    FormTooLarge,
}

impl CsrfReason {
    /// A short name, as the metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            CsrfReason::CrossSite => "cross_site",
            CsrfReason::Origin => "origin",
            CsrfReason::Missing => "missing",
            CsrfReason::Malformed => "malformed",
            CsrfReason::Mismatch => "mismatch",
            CsrfReason::NotIssued => "not_issued",
            CsrfReason::NoSession => "no_session",
            CsrfReason::FormTooLarge => "form_too_large",
        }
    }

    /// What a person reads when the request is refused.
    pub fn message(self) -> &'static str {
        match self {
            CsrfReason::CrossSite => "cross-site request refused",
            CsrfReason::Origin => "request from another origin refused",
            CsrfReason::Missing => "CSRF token missing",
            CsrfReason::Malformed => "CSRF token malformed",
            CsrfReason::Mismatch => "CSRF token does not match this session; reload the page",
            CsrfReason::NotIssued => "no CSRF token issued to this session; reload the page",
            CsrfReason::NoSession => "no session; reload the page",
            CsrfReason::FormTooLarge => {
                "form too large for the CSRF check; send the token in the x-csrf-token header"
            }
        }
    }

    /// The status a refusal answers (`403`; `413` for a form too large to read).
    pub fn status(self) -> StatusCode {
        match self {
            CsrfReason::FormTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl std::fmt::Display for CsrfReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

#[derive(Debug, Clone)]
struct Config {
    header: HeaderName,
    field: String,
    exempt: Vec<String>,
    trusted: Vec<String>,
    check_header_tokens: bool,
    max_form_bytes: usize,
}

/// Checks a CSRF token on every unsafe request (see [the module](crate::csrf)). Put it
/// inside the [`SessionLayer`](crate::SessionLayer) (added before it, in axum), and put
/// [`Session::csrf_token`](crate::Session::csrf_token) in every form.
///
/// ```
/// use axum::{routing::{get, post}, Form, Router};
/// use coatcheck::{CsrfLayer, KeyRing, Session, SessionError, SessionLayer};
/// use coatcheck::memory::MemoryStore;
///
/// async fn page(session: Session) -> Result<String, SessionError> {
///     let token = session.csrf_token().await?;
///     Ok(format!(r#"<form method=post action=/save><input type=hidden name=csrf_token value="{token}"><button>Save</button></form>"#))
/// }
/// async fn save() -> &'static str { "saved" }
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let app: Router = Router::new()
///     .route("/", get(page))
///     .route("/save", post(save))
///     .route("/webhooks/stripe", post(save))
///     .layer(CsrfLayer::new().exempt("/webhooks/"))
///     .layer(SessionLayer::builder(MemoryStore::new(), keys).build().unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct CsrfLayer {
    config: Arc<Config>,
}

impl Default for CsrfLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CsrfLayer {
    /// The check with its defaults: the `x-csrf-token` header or the `csrf_token` field,
    /// no exempt paths, no trusted origins besides the request's own host, header-token
    /// requests not checked, forms up to 64 KiB.
    pub fn new() -> Self {
        CsrfLayer {
            config: Arc::new(Config {
                header: HeaderName::from_static(CSRF_HEADER),
                field: CSRF_FORM_FIELD.to_owned(),
                exempt: Vec::new(),
                trusted: Vec::new(),
                check_header_tokens: false,
                max_form_bytes: DEFAULT_MAX_FORM_BYTES,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The header to read the token from.
    pub fn header_name(self, name: HeaderName) -> Self {
        self.edit(|c| c.header = name)
    }

    /// The form field to read the token from.
    pub fn form_field(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|c| c.field = name)
    }

    /// Paths under `prefix` are not checked (webhooks signed by their sender, endpoints of
    /// another authentication scheme). Matched by whole path segments: `/hooks` exempts
    /// `/hooks` and `/hooks/github`, never `/hooks-admin`. Exempt as little as you can.
    pub fn exempt(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.edit(|c| c.exempt.push(prefix))
    }

    /// An origin besides the request's own host whose requests the `Origin` check lets
    /// through to the token check (`https://app.example.com`, exactly as browsers send
    /// it: scheme, host, and a port only when it is not the default).
    pub fn trusted_origin(self, origin: impl Into<String>) -> Self {
        let origin = origin.into().trim_end_matches('/').to_ascii_lowercase();
        self.edit(|c| c.trusted.push(origin))
    }

    /// Check requests that carry their session in a header token too (default `false`:
    /// see [the module](crate::csrf) for why they need no token).
    pub fn check_header_tokens(self, yes: bool) -> Self {
        self.edit(|c| c.check_header_tokens = yes)
    }

    /// The largest form body read for the token (default 64 KiB); a larger form is
    /// refused with `413` unless it sends the token in the header.
    pub fn max_form_bytes(self, n: usize) -> Self {
        self.edit(|c| c.max_form_bytes = n)
    }
}

fn is_safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The Fetch Metadata and `Origin` checks.
fn first_line(
    config: &Config,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<(), CsrfReason> {
    // A trusted origin is consulted first: every current browser sends `Sec-Fetch-Site:
    // cross-site` from another site, so a trusted list checked after Fetch Metadata had no
    // effect (a review found it). The token is still required.
    let trusted = headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| config.trusted.contains(&o.to_ascii_lowercase()));
    if trusted {
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        // `same-origin`, `same-site` (a sibling subdomain still needs the token) and
        // `none` (the user's own navigation) go on to the token.
        return match site.as_bytes() {
            b"cross-site" => Err(CsrfReason::CrossSite),
            _ => Ok(()),
        };
    }
    let Some(origin) = headers.get(ORIGIN) else {
        // An older browser or a non-browser client: the token decides.
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| CsrfReason::Origin)?
        .to_ascii_lowercase();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| authority.map(str::to_owned))
        .map(|h| h.to_ascii_lowercase());
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (authority, host) {
        (Some(a), Some(h)) if a == h => Ok(()),
        _ => Err(CsrfReason::Origin),
    }
}

/// Whether `path` is `prefix` or below it, by whole segments.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// What [`CsrfLayer::screen`] decides before any token is read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Screen {
    /// Not checked: a safe method, an exempt path, or a request carrying its session in a
    /// header token (unless [`CsrfLayer::check_header_tokens`]). Let it through.
    Pass,
    /// Refused before any token: cross-site, another origin, or no session layer. The
    /// refusal is recorded (event, metrics) and the session writes nothing.
    Refuse(CsrfReason),
    /// The token decides: `header` is the header's, if any; when it is `None` and `form`
    /// is true, read the body (at most [`CsrfLayer::form_limit`] bytes, else refuse with
    /// [`CsrfReason::FormTooLarge`] through [`CsrfLayer::refuse`]) and take
    /// [`CsrfLayer::form_token`] of it. Then [`CsrfLayer::judge`].
    Token {
        /// The token of the header.
        header: Option<String>,
        /// The body is a form that may hold it.
        form: bool,
    },
}

/// Why [`CsrfLayer::judge`] did not let a request through.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Judgement {
    /// The token is this session's: let the request through.
    Pass,
    /// Refused (`403`, recorded, nothing written).
    Refuse(CsrfReason),
    /// The session could not be read: answer as the session layer answers its failures.
    Fail(crate::SessionFailure),
}

/// The check itself, framework-free: what the tower layer does, and what another
/// framework's adapter (`coatcheck-actix`) calls in the same order: [`screen`](Self::screen),
/// perhaps [`form_token`](Self::form_token), then [`judge`](Self::judge).
impl CsrfLayer {
    /// The first look at a request: its method, path, headers, the authority of its URI
    /// (for the `Origin` check when there is no `Host` header), and its session (`None`:
    /// no session layer around the check).
    pub fn screen(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        authority: Option<&str>,
        session: Option<&Session>,
    ) -> Screen {
        let config = &self.config;
        if is_safe(method) || config.exempt.iter().any(|p| under(path, p)) {
            return Screen::Pass;
        }
        let Some(session) = session else {
            tracing::error!(
                "a CSRF check without a session layer around it: every unsafe request is refused"
            );
            return Screen::Refuse(CsrfReason::NoSession);
        };
        if session.via_header() && !config.check_header_tokens {
            return Screen::Pass;
        }
        if let Err(reason) = first_line(config, headers, authority) {
            return Screen::Refuse(self.refuse(session, reason));
        }
        let header = headers
            .get(&config.header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let form = header.is_none() && is_form(headers);
        Screen::Token { header, form }
    }

    /// The largest form body read for the token.
    pub fn form_limit(&self) -> usize {
        self.config.max_form_bytes
    }

    /// The token in a form body (`application/x-www-form-urlencoded`).
    pub fn form_token(&self, body: &[u8]) -> Option<String> {
        form_urlencoded::parse(body)
            .find(|(k, _)| *k == self.config.field)
            .map(|(_, v)| v.into_owned())
    }

    /// Records a refusal: logged, a [`SessionEvent::CsrfRefused`], and the session writes
    /// nothing (a forged request keeps nothing alive: no touch, no session created).
    pub fn refuse(&self, session: &Session, reason: CsrfReason) -> CsrfReason {
        tracing::info!(reason = reason.as_str(), "CSRF check refused a request");
        session.write_nothing();
        session.emit(SessionEvent::CsrfRefused { reason });
        reason
    }

    /// Whether `token` is one of this session's.
    pub async fn judge(&self, session: &Session, token: Option<String>) -> Judgement {
        let Some(token) = token else {
            return Judgement::Refuse(self.refuse(session, CsrfReason::Missing));
        };
        let secret = match session.csrf_secret().await {
            Ok(secret) => secret,
            // The session could not be read: answered as the session layer answers its
            // own failures (found by the history checker under faults).
            Err(e) => return Judgement::Fail(crate::SessionFailure::for_error(&e)),
        };
        let verdict = match secret {
            Some(secret) => verify(&secret, &token),
            None => match session.exists().await {
                Ok(true) => Err(CsrfReason::NotIssued),
                _ => Err(CsrfReason::NoSession),
            },
        };
        match verdict {
            Ok(()) => Judgement::Pass,
            Err(reason) => Judgement::Refuse(self.refuse(session, reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_prefixes_match_whole_segments() {
        assert!(under("/hooks", "/hooks"));
        assert!(under("/hooks/github", "/hooks"));
        assert!(under("/hooks/github", "/hooks/"));
        assert!(!under("/hooks-admin/delete", "/hooks"));
        assert!(!under("/hook", "/hooks"));
        assert!(!under("/other/hooks", "/hooks"));
    }

    #[test]
    fn masked_tokens_differ_and_verify() {
        let secret = new_secret();
        let (a, b) = (mask(&secret), mask(&secret));
        assert_ne!(a, b);
        assert_eq!(verify(&secret, &a), Ok(()));
        assert_eq!(verify(&secret, &b), Ok(()));
        assert_eq!(verify(&new_secret(), &a), Err(CsrfReason::Mismatch));
        // The secret itself, unmasked, is not a token.
        assert_eq!(verify(&secret, &secret), Err(CsrfReason::Malformed));
        assert_eq!(
            verify(&secret, &a[..a.len() - 1]),
            Err(CsrfReason::Malformed)
        );
        assert_eq!(verify(&secret, "not base64 !"), Err(CsrfReason::Malformed));
    }
}
