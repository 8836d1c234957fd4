//! The tutorials' `requireAuth` and `requireRole`, axum-native: the [`Authenticated`]
//! extractor (401 when nobody is logged in) and the [`RequireRole`] route layer (401, or
//! 403 without the role). Roles are a list of strings under the session key [`ROLES_KEY`],
//! written at login with [`Session::login_with`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Session, SessionError};

/// The session key holding the user's roles (a list of strings), as the Express tutorials
/// keep them in `req.session.roles`.
pub const ROLES_KEY: &str = "roles";

/// Why a guard turned a request away.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// Nobody is logged in: `401 Unauthorized`.
    #[error("log in first")]
    Unauthenticated,
    /// Logged in, without the role: `403 Forbidden`.
    #[error("forbidden: the {0:?} role is required")]
    Forbidden(String),
    /// The session could not be read (its own status: 5xx, or 409).
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl AuthRejection {
    /// The HTTP status it answers.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthRejection::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthRejection::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthRejection::Session(e) => e.status(),
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::Session(e) => e.into_response(),
            other => (other.status(), other.to_string()).into_response(),
        }
    }
}

/// The logged-in user: `requireAuth` as an extractor. A handler taking it only runs when
/// the session has a principal; otherwise the request gets `401`.
///
/// ```
/// use axum::{routing::get, Router};
/// use coatcheck::{Authenticated, KeyRing, SessionLayer};
/// use coatcheck::memory::MemoryStore;
///
/// async fn me(user: Authenticated) -> String {
///     format!("hello {}", user.user_id)
/// }
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let app: Router = Router::new()
///     .route("/me", get(me))
///     .layer(SessionLayer::builder(MemoryStore::new(), keys).build().unwrap());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Authenticated {
    /// The principal ([`Session::login`]).
    pub user_id: String,
    /// The session, for anything else.
    pub session: Session,
}

impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    /// The user's roles (the list under [`ROLES_KEY`]; empty when none were stored).
    pub async fn roles(&self) -> Result<Vec<String>, SessionError> {
        Ok(self.session.get(ROLES_KEY).await?.unwrap_or_default())
    }

    /// `Ok` when the user has `role`, else [`AuthRejection::Forbidden`] (`403`).
    pub async fn require_role(&self, role: &str) -> Result<(), AuthRejection> {
        if self.roles().await?.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(AuthRejection::Forbidden(role.to_owned()))
        }
    }

    async fn of(session: Session) -> Result<Self, AuthRejection> {
        match session.user_id().await? {
            Some(user_id) => Ok(Authenticated { user_id, session }),
            None => Err(AuthRejection::Unauthenticated),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthRejection> {
        let session = Session::from_request_parts(parts, state).await?;
        Authenticated::of(session).await
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
                Some(session) => match Authenticated::of(session).await {
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
