//! The session token in a header (API and mobile clients) and in both a header and the
//! cookie; `take`, `expires_at`, `created_at`.

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{KeyRing, Secure, Session, SessionError, SessionId, SessionLayer, Transport};
use coatcheck_conformance::kit::{Reply, TestClient};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, Request, StatusCode};

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

/// `method uri` with exactly `headers`, from a client with no cookie of its own (a cookie,
/// when there is one, is among `headers`).
async fn send(app: &Router, method: &str, uri: &str, headers: &[(HeaderName, String)]) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    TestClient::new(app.clone()).send(req, Body::empty()).await
}

fn h(token: &str) -> Vec<(HeaderName, String)> {
    vec![(HeaderName::from_static(TOKEN), token.to_owned())]
}

#[tokio::test]
async fn a_header_token_is_issued_rotated_used_and_cleared_without_any_cookie() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)));
    let r = send(&app, "POST", "/login", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie().is_none(), "header mode writes no cookie");
    let first = r.header(TOKEN).expect("the new session's token").to_owned();
    assert!(
        first.starts_with("s%3A"),
        "the signed value, never a raw id: {first}"
    );

    let r = send(&app, "GET", "/me", &h(&first)).await;
    assert_eq!(r.text(), "ada");
    assert!(
        r.header(TOKEN).is_none(),
        "an unchanged token is not sent again"
    );

    let r = send(&app, "POST", "/regenerate", &h(&first)).await;
    let second = r
        .header(TOKEN)
        .expect("a rotation answers the new token")
        .to_owned();
    assert_ne!(second, first);
    assert_eq!(
        send(&app, "GET", "/me", &h(&first)).await.text(),
        "",
        "the old token is dead"
    );
    assert_eq!(send(&app, "GET", "/me", &h(&second)).await.text(), "ada");

    let r = send(&app, "POST", "/logout", &h(&second)).await;
    assert_eq!(
        r.header(TOKEN),
        Some(""),
        "destroy answers an explicit empty token"
    );
    assert_eq!(send(&app, "GET", "/me", &h(&second)).await.text(), "");

    // A cookie is not a transport in header mode.
    let cookie = vec![(COOKIE, format!("sid={first}"))];
    assert_eq!(send(&app, "GET", "/me", &cookie).await.text(), "");
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
        let issued = r
            .header(TOKEN)
            .expect("a write creates a session")
            .to_owned();
        assert_ne!(issued, bad, "a fresh id, not the one offered");
    }
}

#[tokio::test]
async fn bearer_tokens_come_back_in_x_session_token() {
    let app = app(Transport::bearer());
    let r = send(&app, "POST", "/login", &[]).await;
    let token = r
        .header(coatcheck::BEARER_RESPONSE_HEADER)
        .expect("token")
        .to_owned();
    let auth = vec![(AUTHORIZATION, format!("Bearer {token}"))];
    assert_eq!(send(&app, "GET", "/me", &auth).await.text(), "ada");
    let basic = vec![(AUTHORIZATION, format!("Basic {token}"))];
    assert_eq!(
        send(&app, "GET", "/me", &basic).await.text(),
        "",
        "only the Bearer scheme"
    );
}

#[tokio::test]
async fn with_both_a_header_request_gets_a_header_and_a_browser_gets_the_cookie() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)).and_cookie());
    let browser = send(&app, "POST", "/login", &[]).await;
    let cookie = browser
        .set_cookie()
        .expect("a cookie for a request without the header");
    assert!(browser.header(TOKEN).is_none());
    let pair = cookie.split(';').next().expect("pair").to_owned();
    assert_eq!(
        send(&app, "GET", "/me", &[(COOKIE, pair)]).await.text(),
        "ada"
    );

    // An app's request: it sends the header (empty on its first call) and gets the header.
    let app_call = send(&app, "POST", "/login", &h("")).await;
    assert!(app_call.set_cookie().is_none());
    let token = app_call.header(TOKEN).expect("a header token").to_owned();
    assert_eq!(send(&app, "GET", "/me", &h(&token)).await.text(), "ada");
}

#[tokio::test]
async fn take_removes_a_typed_value_and_the_times_are_readable() {
    let app = app(Transport::header(HeaderName::from_static(TOKEN)));
    let token = send(&app, "POST", "/put", &[])
        .await
        .header(TOKEN)
        .expect("token")
        .to_owned();
    assert_eq!(
        send(&app, "GET", "/flash", &h(&token)).await.text(),
        "saved"
    );
    assert_eq!(
        send(&app, "GET", "/flash", &h(&token)).await.text(),
        "",
        "taken once"
    );
    let times = send(&app, "GET", "/times", &h(&token)).await.text();
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
    assert_eq!(send(&app, "GET", "/times", &[]).await.text(), "None None");
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
        r.header(coatcheck::BEARER_RESPONSE_HEADER).is_none(),
        "a Basic request is a browser's: no header token"
    );
    let cookie = r.set_cookie().expect("the new session goes to the cookie");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let both = vec![basic, (COOKIE, pair)];
    assert_eq!(send(&app, "GET", "/me", &both).await.text(), "ada");
    // A bare scheme without a token is not a bearer token either.
    let bare = vec![(AUTHORIZATION, "Negotiate".to_owned()), both[1].clone()];
    assert_eq!(send(&app, "GET", "/me", &bare).await.text(), "ada");
}
