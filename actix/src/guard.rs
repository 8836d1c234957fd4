//! [`RequireRole`]: `requireRole(role)` around a scope.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{HttpMessage, ResponseError};
use coatcheck::{AuthRejection, SessionError};
use futures_util::future::LocalBoxFuture;

use crate::AuthError;

/// `requireRole(role)` as a middleware for a scope or a resource: `401` when nobody is
/// logged in, `403` without the role (the list under [`coatcheck::ROLES_KEY`], written at
/// login with `login_with`), otherwise the route runs. Wrap it inside the
/// [`SessionMiddleware`](crate::SessionMiddleware).
///
/// ```
/// use actix_web::{web, App};
/// use coatcheck_actix::RequireRole;
///
/// let admin = web::scope("/admin")
///     .wrap(RequireRole::new("admin"))
///     .route("", web::get().to(|| async { "the admin page" }));
/// let app = App::new().service(admin);
/// # let _ = app;
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

impl<S, B> Transform<S, ServiceRequest> for RequireRole
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequireRoleService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireRoleService {
            service: Rc::new(service),
            role: self.role.clone(),
        }))
    }
}

/// The service of [`RequireRole`].
#[derive(Debug)]
pub struct RequireRoleService<S> {
    service: Rc<S>,
    role: Arc<str>,
}

impl<S, B> Service<ServiceRequest> for RequireRoleService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let session = req.extensions().get::<coatcheck::Session>().cloned();
        let (service, role) = (self.service.clone(), self.role.clone());
        Box::pin(async move {
            let allowed = match session {
                None => Err(AuthRejection::Session(SessionError::MissingLayer)),
                Some(session) => match coatcheck::Authenticated::from_session(session).await {
                    Ok(user) => user.require_role(&role).await,
                    Err(e) => Err(e),
                },
            };
            match allowed {
                Ok(()) => Ok(service.call(req).await?.map_into_left_body()),
                Err(rejection) => {
                    let res = AuthError(rejection).error_response();
                    Ok(req.into_response(res).map_into_right_body())
                }
            }
        })
    }
}
