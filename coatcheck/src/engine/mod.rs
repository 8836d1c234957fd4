//! The engine: the whole session lifecycle of a request, framework-free. A framework
//! adapter (the tower layer in this crate, `coatcheck-actix`) does three things around it:
//! it hands [`Engine::begin`] what it read from the request ([`Incoming`]), puts the
//! [`Session`] it gets into the request for the handler, and after the handler hands
//! [`Pending::end`] the response's status and applies the [`Ending`] it answers (headers
//! to add, or a failure to answer instead). Everything else — loading, compare-and-set
//! saves, rotation, revocation, devices, remember-me, CSRF secrets, flash, events,
//! metrics, the cookie and the header token — happens here, once for every framework.
//!
//! The request and response types are the `http` crate's (1.x); an adapter over another
//! version copies the few headers the engine reads ([`Engine::request_headers`]).
//!
//! ```
//! use coatcheck::engine::{Engine, Ending, Incoming};
//! use coatcheck::KeyRing;
//! use coatcheck::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
//! let engine = Engine::builder(MemoryStore::new(), keys).build().unwrap();
//! // A request without a cookie: the handler writes, the engine creates the session.
//! let headers = http::HeaderMap::new();
//! let (session, pending) = engine.begin(Incoming::new(&headers));
//! session.insert("theme", "dark").await.unwrap();
//! match pending.end(http::StatusCode::OK).await {
//!     Ending::Respond { headers, .. } => assert_eq!(headers[0].0, http::header::SET_COOKIE),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```

mod cookie;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use coatcheck_core::{Clock, KeyRing, SessionId, SessionStore, StoreError};
use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tracing::Instrument;

pub use cookie::session_id_from_headers;

use crate::config::{IdGenerator, SessionConfig, SessionLayerBuilder};
use crate::credentials::CredentialCheck;
use crate::events::Events;
use crate::session::{CookieAction, Session};
use crate::transport::token_value;
use crate::SessionFailure;

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

/// The session machinery of one configuration, shared by every request (cheap to clone).
/// Built like the tower layer ([`Engine::builder`]); a framework adapter wraps it (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn from_builder<T>(b: SessionLayerBuilder<T>) -> Self {
        let db_system = b.store.capabilities().system();
        Engine {
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
}

/// What an adapter reads from a request for [`Engine::begin`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Incoming<'a> {
    /// The request's headers (at least those [`Engine::request_headers`] names).
    pub headers: &'a HeaderMap,
    /// The request came over HTTPS (the connection's own scheme; a trusted proxy's
    /// `X-Forwarded-Proto` is read from the headers).
    pub https: bool,
    /// The client's address as the connection sees it (a trusted proxy's
    /// `X-Forwarded-For` is read from the headers).
    pub peer: Option<IpAddr>,
}

impl<'a> Incoming<'a> {
    /// A request with these headers, over plain HTTP, from no known address.
    pub fn new(headers: &'a HeaderMap) -> Self {
        Incoming {
            headers,
            https: false,
            peer: None,
        }
    }

    /// Whether the request came over HTTPS.
    pub fn https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// The client's address.
    pub fn peer(mut self, peer: Option<IpAddr>) -> Self {
        self.peer = peer;
        self
    }
}

/// The end of a request, waiting for its handler: [`Pending::end`].
#[must_use = "a request's session is written by `Pending::end`"]
pub struct Pending {
    shared: Arc<Shared>,
    session: Session,
    via_header: bool,
    /// The header token the request carried, when it needs no re-signing.
    sent: Option<SessionId>,
    secure: bool,
    /// The request's cookie value, when a `Set-Cookie` for the same id may send it back.
    reusable: Option<(SessionId, String)>,
    span: tracing::Span,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("via_header", &self.via_header)
            .finish_non_exhaustive()
    }
}

/// What an adapter does with the handler's response.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ending {
    /// Keep the response and add these headers (`Set-Cookie`, or the header token); when
    /// `no_store` and the response has no `Cache-Control`, add `Cache-Control: no-store`.
    Respond {
        /// Headers to add: `Set-Cookie` appended (the application may set cookies of its
        /// own), any other (the header token) set.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Whether the response must not be cached (it carries a session token).
        no_store: bool,
    },
    /// Answer this failure instead of the handler's response: its status, its message as
    /// plain text, `Cache-Control: no-store`, and for a `503` a `Retry-After: 1`.
    Fail(SessionFailure),
}

impl Engine {
    /// A builder over `store`, signing tokens with `keys`: the same options as the tower
    /// layer's ([`SessionLayer::builder`](crate::SessionLayer::builder)).
    pub fn builder(store: impl SessionStore, keys: KeyRing) -> SessionLayerBuilder<Engine> {
        SessionLayerBuilder::for_product(Arc::new(store), keys)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// How many lifecycle events were dropped because the subscriber's queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events.dropped()
    }

