//! The tower layer: reads the cookie, hands the request a lazy [`Session`], writes what
//! changed and sets the cookie before the response leaves.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use coatcheck_core::{Clock, KeyRing, SessionId, SessionStore, StoreError, Timestamp, Verified};
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::config::{IdGenerator, SameSite, Secure, SessionConfig, SessionLayerBuilder};
use crate::credentials::CredentialCheck;
use crate::events::Events;
use crate::session::{CookieAction, Session};
use crate::transport::token_value;

/// What every request of one layer shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) keys: KeyRing,
    pub(crate) config: SessionConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) id_generator: IdGenerator,
    pub(crate) events: Events,
    pub(crate) credentials: Option<CredentialCheck>,
    /// The store's `db.system.name`, for metrics and spans.
    pub(crate) db_system: &'static str,
    /// Metrics are compiled in and this layer records them.
    pub(crate) metrics: bool,
}

impl Shared {
    /// One store call, bounded by [`SessionConfig::store_timeout`]: past it the call is
    /// dropped and the request fails with [`StoreTimedOut`] (a `503`), whatever the store's
    /// own timeouts are.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Named as OpenTelemetry's database conventions name a client call, like the
        // `db.client.operation.duration` metric.
        let span = tracing::debug_span!(
            "session store call",
            db.system.name = self.db_system,
            db.operation.name = operation
        );
        let started = self.metrics.then(std::time::Instant::now);
        let result = match self.config.store_timeout {
            None => call.instrument(span).await,
            Some(limit) => match tokio::time::timeout(limit, call.instrument(span)).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(operation, ?limit, "session store call timed out");
                    Err(StoreError::backend(StoreTimedOut::new(operation, limit)))
                }
            },
        };
        if let Some(started) = started {
            let failed = result.as_ref().err().and_then(crate::metrics::error_type);
            crate::metrics::store_call(self.db_system, operation, started.elapsed(), failed);
        }
        result
    }
}

/// The session store did not answer within [`SessionConfig::store_timeout`]; the source of
/// the [`StoreError::Backend`] in such a [`SessionError::Store`](crate::SessionError::Store).
///
/// ```
/// use coatcheck::{SessionError, StoreError, StoreTimedOut};
///
/// fn timed_out(e: &SessionError) -> bool {
///     matches!(e, SessionError::Store(StoreError::Backend(source)) if source.is::<StoreTimedOut>())
/// }
/// # let _ = timed_out;
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session store did not answer `{operation}` within {after:?}")]
#[non_exhaustive]
pub struct StoreTimedOut {
    /// The store method (`load`, `save`, ...).
    pub operation: &'static str,
    /// The limit that passed.
    pub after: std::time::Duration,
}

impl StoreTimedOut {
    pub(crate) fn new(operation: &'static str, after: std::time::Duration) -> Self {
        StoreTimedOut { operation, after }
    }
}

/// The session middleware. Build it with [`SessionLayer::builder`].
///
/// ```
/// use axum::{routing::get, Router};
/// use coatcheck::{KeyRing, Secure, Session, SessionLayer};
/// use coatcheck::memory::MemoryStore;
///
/// async fn handler(session: Session) -> Result<String, coatcheck::SessionError> {
///     let n: u64 = session.update("views", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
///     Ok(n.to_string())
/// }
///
/// let keys = KeyRing::new([std::env::var("SESSION_SECRET").unwrap_or_else(|_| "x".repeat(32))]).unwrap();
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(SessionLayer::builder(MemoryStore::new(), keys).build().unwrap());
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A builder over `store`, signing cookies with `keys`.
    pub fn builder(store: impl SessionStore, keys: KeyRing) -> SessionLayerBuilder {
        SessionLayerBuilder::new(Arc::new(store), keys)
    }

    /// Like [`SessionLayer::builder`] for a store already behind an `Arc`.
    pub fn builder_shared(store: Arc<dyn SessionStore>, keys: KeyRing) -> SessionLayerBuilder {
        SessionLayerBuilder::new(store, keys)
    }

    pub(crate) fn from_builder(b: SessionLayerBuilder) -> Self {
        let db_system = b.store.capabilities().system();
        SessionLayer {
            shared: Arc::new(Shared {
                db_system,
                metrics: crate::metrics::ON && b.config.metrics,
                store: b.store,
                keys: b.keys,
                config: b.config,
                clock: b.clock,
                id_generator: b.id_generator,
                events: Events::new(b.subscriber, b.event_queue),
                credentials: b.credential_check,
            }),
        }
    }

    /// How many lifecycle events were dropped because the subscriber's queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events.dropped()
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.shared.config
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around yours.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

