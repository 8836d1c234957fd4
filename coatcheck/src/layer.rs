//! The tower adapter: hands the engine what it needs from the request, puts the lazy
//! [`Session`] into the request's extensions, and applies the engine's ending to the
//! response. The lifecycle itself is the [`engine`](crate::engine)'s.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use coatcheck_core::{KeyRing, SessionStore};
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::config::{SessionConfig, SessionLayerBuilder};
use crate::engine::{Ending, Engine, Incoming};

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
    engine: Engine,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A builder over `store`, signing cookies with `keys`.
    pub fn builder(store: impl SessionStore, keys: KeyRing) -> SessionLayerBuilder {
        SessionLayerBuilder::for_product(Arc::new(store), keys)
    }

    /// Like [`SessionLayer::builder`] for a store already behind an `Arc`.
    pub fn builder_shared(store: Arc<dyn SessionStore>, keys: KeyRing) -> SessionLayerBuilder {
        SessionLayerBuilder::for_product(store, keys)
    }

    /// How many lifecycle events were dropped because the subscriber's queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.engine.events_dropped()
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        self.engine.config()
    }

    /// The engine under the layer.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl From<Engine> for SessionLayer {
    fn from(engine: Engine) -> Self {
        SessionLayer { engine }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around yours.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    engine: Engine,
}

impl<S> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
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
        let incoming = Incoming::new(req.headers())
            .https(req.uri().scheme_str() == Some("https"))
            .peer(peer(&req));
        let (session, pending) = self.engine.begin(incoming);
        req.extensions_mut().insert(session);
        let span = pending.span();
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut res = inner.call(req).await?;
                match pending.end(res.status()).await {
                    Ending::Respond { headers, no_store } => {
                        crate::engine::apply(res.headers_mut(), headers, no_store);
                        Ok(res)
                    }
                    Ending::Fail(failure) => Ok(failure_response(failure)),
                }
            }
            .instrument(span),
        )
    }
}

/// The client's address as the connection sees it: axum's `ConnectInfo<SocketAddr>`.
fn peer<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    let _ = req;
    None
}
