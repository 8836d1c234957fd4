//! The tutorials' `requireAuth` / `requireRole` as library guards: `Authenticated` (401),
//! `RequireRole` (401 / 403), and `Session::login_with` storing the roles with the login.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    Authenticated, KeyRing, RequireRole, Session, SessionError, SessionLayer, ROLES_KEY,
};
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "guards test secret, long enough: 0123456789ab";

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    let roles: Vec<&str> = if user == "ada" {
        vec!["admin", "staff"]
    } else {
        vec!["staff"]
    };
    session.login_with(user, [(ROLES_KEY, roles)]).await?;
    Ok("ok")
}

async fn me(user: Authenticated) -> Result<String, SessionError> {
    Ok(format!("{} {:?}", user.user_id, user.roles().await?))
}

fn app() -> Router {
    let layer = SessionLayer::builder(MemoryStore::new(), KeyRing::new([SECRET]).expect("secret"))
        .build()
        .expect("valid config");
    let admin = Router::new()
        .route("/admin", get(|| async { "the admin page" }))
        .route_layer(RequireRole::new("admin"));
    Router::new()
        .route("/login/{user}", post(login))
        .route("/me", get(me))
        .merge(admin)
        .layer(layer)
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let set = res
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), set)
}

#[tokio::test]
async fn authenticated_is_401_for_anonymous_and_the_user_otherwise() {
    let app = app();
    let (status, body, set) = send(&app, "GET", "/me", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, "log in first")
    );
    assert!(set.is_none(), "a rejected request creates no session");
    let c = send(&app, "POST", "/login/bob", None)
        .await
        .2
        .expect("cookie");
    let (status, body, _) = send(&app, "GET", "/me", Some(&c)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "bob [\"staff\"]",
        "the roles were stored with the login"
    );
}

#[tokio::test]
async fn require_role_is_401_403_or_the_route() {
    let app = app();
    assert_eq!(
        send(&app, "GET", "/admin", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let bob = send(&app, "POST", "/login/bob", None)
        .await
        .2
        .expect("cookie");
    let (status, body, _) = send(&app, "GET", "/admin", Some(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("admin"), "{body}");
    let ada = send(&app, "POST", "/login/ada", None)
        .await
        .2
        .expect("cookie");
    let (status, body, _) = send(&app, "GET", "/admin", Some(&ada)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "the admin page"));
}