    /// The request headers the engine reads (an adapter over another `http` version copies
    /// these, and only these, into the [`HeaderMap`] of [`Incoming`]).
    pub fn request_headers(&self) -> Vec<HeaderName> {
        let mut names = vec![
            COOKIE,
            USER_AGENT,
            HeaderName::from_static("x-forwarded-for"),
            HeaderName::from_static("x-forwarded-proto"),
        ];
        names.extend(self.shared.config.transport.request_header());
        names
    }

    /// Starts a request: the lazy [`Session`] its handler uses (nothing is read from the
    /// store until the handler asks), and the [`Pending`] end to call after the handler.
    pub fn begin(&self, req: Incoming<'_>) -> (Session, Pending) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let transport = &config.transport;
        // A request that carries the header token is answered in the header; any other one
        // with the cookie (when the cookie is on).
        let header_token = transport.read(req.headers, &shared.keys);
        let via_header = header_token.is_some() || !transport.uses_cookie();
        let mut reusable = None;
        let verified = match header_token {
            Some(token) => token,
            None if transport.uses_cookie() => {
                cookie::signed_cookie(req.headers, &config.name, &shared.keys).map(|(v, raw)| {
                    if !v.needs_resign() && cookie::is_canonical(raw) {
                        reusable = Some((v.id.clone(), raw.to_owned()));
                    }
                    v
                })
            }
            None => None,
        };
        let (cookie_id, resign) = match verified {
            Some(v) => {
                let resign = v.needs_resign();
                (Some(v.id), resign)
            }
            None => (None, false),
        };
        let span = tracing::debug_span!(
            "session",
            cookie = cookie_id
                .as_ref()
                .map(|id| id.short_hash().to_string())
                .as_deref()
                .unwrap_or("-")
        );
        let secure = cookie::is_secure(config, req.https, req.headers);
        let meta = crate::device::RequestMeta::capture(
            req.headers,
            req.peer,
            config.capture_user_agent,
            config.capture_ip,
            config.trust_proxy,
        );
        // A header token is sent back only when it changes (a new session, a rotated id, a
        // token signed with an older secret), as Spring Session's header resolver does.
        let sent = cookie_id.clone().filter(|_| !resign);
        let session = Session::new(shared.clone(), cookie_id, resign, meta, via_header);
        let pending = Pending {
            shared,
            session: session.clone(),
            via_header,
            sent,
            secure,
            reusable,
            span,
        };
        (session, pending)
    }
}

impl Pending {
    /// One span per request around its store calls: the short hash of the id the cookie
    /// named (never the id), so a request's store calls and errors can be followed. An
    /// adapter instruments the handler and [`end`](Self::end) with it.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Ends the request after its handler answered `status`: writes what the handler
    /// changed and says what to add to the response, or what to answer instead.
    pub async fn end(self, status: StatusCode) -> Ending {
        let Pending {
            shared,
            session,
            via_header,
            sent,
            secure,
            reusable,
            span: _,
        } = self;
        let finished = session.finish().await;
        // The handler swallowed a store failure and answered a success: fail closed anyway
        // (nothing of the request was written, and the client must not believe it was, nor
        // be served an empty session as if it were its own).
        let swallowed = session
            .failure()
            .filter(|_| status.is_success() || status.is_redirection());
        if let Some(failure) = swallowed {
            tracing::warn!(status = %failure.status, "a handler answered a success after a session store failure; answering with the failure");
            return Ending::Fail(failure);
        }
        let action = match finished {
            Ok(action) => action,
            Err(e) => {
                tracing::error!(error = %e, "session could not be saved; answering with an error");
                return Ending::Fail(SessionFailure::for_error(&e));
            }
        };
        let header = if via_header {
            shared.config.transport.response_header().and_then(|name| {
                let value = match &action {
                    CookieAction::None => None,
                    CookieAction::Set { id, .. } if sent.as_ref() == Some(id) => None,
                    CookieAction::Set { id, .. } => Some(token_value(&shared.keys, Some(id))),
                    CookieAction::Clear => Some(token_value(&shared.keys, None)),
                };
                value.map(|v| (name, v))
            })
        } else {
            cookie::set_cookie_header(&shared, &action, secure, reusable.as_ref())
                .map(|v| (SET_COOKIE, v))
        };
        match header {
            Some(h) => Ending::Respond {
                headers: vec![h],
                no_store: true,
            },
            None => Ending::Respond {
                headers: Vec::new(),
                no_store: false,
            },
        }
    }
}

/// Applies an [`Ending::Respond`]'s headers to `headers` (the `http` 1.x adapters' way):
/// `Set-Cookie` appended (the application may set cookies of its own), the header token
/// set.
pub(crate) fn apply(headers: &mut HeaderMap, add: Vec<(HeaderName, HeaderValue)>, no_store: bool) {
    for (name, value) in add {
        if name == SET_COOKIE {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
    if no_store && !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
