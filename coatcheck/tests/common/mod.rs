//! What several HTTP tests share: a browser driving a router in-process, on the published
//! test kit (`coatcheck_conformance::kit::TestClient`) with the router given per call, and
//! single requests that present exactly the cookie a test chose.

// Every test binary that declares `mod common` uses a part of it.
#![allow(dead_code)]

use axum::body::Body;
use axum::Router;
use coatcheck_conformance::kit::{Jar as Cookies, Reply, TestClient};
use http::header::COOKIE;
use http::{Request, StatusCode};

/// A browser: its cookie, and the last `Set-Cookie` it got.
#[derive(Default, Clone)]
pub struct Jar {
    /// `name=value` of the session cookie the browser holds.
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
        self.call(app, Request::post(uri), Body::empty()).await
    }

    /// `GET uri` with the jar's cookie.
    pub async fn get(&mut self, app: &Router, uri: &str) -> (StatusCode, String) {
        self.call(app, Request::get(uri), Body::empty()).await
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
        let mut client = TestClient::new(app.clone());
        let reply = client.send(req, body).await;
        self.failure = reply.extensions.get::<coatcheck::SessionFailure>().cloned();
        self.last_set = reply.set_cookie().map(str::to_owned);
        if let Some(c) = &self.last_set {
            // The kit's jar reads the Set-Cookie (an emptied or expired cookie removes).
            let mut cookies = Cookies::new();
            cookies.store(c);
            self.cookie = cookies.header();
        }
        (reply.status, reply.text())
    }
}

/// `method uri` presenting exactly `cookie` as its `Cookie` header (none when `None`), from
/// a browser with an empty jar: for tests that choose the cookie of every request (a
/// stale, forged or planted one, another device's, one shared by concurrent requests).
pub async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    TestClient::new(app.clone()).send(req, Body::empty()).await
}

/// The `name=value` of the reply's first `Set-Cookie` (what a browser sends back; `name=`
/// for a cleared cookie), `None` without one.
pub fn set_pair(reply: &Reply) -> Option<&str> {
    reply.set_cookie().and_then(|c| c.split(';').next())
}

/// The session id a `sid=value` cookie names, verified with `secret`.
pub fn id_of(cookie: &str, secret: &str) -> coatcheck::SessionId {
    let value = cookie.split_once('=').map_or("", |(_, v)| v);
    coatcheck::KeyRing::new([secret])
        .expect("long secret")
        .verify_cookie_value(value)
        .expect("a cookie signed with the secret")
        .id
}
