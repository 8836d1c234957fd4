//! The tower adapter of the CSRF check: [`CsrfLayer`] as a layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use super::{CsrfLayer, CsrfReason, Judgement, Screen};
use crate::Session;

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CsrfLayer`] wraps around yours.
#[derive(Debug, Clone)]
pub struct CsrfService<S> {
    inner: S,
    layer: CsrfLayer,
}

fn refusal<ResBody: From<String>>(reason: CsrfReason) -> Response<ResBody> {
    let mut res = Response::new(ResBody::from(reason.message().to_owned()));
    *res.status_mut() = reason.status();
    let headers = res.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.extensions_mut().insert(reason);
    res
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for CsrfService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let session = req.extensions().get::<Session>().cloned();
        let screen = layer.screen(
            req.method(),
            req.uri().path(),
            req.headers(),
            req.uri().authority().map(|a| a.as_str()),
            session.as_ref(),
        );
        let (header, form) = match screen {
            Screen::Pass => return Box::pin(inner.call(req)),
            Screen::Refuse(reason) => return Box::pin(async move { Ok(refusal(reason)) }),
            Screen::Token { header, form } => (header, form),
        };
        let Some(session) = session else {
            return Box::pin(async { Ok(refusal(CsrfReason::NoSession)) });
        };
        Box::pin(async move {
            let mut req = req;
            let mut token = header;
            if token.is_none() && form {
                let (parts, body) = req.into_parts();
                let bytes = match http_body_util::Limited::new(body, layer.form_limit())
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) => {
                        tracing::debug!(error = %e, "form body not read for the CSRF check");
                        let reason = layer.refuse(&session, CsrfReason::FormTooLarge);
                        return Ok(refusal(reason));
                    }
                };
                token = layer.form_token(&bytes);
                req = Request::from_parts(parts, B::from(bytes));
            }
            match layer.judge(&session, token).await {
                Judgement::Pass => inner.call(req).await,
                Judgement::Refuse(reason) => Ok(refusal(reason)),
                Judgement::Fail(failure) => {
                    let body = ResBody::from(failure.message.to_owned());
                    Ok(crate::layer::failure_response_with(failure, body))
                }
            }
        })
    }
}