/// The session id carried by the first cookie named `name` whose value verifies under `keys`,
/// exactly as the middleware reads it.
///
/// Useful where the layer does not run (a WebSocket upgrade handled elsewhere, a log line
/// that wants the session's [`short_hash`](coatcheck_core::SessionId::short_hash)). Headers that are not
/// visible ASCII, pairs without `=`, values in double quotes that do not verify and bad
/// signatures are skipped; any input gives `None` or a verified id, never a panic. The id is
/// not checked against a store: it may name an expired or deleted session.
///
/// ```
/// use coatcheck::{session_id_from_headers, KeyRing, SessionId};
/// use http::{header::COOKIE, HeaderMap, HeaderValue};
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let id = SessionId::generate();
/// let mut headers = HeaderMap::new();
/// let cookie = format!("theme=dark; sid={}", keys.sign_cookie_value(&id));
/// headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
///
/// let verified = session_id_from_headers(&headers, "sid", &keys).unwrap();
/// assert_eq!(verified.id, id);
/// assert!(!verified.needs_resign());
/// assert!(session_id_from_headers(&headers, "other", &keys).is_none());
/// ```
pub fn session_id_from_headers(
    headers: &HeaderMap,
    name: &str,
    keys: &KeyRing,
) -> Option<Verified> {
    signed_cookie(headers, name, keys).map(|(verified, _)| verified)
}

/// [`session_id_from_headers`], and the cookie's value as the browser sent it (unquoted).
fn signed_cookie<'h>(
    headers: &'h HeaderMap,
    name: &str,
    keys: &KeyRing,
) -> Option<(Verified, &'h str)> {
    // Pair by pair, as browsers and Express do: a neighbour cookie with bytes that are not
    // visible ASCII (a UTF-8 value set by another app) must not hide the session, so the
    // header is split on `;` as bytes and only each pair has to be UTF-8.
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.trim() == name)
        .find_map(|(_, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            keys.verify_cookie_value(v).map(|verified| (verified, v))
        })
}

/// Whether a cookie value that verified is spelled exactly as
/// [`KeyRing::sign_cookie_value`] spells it (`s%3A` prefix; the signature's `+` and `/` as
/// `%2B` and `%2F`, nothing else escaped): then, signed with the current secret, it is
/// what signing its id again would give, and a `Set-Cookie` for the same id can send it
/// back as it came instead of computing the HMAC again. (Verification also takes `s:`,
/// lower-case escapes and escaped letters; those are signed afresh.)
fn is_canonical(value: &str) -> bool {
    let Some((_, sig)) = value.strip_prefix("s%3A").and_then(|v| v.rsplit_once('.')) else {
        return false;
    };
    let mut rest = sig.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        rest = match first {
            b'%' if tail.starts_with(b"2B") || tail.starts_with(b"2F") => &tail[2..],
            c if c.is_ascii_alphanumeric() => tail,
            _ => return false,
        };
    }
    true
}

fn is_secure<B>(config: &SessionConfig, req: &Request<B>) -> bool {
    match config.secure {
        Secure::Always => true,
        Secure::Never => false,
        Secure::Auto => {
            if req.uri().scheme_str() == Some("https") {
                return true;
            }
            config.trust_proxy
                && req
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        }
    }
}

/// The cookie's `Expires` date (IMF-fixdate, whole seconds). httpdate writes it directly;
/// the cookie crate's own rendering goes through `time`'s general formatter, about half a
/// microsecond per write request (BENCHMARKS.md, the write path accounted). Both spell the
/// same bytes (test `expires_is_spelled_as_the_cookie_crate_spells_it`). httpdate panics
/// past the year 9999, so a later expiry (an application's `set_expiry` far ahead, a huge
/// timeout) is written as the last second of 9999, and one before 1970 as the epoch.
fn http_date(t: Timestamp) -> String {
    /// 9999-12-31T23:59:59Z, the last second httpdate writes.
    const LAST: u64 = 253_402_300_799;
    let secs = u64::try_from(t.as_millis() / 1000).unwrap_or(0).min(LAST);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// `Set-Cookie` for `action`; `signed` is the request's own cookie value when it can be
/// sent back as it came (its id, signed with the current secret, canonically spelled).
fn set_cookie_header(
    shared: &Shared,
    action: &CookieAction,
    secure: bool,
    signed: Option<&(SessionId, String)>,
) -> Option<HeaderValue> {
    let c = &shared.config;
    let mut expires_at = None;
    let mut builder = match action {
        CookieAction::None => return None,
        CookieAction::Set { id, expires } => {
            let value = match signed {
                Some((same, value)) if same == id => value.clone(),
                _ => shared.keys.sign_cookie_value(id),
            };
            expires_at = *expires;
            cookie::Cookie::build((c.name.clone(), value))
        }
        CookieAction::Clear => cookie::Cookie::build((c.name.clone(), ""))
            .max_age(cookie::time::Duration::ZERO)
            .expires(cookie::time::OffsetDateTime::UNIX_EPOCH),
    };
    builder = builder
        .path(c.path.clone())
        .http_only(c.http_only)
        .secure(secure)
        .same_site(match c.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        });
    if c.partitioned {
        builder = builder.partitioned(true);
    }
    if let Some(d) = &c.domain {
        builder = builder.domain(d.clone());
    }
    let mut header = builder.build().to_string();
    // `Expires` is the last attribute the cookie crate writes: appended here, the header
    // is byte for byte what it would have written.
    if let Some(t) = expires_at {
        header.push_str("; Expires=");
        header.push_str(&http_date(t));
    }
    HeaderValue::from_str(&header).ok()
}

