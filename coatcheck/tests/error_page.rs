//! An application renders its own page for session failures: every response coatcheck makes
//! for one (a `SessionError` a handler returned, or the layer's own answer when a handler
//! swallowed the error) carries a `SessionFailure` extension an outer middleware can use.

use async_trait::async_trait;
use axum::body::Body;
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coatcheck::store::{
    Capabilities, Record, SessionId, SessionInfo, SessionStore, StoreError, Timestamp,
};
use coatcheck::{CsrfLayer, KeyRing, Session, SessionError, SessionFailure, SessionLayer};
use coatcheck_conformance::kit::TestClient;
use http::header::COOKIE;
use http::{Request, StatusCode};

const SECRET: &str = "error page test secret, long enough: 012345";

/// A backend that is down.
#[derive(Debug)]
struct Down;

fn down<T>() -> Result<T, StoreError> {
    Err(StoreError::backend(std::io::Error::other(
        "connection refused",
    )))
}

#[async_trait]
impl SessionStore for Down {
    async fn create(&self, _: &Record) -> Result<(), StoreError> {
        down()
    }
    async fn load(&self, _: &SessionId) -> Result<Option<Record>, StoreError> {
        down()
    }
    async fn save(&self, _: &Record) -> Result<u64, StoreError> {
        down()
    }
    async fn touch(&self, _: &SessionId, _: Timestamp) -> Result<bool, StoreError> {
        down()
    }
    async fn delete(&self, _: &SessionId) -> Result<bool, StoreError> {
        down()
    }
    async fn list_for_user(&self, _: &str) -> Result<Vec<SessionInfo>, StoreError> {
        down()
    }
    async fn delete_for_user(&self, _: &str, _: Option<&SessionId>) -> Result<u64, StoreError> {
        down()
    }
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        down()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
}

async fn propagates(session: Session) -> Result<String, SessionError> {
    Ok(format!("{:?}", session.get_value("a").await?))
}

async fn swallows(session: Session) -> &'static str {
    let _ = session.get_value("a").await;
    "fine, apparently"
}

async fn my_error_page(res: Response) -> Response {
    match res.extensions().get::<SessionFailure>() {
        Some(f) => (f.status, format!("<h1>Sorry</h1><p>{}</p>", f.message)).into_response(),
        None => res,
    }
}

#[tokio::test]
async fn the_application_renders_session_failures_its_own_way() {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let cookie = format!("sid={}", keys.sign_cookie_value(&SessionId::generate()));
    let app = Router::new()
        .route("/propagates", get(propagates))
        .route("/swallows", get(swallows))
        // The CSRF check reads the session before any handler: its failure is the same page
        // (it was a bare status the page could not recognise).
        .merge(
            Router::new()
                .route("/checked", post(propagates))
                .route_layer(CsrfLayer::new()),
        )
        .layer(
            SessionLayer::builder(Down, keys)
                .build()
                .expect("valid config"),
        )
        .layer(map_response(my_error_page));
    // Every request presents the cookie of a session in the store that is down.
    let mut browser = TestClient::new(app);
    for uri in ["/propagates", "/swallows", "/checked"] {
        let method = if uri == "/checked" { "POST" } else { "GET" };
        let res = browser
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(COOKIE, &cookie)
                    .header("x-csrf-token", "a token"),
                Body::empty(),
            )
            .await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert_eq!(
            &res.body[..],
            b"<h1>Sorry</h1><p>session store unavailable</p>",
            "{uri}"
        );
    }
    let res = browser.other().get("/nowhere").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "other answers untouched");
}
