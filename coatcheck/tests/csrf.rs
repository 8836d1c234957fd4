//! CSRF protection (issue 31): the synchroniser token, masked per response, checked on
//! unsafe methods from the header or the form, rotated at login, behind Fetch Metadata and
//! `Origin`; a refusal ends nothing and loses nothing.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Form, Router};
use coatcheck::memory::MemoryStore;
use coatcheck::{
    CsrfLayer, CsrfReason, KeyRing, Secure, Session, SessionError, SessionEvent, SessionLayer,
    SessionStore, Transport,
};
use coatcheck_conformance::kit::TestClient;
use common::Jar;
use http::{Request, StatusCode};
use serde::Deserialize;
use tokio::sync::Barrier;

const SECRET: &str = "csrf test secret, long enough: 0123456789abcdef";

#[derive(Clone)]
struct St {
    barrier: Arc<Barrier>,
}

async fn token(session: Session) -> Result<String, SessionError> {
    session.csrf_token().await
}

/// Loads the session, waits for the other tab, then asks for the first token: both
/// requests saw no secret.
async fn racing_token(State(st): State<St>, session: Session) -> Result<String, SessionError> {
    session.get::<u64>("n").await?;
    st.barrier.wait().await;
    session.csrf_token().await
}

#[derive(Deserialize)]
struct Note {
    note: String,
}

async fn save(session: Session, Form(form): Form<Note>) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(format!("{} {n}", form.note))
}

async fn bump(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn count(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("n").await?.unwrap_or(0).to_string())
}

fn app(events: Arc<Mutex<Vec<SessionEvent>>>, csrf: CsrfLayer) -> Router {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never)
        .transport(Transport::bearer().and_cookie())
        .on_event(move |e| events.lock().expect("lock").push(e))
        .build()
        .expect("config");
    Router::new()
        .route("/token", get(token))
        .route("/racing_token", get(racing_token))
        .route("/count", get(count))
        .route("/save", post(save))
        .route("/bump", post(bump))
        .route("/hook/bump", post(bump))
        .route("/login/{user}", post(login))
        .with_state(St {
            barrier: Arc::new(Barrier::new(2)),
        })
        .layer(csrf)
        .layer(layer)
}

fn default_app() -> Router {
    app(Arc::default(), CsrfLayer::new().exempt("/hook/"))
}

fn post_req(uri: &str) -> http::request::Builder {
    Request::builder().method("POST").uri(uri)
}

/// `POST uri` with `token` in the header.
async fn post_token(
    jar: &mut Jar,
    app: &Router,
    uri: &str,
    token: impl AsRef<str>,
) -> (StatusCode, String) {
    jar.call(
        app,
        post_req(uri).header("x-csrf-token", token.as_ref()),
        Body::empty(),
    )
    .await
}

fn form(note: &str, token: &str) -> Body {
    Body::from(format!("note={note}&csrf_token={token}"))
}

async fn post_form(jar: &mut Jar, app: &Router, token: &str) -> (StatusCode, String) {
    jar.call(
        app,
        post_req("/save").header("content-type", "application/x-www-form-urlencoded"),
        form("hello+there", token),
    )
    .await
}

