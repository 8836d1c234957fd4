//! The axum side of the guards: the extractor, the rejection as a response, and the
//! [`RequireRole`] route layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::{AuthRejection, Authenticated};
use crate::{Session, SessionError};

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::Session(e) => e.into_response(),
            other => (other.status(), other.to_string()).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthRejection> {
        let session = Session::from_request_parts(parts, state).await?;
        Authenticated::from_session(session).await
    }
}

/// `requireRole(role)` as a route layer: `401` when nobody is logged in, `403` without the
/// role, otherwise the route runs. Put it inside the [`SessionLayer`](crate::SessionLayer)
/// (`route_layer`, or `layer` before the session layer).
///
/// ```
/// use axum::{routing::get, Router};
/// use coatcheck::{KeyRing, RequireRole, SessionLayer};
/// use coatcheck::memory::MemoryStore;
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let app: Router = Router::new()
///     .route("/admin", get(|| async { "the admin page" }))
///     .route_layer(RequireRole::new("admin"))
///     .layer(SessionLayer::builder(MemoryStore::new(), keys).build().unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct RequireRole {
    role: Arc<str>,
}

impl RequireRole {
    /// A guard for `role`.
    pub fn new(role: impl Into<Arc<str>>) -> Self {
        RequireRole { role: role.into() }
    }
}

impl<S> Layer<S> for RequireRole {
    type Service = RequireRoleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireRoleService {
            inner,
            role: self.role.clone(),
        }
    }
}

/// The service of [`RequireRole`].
#[derive(Debug, Clone)]
pub struct RequireRoleService<S> {
    inner: S,
    role: Arc<str>,
}

impl<S, B> Service<Request<B>> for RequireRoleService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let session = req.extensions().get::<Session>().cloned();
        let role = self.role.clone();
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let allowed = match session {
                None => Err(AuthRejection::Session(SessionError::MissingLayer)),
                Some(session) => match Authenticated::from_session(session).await {
                    Ok(user) => user.require_role(&role).await,
                    Err(e) => Err(e),
                },
            };
            match allowed {
                Ok(()) => inner.call(req).await,
                Err(rejection) => Ok(rejection.into_response()),
            }
        })
    }
}
