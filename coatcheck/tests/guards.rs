//! The tutorials' `requireAuth` / `requireRole` as library guards: `Authenticated` (401),
//! `RequireRole` (401 / 403), and `Session::login_with` storing the roles with the login.

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    Authenticated, KeyRing, RequireRole, Session, SessionError, SessionLayer, ROLES_KEY,
};
use coatcheck_conformance::kit::TestClient;
use http::StatusCode;

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

#[tokio::test]
async fn authenticated_is_401_for_anonymous_and_the_user_otherwise() {
    let mut browser = TestClient::new(app());
    let r = browser.get("/me").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::UNAUTHORIZED, "log in first")
    );
    assert!(
        r.set_cookie().is_none(),
        "a rejected request creates no session"
    );
    browser
        .post("/login/bob")
        .await
        .set_cookie()
        .expect("cookie");
    let r = browser.get("/me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text(),
        "bob [\"staff\"]",
        "the roles were stored with the login"
    );
}

#[tokio::test]
async fn require_role_is_401_403_or_the_route() {
    let mut anonymous = TestClient::new(app());
    assert_eq!(
        anonymous.get("/admin").await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut bob = anonymous.other();
    bob.post("/login/bob").await.set_cookie().expect("cookie");
    let r = bob.get("/admin").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let body = r.text();
    assert!(body.contains("admin"), "{body}");
    let mut ada = anonymous.other();
    ada.post("/login/ada").await.set_cookie().expect("cookie");
    let r = ada.get("/admin").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "the admin page")
    );
}