/// The answer when the session could not be read or written: the status, `no-store`, for a
/// `503` (store timeout, conflicts exhausted) a `Retry-After` of one second, and a
/// [`SessionFailure`](crate::SessionFailure) extension for an application's own error page.
fn failure_response<B: Default>(failure: crate::SessionFailure) -> Response<B> {
    failure_response_with(failure, B::default())
}

/// [`failure_response`] with a body (a layer whose body type can carry the message).
pub(crate) fn failure_response_with<B>(failure: crate::SessionFailure, body: B) -> Response<B> {
    let status = failure.status;
    let mut failed = Response::new(body);
    *failed.status_mut() = status;
    failed.extensions_mut().insert(failure);
    let headers = failed.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == http::StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    failed
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        let transport = &shared.config.transport;
        // A request that carries the header token is answered in the header; any other one
        // with the cookie (when the cookie is on).
        let header_token = transport.read(req.headers(), &shared.keys);
        let via_header = header_token.is_some() || !transport.uses_cookie();
        // The cookie's value, when a Set-Cookie for the same id may send it back unsigned
        // again (signed with the current secret, spelled canonically).
        let mut reusable = None;
        let verified = match header_token {
            Some(token) => token,
            None if transport.uses_cookie() => {
                signed_cookie(req.headers(), &shared.config.name, &shared.keys).map(|(v, raw)| {
                    if !v.needs_resign() && is_canonical(raw) {
                        reusable = Some((v.id.clone(), raw.to_owned()));
                    }
                    v
                })
            }
            None => None,
        };
        let cookie = verified.map(|v| {
            let resign = v.needs_resign();
            (v.id, resign)
        });
        let secure = is_secure(&shared.config, &req);
        let (cookie_id, resign) = match cookie {
            Some((id, resign)) => (Some(id), resign),
            None => (None, false),
        };
        // One span per request around its store calls: the short hash of the id the cookie
        // named (never the id), so a request's store calls and errors can be followed.
        let span = tracing::debug_span!(
            "session",
            cookie = cookie_id
                .as_ref()
                .map(|id| id.short_hash().to_string())
                .as_deref()
                .unwrap_or("-")
        );
        let meta = crate::device::RequestMeta::capture(
            &req,
            shared.config.capture_user_agent,
            shared.config.capture_ip,
            shared.config.trust_proxy,
        );
        // A header token is sent back only when it changes (a new session, a rotated id, a
        // token signed with an older secret), as Spring Session's header resolver does.
        let sent = cookie_id.clone().filter(|_| !resign);
        let session = Session::new(shared.clone(), cookie_id, resign, meta, via_header);
        req.extensions_mut().insert(session.clone());
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut res = inner.call(req).await?;
            let finished = session.finish().await;
            // The handler swallowed a store failure and answered a success: fail closed
            // anyway (nothing of the request was written, and the client must not believe it
            // was, nor be served an empty session as if it were its own).
            let swallowed = session
                .failure()
                .filter(|_| res.status().is_success() || res.status().is_redirection());
            if let Some(failure) = swallowed {
                tracing::warn!(status = %failure.status, "a handler answered a success after a session store failure; answering with the failure");
                return Ok(failure_response(failure));
            }
            match finished {
                Ok(action) if via_header => {
                    if let Some(name) = shared.config.transport.response_header() {
                        let value = match &action {
                            CookieAction::None => None,
                            CookieAction::Set { id, .. } if sent.as_ref() == Some(id) => None,
                            CookieAction::Set { id, .. } => Some(token_value(&shared.keys, Some(id))),
                            CookieAction::Clear => Some(token_value(&shared.keys, None)),
                        };
                        if let Some(value) = value {
                            let headers = res.headers_mut();
                            headers.insert(name, value);
                            if !headers.contains_key(CACHE_CONTROL) {
                                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                            }
                        }
                    }
                    Ok(res)
                }
                Ok(action) => {
                    if let Some(value) =
                        set_cookie_header(&shared, &action, secure, reusable.as_ref())
                    {
                        let headers = res.headers_mut();
                        headers.append(SET_COOKIE, value);
                        if !headers.contains_key(CACHE_CONTROL) {
                            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        }
                    }
                    Ok(res)
                }
                Err(e) => {
                    tracing::error!(error = %e, "session could not be saved; answering with an error");
                    Ok(failure_response(crate::SessionFailure::for_error(&e)))
                }
            }
        }
        .instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_cookie_takes_first_valid_and_ignores_junk() {
        let keys = KeyRing::new(["k".repeat(32)]).unwrap();
        let id = SessionId::generate();
        let good = keys.sign_cookie_value(&id);
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=b; sid=s%3Abogus.sig; junk"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!("x=1;sid={good}")).unwrap(),
        );
        assert_eq!(
            session_id_from_headers(&h, "sid", &keys).map(|x| x.id),
            Some(id)
        );
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(b"sid=\xff\xfe").unwrap());
        assert!(session_id_from_headers(&h, "sid", &keys).is_none());
    }

    /// A value judged canonical is exactly what signing its id again gives (so sending it
    /// back unsigned again changes nothing on the wire); every other spelling that verifies
    /// is judged not canonical (and is signed afresh).
    #[test]
    fn a_canonical_value_is_what_signing_gives() {
        let keys = KeyRing::new(["k".repeat(32)]).unwrap();
        let mut other_spellings = 0;
        for _ in 0..2000 {
            let id = SessionId::generate();
            let signed = keys.sign_cookie_value(&id);
            assert!(is_canonical(&signed), "{signed}");
            let raw = keys.sign(&id); // `s:id.sig`, unescaped
            let variants = [
                raw.clone(),
                signed.replacen("s%3A", "s%3a", 1),
                signed.replace("%2B", "%2b").replace("%2F", "%2f"),
                // A letter of the signature escaped.
                match signed.rsplit_once('.') {
                    Some((head, sig)) => format!("{head}.{}", sig.replacen('A', "%41", 1)),
                    None => signed.clone(),
                },
            ];
            for v in variants.iter().filter(|v| **v != signed) {
                let verified = keys
                    .verify_cookie_value(v)
                    .expect("every spelling verifies");
                assert_eq!(verified.id, id);
                assert!(!is_canonical(v), "{v} is not how {id:?} is signed");
                other_spellings += 1;
            }
        }
        // Most ids give a signature with `+` or `/` in it, so every variant was tried.
        assert!(other_spellings > 6000, "{other_spellings}");
    }

    /// The `Expires` written with httpdate is what the cookie crate writes through `time`:
    /// seconds from 1970 to 9999, every weekday and month, sub-second parts dropped.
    #[test]
    fn expires_is_spelled_as_the_cookie_crate_spells_it() {
        let mut secs: i64 = 0;
        while secs < 253_402_300_799 {
            for extra_ms in [0, 1, 999] {
                let t = Timestamp::from_millis(secs * 1000 + extra_ms);
                let at = cookie::time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
                let theirs = cookie::Cookie::build(("sid", "v")).expires(at).build();
                assert_eq!(
                    format!("sid=v; Expires={}", http_date(t)),
                    theirs.to_string(),
                    "{secs}"
                );
            }
            secs += 86_400 * 17 + 3_723; // every weekday, every month, hours and minutes
        }
    }

    /// An expiry past what httpdate can write (it panics after 9999) or before 1970 is
    /// clamped, never a panic in the middleware.
    #[test]
    fn expires_out_of_range_is_clamped() {
        for ms in [253_402_300_800_000, i64::MAX] {
            assert_eq!(
                http_date(Timestamp::from_millis(ms)),
                "Fri, 31 Dec 9999 23:59:59 GMT"
            );
        }
        for ms in [-1, i64::MIN] {
            assert_eq!(
                http_date(Timestamp::from_millis(ms)),
                "Thu, 01 Jan 1970 00:00:00 GMT"
            );
        }
    }
}
