//! The session token in a header (API and mobile clients) and in both a header and the
//! cookie; `take`, `expires_at`, `created_at`.

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{KeyRing, Secure, Session, SessionError, SessionId, SessionLayer, Transport};
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderName, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "transport test secret, long enough: 0123456789";
const TOKEN: &str = "x-auth-token";

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login("ada").await?;
    Ok("ok")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session.user_id().await?.unwrap_or_default())
}

async fn regenerate(session: Session) -> Result<&'static str, SessionError> {
    session.regenerate().await?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("ok")
}

async fn put(session: Session) -> Result<&'static str, SessionError> {
    session.insert("flash", "saved").await?;
    Ok("ok")
}

async fn flash(session: Session) -> Result<String, SessionError> {
    Ok(session.take::<String>("flash").await?.unwrap_or_default())
}

async fn times(session: Session) -> Result<String, SessionError> {
    let c = session.created_at().await?.map(|t| t.as_millis());
    let e = session.expires_at().await?.map(|t| t.as_millis());
    Ok(format!("{c:?} {e:?}"))
}

fn app(transport: Transport) -> Router {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never)
        .transport(transport)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .expect("valid config");
    Router::new()
        .route("/login", post(login))
        .route("/me", get(whoami))
        .route("/regenerate", post(regenerate))
        .route("/logout", post(logout))
        .route("/put", post(put))
        .route("/flash", get(flash))
        .route("/times", get(times))
        .layer(layer)
}

struct Reply {
    status: StatusCode,
    token: Option<String>,
    bearer_back: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

async fn send(app: &Router, method: &str, uri: &str, headers: &[(HeaderName, String)]) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let get = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    let (token, bearer_back, set_cookie) = (
        get(TOKEN),
        get(coatcheck::BEARER_RESPONSE_HEADER),
        get(SET_COOKIE.as_str()),
    );
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        token,
        bearer_back,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn h(token: &str) -> Vec<(HeaderName, String)> {
    vec![(HeaderName::from_static(TOKEN), token.to_owned())]
}

#[tokio::test]
async fn a_header_token_is_issued_rotated_used_and_cleared_without_any_cookie() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)));
    let r = send(&app, "POST", "/login", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie.is_none(), "header mode writes no cookie");
    let first = r.token.expect("the new session's token");
    assert!(
        first.starts_with("s%3A"),
        "the signed value, never a raw id: {first}"
    );

    let r = send(&app, "GET", "/me", &h(&first)).await;
    assert_eq!(r.body, "ada");
    assert!(r.token.is_none(), "an unchanged token is not sent again");

    let r = send(&app, "POST", "/regenerate", &h(&first)).await;
    let second = r.token.expect("a rotation answers the new token");
    assert_ne!(second, first);
    assert_eq!(
        send(&app, "GET", "/me", &h(&first)).await.body,
        "",
        "the old token is dead"
    );
    assert_eq!(send(&app, "GET", "/me", &h(&second)).await.body, "ada");

    let r = send(&app, "POST", "/logout", &h(&second)).await;
    assert_eq!(
        r.token.as_deref(),
        Some(""),
        "destroy answers an explicit empty token"
    );
    assert_eq!(send(&app, "GET", "/me", &h(&second)).await.body, "");

    // A cookie is not a transport in header mode.
    let cookie = vec![(COOKIE, format!("sid={first}"))];
    assert_eq!(send(&app, "GET", "/me", &cookie).await.body, "");
}

#[tokio::test]
async fn forged_unknown_and_raw_tokens_are_never_adopted() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)));
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let unknown = keys.sign_cookie_value(&SessionId::generate());
    let raw = SessionId::generate().as_str().to_owned();
    for bad in [
        unknown.clone(),
        raw,
        "s%3Aforged.sig".to_owned(),
        "".to_owned(),
    ] {
        let r = send(&app, "POST", "/put", &h(&bad)).await;
        assert_eq!(r.status, StatusCode::OK);
        let issued = r.token.expect("a write creates a session");
        assert_ne!(issued, bad, "a fresh id, not the one offered");
    }
}

#[tokio::test]
async fn bearer_tokens_come_back_in_x_session_token() {
    let app = app(Transport::bearer());
    let r = send(&app, "POST", "/login", &[]).await;
    let token = r.bearer_back.expect("token");
    let auth = vec![(AUTHORIZATION, format!("Bearer {token}"))];
    assert_eq!(send(&app, "GET", "/me", &auth).await.body, "ada");
    let basic = vec![(AUTHORIZATION, format!("Basic {token}"))];
    assert_eq!(
        send(&app, "GET", "/me", &basic).await.body,
        "",
        "only the Bearer scheme"
    );
}

#[tokio::test]
async fn with_both_a_header_request_gets_a_header_and_a_browser_gets_the_cookie() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)).and_cookie());
    let browser = send(&app, "POST", "/login", &[]).await;
    let cookie = browser
        .set_cookie
        .expect("a cookie for a request without the header");
    assert!(browser.token.is_none());
    let pair = cookie.split(';').next().expect("pair").to_owned();
    assert_eq!(
        send(&app, "GET", "/me", &[(COOKIE, pair)]).await.body,
        "ada"
    );

    // An app's request: it sends the header (empty on its first call) and gets the header.
    let app_call = send(&app, "POST", "/login", &h("")).await;
    assert!(app_call.set_cookie.is_none());
    let token = app_call.token.expect("a header token");
    assert_eq!(send(&app, "GET", "/me", &h(&token)).await.body, "ada");
}

#[tokio::test]
async fn take_removes_a_typed_value_and_the_times_are_readable() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)));
    let token = send(&app, "POST", "/put", &[]).await.token.expect("token");
    assert_eq!(send(&app, "GET", "/flash", &h(&token)).await.body, "saved");
    assert_eq!(
        send(&app, "GET", "/flash", &h(&token)).await.body,
        "",
        "taken once"
    );
    let times = send(&app, "GET", "/times", &h(&token)).await.body;
    let parts: Vec<i64> = times
        .split(' ')
        .map(|p| {
            p.trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .expect("ms")
        })
        .collect();
    assert_eq!(parts.len(), 2);
    assert!(parts[1] - parts[0] >= 599_000, "{times}");
    assert_eq!(send(&app, "GET", "/times", &[]).await.body, "None None");
}

/// `Transport::bearer().and_cookie()` behind an HTTP Basic proxy: the browser sends
/// `Authorization: Basic …` with every request. That header is not a session token: the
/// cookie session is used, and a new session's id goes to the cookie (a review found the
/// Basic header hiding the cookie, new sessions answered only in `x-session-token`).
#[tokio::test]
async fn another_authorization_scheme_does_not_hide_the_cookie() {
    let app = app(Transport::bearer().and_cookie());
    let basic = (AUTHORIZATION, "Basic dXNlcjpwYXNz".to_owned());
    let r = send(&app, "POST", "/login", std::slice::from_ref(&basic)).await;
    assert!(
        r.bearer_back.is_none(),
        "a Basic request is a browser's: no header token"
    );
    let cookie = r.set_cookie.expect("the new session goes to the cookie");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let both = vec![basic, (COOKIE, pair)];
    assert_eq!(send(&app, "GET", "/me", &both).await.body, "ada");
    // A bare scheme without a token is not a bearer token either.
    let bare = vec![(AUTHORIZATION, "Negotiate".to_owned()), both[1].clone()];
    assert_eq!(send(&app, "GET", "/me", &bare).await.body, "ada");
}
