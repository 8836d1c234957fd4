//! [`CsrfMiddleware`]: coatcheck's CSRF check around an actix-web app or scope.

use std::future::{ready, Ready};
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::web::BytesMut;
use actix_web::{HttpMessage, HttpResponse};
use coatcheck::csrf::{Judgement, Screen};
use coatcheck::{CsrfLayer, CsrfReason};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt as _;

use crate::headers;

/// The CSRF check (see [`coatcheck::csrf`]): an unsafe request needs a token of its
/// session, from [`Session::csrf_token`](coatcheck::Session::csrf_token), in the
/// `x-csrf-token` header or the `csrf_token` form field, behind Fetch Metadata and `Origin`
/// checks. Its options are [`CsrfLayer`]'s (the same check for every framework). Wrap it
/// inside the [`SessionMiddleware`](crate::SessionMiddleware): in actix-web the
/// middleware registered last runs first, so `.wrap(CsrfMiddleware::default())` comes
/// before `.wrap(sessions)`.
///
/// ```
/// use coatcheck::CsrfLayer;
/// use coatcheck_actix::CsrfMiddleware;
///
/// let csrf = CsrfMiddleware::new(CsrfLayer::new().exempt("/webhooks/"));
/// # let _ = csrf;
/// ```
#[derive(Debug, Clone, Default)]
pub struct CsrfMiddleware {
    check: CsrfLayer,
}

impl CsrfMiddleware {
    /// The check with `options`.
    pub fn new(options: CsrfLayer) -> Self {
        CsrfMiddleware { check: options }
    }
}

impl<S, B> Transform<S, ServiceRequest> for CsrfMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = CsrfService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CsrfService {
            service: Rc::new(service),
            check: self.check.clone(),
        }))
    }
}

/// The service of [`CsrfMiddleware`].
#[derive(Debug)]
pub struct CsrfService<S> {
    service: Rc<S>,
    check: CsrfLayer,
}

fn refusal(reason: CsrfReason) -> HttpResponse {
    let mut res = HttpResponse::build(headers::status(reason.status()))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header((
            actix_web::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        ))
        .body(reason.message());
    res.extensions_mut().insert(reason);
    res
}

impl<S, B> Service<ServiceRequest> for CsrfService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let (service, check) = (self.service.clone(), self.check.clone());
        let session = req.extensions().get::<coatcheck::Session>().cloned();
        let method = http::Method::from_bytes(req.method().as_str().as_bytes())
            .unwrap_or(http::Method::POST);
        let headers = headers::copy_all(req.headers());
        let authority = req.uri().authority().map(|a| a.to_string());
        let screen = check.screen(
            &method,
            req.path(),
            &headers,
            authority.as_deref(),
            session.as_ref(),
        );
        Box::pin(async move {
            let refuse = |req: ServiceRequest, reason| {
                Ok(req.into_response(refusal(reason)).map_into_right_body())
            };
            let (mut token, form) = match screen {
                Screen::Pass => return Ok(service.call(req).await?.map_into_left_body()),
                Screen::Refuse(reason) => return refuse(req, reason),
                Screen::Token { header, form } => (header, form),
                _ => return refuse(req, CsrfReason::Missing),
            };
            let Some(session) = session else {
                return refuse(req, CsrfReason::NoSession);
            };
            if token.is_none() && form {
                // The form is read (at most the limit) and put back for the handler.
                let mut payload = req.take_payload();
                let mut body = BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let Ok(chunk) = chunk else {
                        return refuse(req, check.refuse(&session, CsrfReason::FormTooLarge));
                    };
                    if body.len() + chunk.len() > check.form_limit() {
                        return refuse(req, check.refuse(&session, CsrfReason::FormTooLarge));
                    }
                    body.extend_from_slice(&chunk);
                }
                let body = body.freeze();
                token = check.form_token(&body);
                let (_, mut replay) = actix_http::h1::Payload::create(true);
                replay.unread_data(body);
                req.set_payload(replay.into());
            }
            match check.judge(&session, token).await {
                Judgement::Pass => Ok(service.call(req).await?.map_into_left_body()),
                Judgement::Refuse(reason) => refuse(req, reason),
                Judgement::Fail(failure) => Ok(req
                    .into_response(headers::failure_response(failure))
                    .map_into_right_body()),
                _ => refuse(req, CsrfReason::Missing),
            }
        })
    }
}