#[tokio::test]
async fn a_form_with_the_token_is_served_and_its_body_reaches_the_handler() {
    let app = default_app();
    let mut jar = Jar::default();
    let (status, token) = jar.get(&app, "/token").await;
    assert_eq!(status, StatusCode::OK);
    assert!(jar.cookie.is_some(), "the first token creates the session");
    let (status, body) = post_form(&mut jar, &app, &token).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello there 1"));
    // The header works too, and every masked token of the session is valid.
    let (_, second) = jar.get(&app, "/token").await;
    assert_ne!(second, token, "masked afresh on every call");
    let (status, body) = post_token(&mut jar, &app, "/bump", &second).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
    let (status, _) = post_token(&mut jar, &app, "/bump", &token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_tokens_are_refused_and_change_nothing() {
    let events: Arc<Mutex<Vec<SessionEvent>>> = Arc::default();
    let app = app(events.clone(), CsrfLayer::new());
    let mut jar = Jar::default();
    let (_, token) = jar.get(&app, "/token").await;
    let (_, other_token) = Jar::default().get(&app, "/token").await;
    post_token(&mut jar, &app, "/bump", &token).await;
    let cookie = jar.cookie.clone();
    for (header, reason) in [
        (None, CsrfReason::Missing),
        (Some(other_token.as_str()), CsrfReason::Mismatch),
        (Some("not-a-token"), CsrfReason::Malformed),
        (Some(&token[..token.len() - 2]), CsrfReason::Malformed),
    ] {
        let mut req = post_req("/bump");
        if let Some(h) = header {
            req = req.header("x-csrf-token", h);
        }
        let (status, body) = jar.call(&app, req, Body::empty()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{reason:?}");
        assert!(body.contains("CSRF"), "a clear message: {body}");
        assert_eq!(jar.cookie, cookie, "a refusal ends nothing");
        assert!(jar.last_set.is_none(), "and sets no cookie");
    }
    // The raw secret is not a token: only masked tokens are.
    let (_, n) = jar.get(&app, "/count").await;
    assert_eq!(n, "1", "no refused request reached its handler");
    let refused: Vec<CsrfReason> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|e| match e {
            SessionEvent::CsrfRefused { reason } => Some(*reason),
            _ => None,
        })
        .collect();
    // Events are delivered on their own thread: wait for them.
    let mut refused = refused;
    for _ in 0..100 {
        if refused.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        refused = events
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| match e {
                SessionEvent::CsrfRefused { reason } => Some(*reason),
                _ => None,
            })
            .collect();
    }
    assert_eq!(
        refused,
        [
            CsrfReason::Missing,
            CsrfReason::Mismatch,
            CsrfReason::Malformed,
            CsrfReason::Malformed
        ]
    );
}

#[tokio::test]
async fn a_session_without_a_token_and_no_session_at_all_are_refused() {
    let app = default_app();
    let mut anonymous = Jar::default();
    let (status, body) = anonymous
        .call(
            &app,
            post_req("/bump").header("x-csrf-token", "x".repeat(86)),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("no session"), "{body}");
    // A session that was never handed a token (created by an exempt route).
    let mut jar = Jar::default();
    let (_, token) = Jar::default().get(&app, "/token").await;
    jar.send(&app, "/hook/bump").await;
    let (status, body) = post_token(&mut jar, &app, "/bump", &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("no CSRF token issued"), "{body}");
}

#[tokio::test]
async fn cross_site_requests_are_refused_before_the_token() {
    let app = app(
        Arc::default(),
        CsrfLayer::new().trusted_origin("https://app.example.com"),
    );
    let mut jar = Jar::default();
    let (_, token) = jar.get(&app, "/token").await;
    let with = |h: &[(&str, &str)]| {
        let mut req = post_req("/bump")
            .header("x-csrf-token", &token)
            .header("host", "shop.example.com");
        for (k, v) in h {
            req = req.header(*k, *v);
        }
        req
    };
    let cases: [(&[(&str, &str)], StatusCode); 10] = [
        (&[("sec-fetch-site", "cross-site")], StatusCode::FORBIDDEN),
        // A trusted origin as every current browser sends it (with Fetch Metadata): served.
        // Refused before (403 CrossSite: the trusted list came after Fetch Metadata).
        (
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://app.example.com"),
            ],
            StatusCode::OK,
        ),
        (
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (&[("sec-fetch-site", "same-origin")], StatusCode::OK),
        (&[("sec-fetch-site", "same-site")], StatusCode::OK),
        (&[("origin", "https://evil.example")], StatusCode::FORBIDDEN),
        (&[("origin", "null")], StatusCode::FORBIDDEN),
        (&[("origin", "https://shop.example.com")], StatusCode::OK),
        (&[("origin", "https://app.example.com")], StatusCode::OK),
        (&[], StatusCode::OK),
    ];
    for (headers, want) in cases {
        let (status, body) = jar.call(&app, with(headers), Body::empty()).await;
        assert_eq!(status, want, "{headers:?}: {body}");
    }
    // Fetch Metadata is a first line, not a replacement: same-origin without a token fails.
    let (status, _) = jar
        .call(
            &app,
            post_req("/bump").header("sec-fetch-site", "same-origin"),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn login_rotates_the_token() {
    let app = default_app();
    let mut jar = Jar::default();
    let (_, before) = jar.get(&app, "/token").await;
    let (status, _) = post_token(&mut jar, &app, "/login/ada", &before).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post_token(&mut jar, &app, "/bump", &before).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a token from before the login is dead"
    );
    assert!(body.contains("no CSRF token issued"), "{body}");
    let (_, after) = jar.get(&app, "/token").await;
    let (status, _) = post_token(&mut jar, &app, "/bump", &after).await;
    assert_eq!(status, StatusCode::OK);
}

/// Two tabs of a new session ask for their first token at the same moment: both tokens
/// work (a plain write of the fresh secret would let the second tab's replace the first's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_never_invalidate_each_others_token() {
    let app = default_app();
    let mut jar = Jar::default();
    // The session exists (no token yet), so both tabs load the same record.
    jar.send(&app, "/hook/bump").await;
    let (mut a, mut b) = (jar.clone(), jar.clone());
    let (app_a, app_b) = (app.clone(), app.clone());
    let (ta, tb) = tokio::join!(
        tokio::spawn(async move { a.get(&app_a, "/racing_token").await }),
        tokio::spawn(async move { b.get(&app_b, "/racing_token").await }),
    );
    let ((sa, ta), (sb, tb)) = (ta.expect("tab a"), tb.expect("tab b"));
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
    for token in [ta, tb] {
        let (status, body) = post_token(&mut jar, &app, "/bump", &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// An API client's first call: its session token, from the response header.
async fn api_token(app: &Router, uri: &str, method: &str) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer ");
    TestClient::new(app.clone())
        .send(req, Body::empty())
        .await
        .header(coatcheck::BEARER_RESPONSE_HEADER)
        .expect("a session token")
        .to_owned()
}

#[tokio::test]
async fn header_token_clients_and_exempt_paths_are_not_checked() {
    let app = default_app();
    // An API client: its session travels in the Authorization header, which no forged
    // cross-site request can carry.
    let token = api_token(&app, "/hook/bump", "POST").await;
    let bearer = format!("Bearer {token}");
    let (status, body) = Jar::default()
        .call(
            &app,
            post_req("/bump").header("authorization", &bearer),
            Body::empty(),
        )
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
    // Unless asked to.
    let strict = app_with_strict_headers();
    let token = api_token(&strict, "/token", "GET").await;
    let (status, _) = Jar::default()
        .call(
            &strict,
            post_req("/bump").header("authorization", format!("Bearer {token}")),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An exempt path with a cookie and no token.
    let mut jar = Jar::default();
    jar.get(&app, "/token").await;
    let (status, _) = jar.send(&app, "/hook/bump").await;
    assert_eq!(status, StatusCode::OK);
}

fn app_with_strict_headers() -> Router {
    app(Arc::default(), CsrfLayer::new().check_header_tokens(true))
}

#[tokio::test]
async fn a_form_over_the_limit_is_413_and_a_form_without_the_field_is_403() {
    let app = app(Arc::default(), CsrfLayer::new().max_form_bytes(64));
    let mut jar = Jar::default();
    let (_, token) = jar.get(&app, "/token").await;
    let (status, _) = jar
        .call(
            &app,
            post_req("/save").header("content-type", "application/x-www-form-urlencoded"),
            form(&"x".repeat(100), &token),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = jar
        .call(
            &app,
            post_req("/save").header("content-type", "application/x-www-form-urlencoded"),
            Body::from("note=hi"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, n) = jar.get(&app, "/count").await;
    assert_eq!(n, "0");
}

/// A refused request writes nothing at all: with `save_uninitialized` no session is created
/// for it (and no cookie set), and with remember-me a refused request does not touch the
/// session (a forged request must not keep a victim's session alive). Failed before: the
/// layer still created the session, and touched it, after the refusal.
#[tokio::test]
async fn a_refused_request_creates_and_touches_nothing() {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let store = Arc::new(MemoryStore::new());
    let layer = SessionLayer::builder_shared(store.clone(), keys)
        .secure(Secure::Never)
        .save_uninitialized(true)
        .idle_timeout(std::time::Duration::from_secs(600))
        .touch_after(std::time::Duration::ZERO)
        .build()
        .expect("config");
    let app = Router::new()
        .route("/token", get(token))
        .route("/bump", post(bump))
        .route("/count", get(count))
        .layer(CsrfLayer::new())
        .layer(layer);
    // A token is needed to get past the first checks to the session (a well-formed one of
    // no session: 64 bytes, base64url).
    let forged = "A".repeat(86);
    let mut fresh = Jar::default();
    let (status, _) = post_token(&mut fresh, &app, "/bump", &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(fresh.last_set.is_none(), "{:?}", fresh.last_set);
    assert!(fresh.cookie.is_none());
    // A session, then a refused request after a while: its expiry does not move.
    let mut jar = Jar::default();
    jar.get(&app, "/token").await;
    let id = jar
        .cookie
        .as_deref()
        .and_then(|c| c.split_once('='))
        .and_then(|(_, v)| KeyRing::new([SECRET]).ok()?.verify_cookie_value(v))
        .map(|v| v.id)
        .expect("a session");
    let before = store
        .load(&id)
        .await
        .expect("load")
        .expect("stored")
        .expires_at;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, _) = post_token(&mut jar, &app, "/bump", &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(jar.last_set.is_none(), "{:?}", jar.last_set);
    let after = store
        .load(&id)
        .await
        .expect("load")
        .expect("stored")
        .expires_at;
    assert_eq!(before, after, "a refused request touched the session");
}
