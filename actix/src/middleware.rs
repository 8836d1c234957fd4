//! [`SessionMiddleware`]: the engine around every request of an actix-web app.

use std::future::{ready, Ready};
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::HttpMessage;
use coatcheck::engine::{Ending, Engine, Incoming};
use coatcheck::{KeyRing, SessionConfig, SessionLayerBuilder, SessionStore};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use crate::headers;

/// The builder of a [`SessionMiddleware`]: every option of coatcheck's
/// [`SessionLayerBuilder`], with the same meaning (cookie, timeouts, touch, remember-me,
/// limits, credential check, transport, events, metrics, express-compatible mode).
pub type SessionMiddlewareBuilder = SessionLayerBuilder<SessionMiddleware>;

/// The session middleware for actix-web: `App::wrap` it (it is cheap to clone, one per
/// worker). Handlers take the [`Session`](crate::Session) extractor.
///
/// ```
/// use std::time::Duration;
/// use coatcheck::memory::MemoryStore;
/// use coatcheck::{KeyRing, SameSite};
/// use coatcheck_actix::SessionMiddleware;
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let sessions = SessionMiddleware::builder(MemoryStore::new(), keys)
///     .name("sid")
///     .same_site(SameSite::Strict)
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .build()
///     .unwrap();
/// let app = actix_web::App::new().wrap(sessions);
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct SessionMiddleware {
    engine: Engine,
    /// The request headers the engine reads, named once.
    reads: std::sync::Arc<[http::HeaderName]>,
}

impl From<Engine> for SessionMiddleware {
    fn from(engine: Engine) -> Self {
        let reads = engine.request_headers().into();
        SessionMiddleware { engine, reads }
    }
}

impl SessionMiddleware {
    /// A builder over `store`, signing tokens with `keys`.
    pub fn builder(store: impl SessionStore, keys: KeyRing) -> SessionMiddlewareBuilder {
        SessionLayerBuilder::for_product(std::sync::Arc::new(store), keys)
    }

    /// Like [`SessionMiddleware::builder`] for a store already behind an `Arc`.
    pub fn builder_shared(
        store: std::sync::Arc<dyn SessionStore>,
        keys: KeyRing,
    ) -> SessionMiddlewareBuilder {
        SessionLayerBuilder::for_product(store, keys)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        self.engine.config()
    }

    /// The engine under the middleware.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service: Rc::new(service),
            middleware: self.clone(),
        }))
    }
}

/// The service [`SessionMiddleware`] wraps around yours.
#[derive(Debug)]
pub struct SessionService<S> {
    service: Rc<S>,
    middleware: SessionMiddleware,
}

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let read = headers::copy(req.headers(), &self.middleware.reads);
        let incoming = Incoming::new(&read)
            .https(req.app_config().secure())
            .peer(req.peer_addr().map(|a| a.ip()));
        let (session, pending) = self.middleware.engine.begin(incoming);
        req.extensions_mut().insert(session);
        let span = pending.span();
        let service = self.service.clone();
        Box::pin(
            async move {
                let mut res = match service.call(req).await {
                    Ok(res) => res,
                    Err(e) => {
                        // An error no handler turned into a response: the request still
                        // ends (what it wrote is settled), the error goes on as it came.
                        let status = headers::status_1x(e.as_response_error().status_code());
                        let _ = pending.end(status).await;
                        return Err(e);
                    }
                };
                match pending.end(headers::status_1x(res.status())).await {
                    Ending::Respond {
                        headers: add,
                        no_store,
                    } => {
                        headers::apply(res.headers_mut(), add, no_store);
                        Ok(res.map_into_left_body())
                    }
                    Ending::Fail(failure) => {
                        let (req, _) = res.into_parts();
                        let failed = headers::failure_response(failure);
                        Ok(ServiceResponse::new(req, failed).map_into_right_body())
                    }
                    _ => Ok(res.map_into_left_body()),
                }
            }
            .instrument(span),
        )
    }
}
