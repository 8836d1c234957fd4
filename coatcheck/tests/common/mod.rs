//! What several HTTP tests share: a browser's cookie jar driving a router in-process.

use axum::body::Body;
use axum::Router;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A browser: its cookie, and the last `Set-Cookie` it got.
#[derive(Default, Clone)]
pub struct Jar {
    pub cookie: Option<String>,
    pub last_set: Option<String>,
    /// The `SessionFailure` the last response carried (an application's error page reads
    /// it).
    pub failure: Option<coatcheck::SessionFailure>,
}

impl Jar {
    /// `POST uri` with the jar's cookie; keeps what the response sets (an emptied cookie
    /// empties the jar).
    pub async fn send(&mut self, app: &Router, uri: &str) -> (StatusCode, String) {
        self.call(
            app,
            Request::builder().method("POST").uri(uri),
            Body::empty(),
        )
        .await
    }

    /// `GET uri` with the jar's cookie.
    #[allow(dead_code)]
    pub async fn get(&mut self, app: &Router, uri: &str) -> (StatusCode, String) {
        self.call(
            app,
            Request::builder().method("GET").uri(uri),
            Body::empty(),
        )
        .await
    }

    /// Any request, with the jar's cookie added; keeps what the response sets.
    pub async fn call(
        &mut self,
        app: &Router,
        mut req: http::request::Builder,
        body: Body,
    ) -> (StatusCode, String) {
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        let res = app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        self.failure = res.extensions().get::<coatcheck::SessionFailure>().cloned();
        self.last_set = res
            .headers()
            .get(SET_COOKIE)
            .map(|c| c.to_str().expect("ascii").to_owned());
        if let Some(c) = &self.last_set {
            let pair = c.split(';').next().unwrap_or("");
            self.cookie = (!pair.ends_with('=')).then(|| pair.to_owned());
        }
        let status = res.status();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
