//! A JSON API for native apps and SPAs: server-side sessions without cookies. The session
//! token travels in `Authorization: Bearer …` and comes back in `x-session-token` whenever
//! it changes (login, rotation) — empty after logout.
//!
//! ```text
//! cargo run --example api_client
//! ```
//!
//! Routes: `POST /login` (JSON `{"username"}`; a demo, no password: check credentials as
//! the login example does) answers the token in `x-session-token`; `GET /me` (401 without a valid token); `POST /logout` (this token);
//! `POST /logout-everywhere` (every token of the user, browser sessions included).
use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::memory::MemoryStore;
use coatcheck::{
    Authenticated, KeyRing, Secure, Session, SessionError, SessionLayer, Transport,
    BEARER_RESPONSE_HEADER,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Login {
    username: String,
}

/// Logs in: a new session id (against fixation); the layer answers its token in
/// `x-session-token` once this handler has returned.
async fn login(session: Session, Json(login): Json<Login>) -> Result<Response, SessionError> {
    session.login(login.username).await?;
    Ok(Json(json!({ "ok": true, "token_header": BEARER_RESPONSE_HEADER })).into_response())
}

async fn me(user: Authenticated) -> Json<Value> {
    Json(json!({ "user": user.user_id }))
}

async fn logout(session: Session) -> Result<StatusCode, SessionError> {
    session.destroy().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout_everywhere(user: Authenticated) -> Result<Json<Value>, SessionError> {
    let n = user.session.logout_everywhere().await?;
    Ok(Json(json!({ "revoked": n })))
}

/// The API, for tests and for `main`.
fn app(keys: KeyRing) -> Result<Router, coatcheck::ConfigError> {
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never) // plain HTTP on localhost for the demo
        .transport(Transport::bearer())
        .build()?;
    Ok(Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(layer))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "api_client example only: set SESSION_SECRET (32+ bytes)".into());
    let app = app(KeyRing::new([secret])?)?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("api_client example on http://{addr}/");
    println!("  curl -si -H 'content-type: application/json' -d '{{\"username\":\"ada\"}}' http://{addr}/login   # token in x-session-token");
    println!("  curl -s -H \"authorization: Bearer $TOKEN\" http://{addr}/me");
    axum::serve(listener, app).await?;
    Ok(())
}
