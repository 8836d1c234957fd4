//! Ids hashed at rest through the middleware: the store never holds the cookie's id; the
//! devices page still marks this device; turning hashing on for a store with sessions keeps
//! them signed in with `raw_fallback(true)`, a login moves a session to its hashed key, and
//! without the fallback a session still under its raw id is gone.

mod common;

use std::sync::Arc;

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use coatcheck::core::hashed_key;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    session_id_from_headers, HashedIds, KeyRing, Secure, Session, SessionError, SessionId,
    SessionLayer, SessionStore,
};
use common::Jar;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, StatusCode};

const SECRET: &str = "hashed ids test secret, long enough: 0123456789";

async fn login(session: Session, Path(user): Path<String>) -> Result<String, SessionError> {
    session.login(user).await?;
    Ok("ok".into())
}
async fn put(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}
/// The user, and how many of their sessions are marked as this device.
async fn whoami(session: Session) -> Result<String, SessionError> {
    let user = session.user_id().await?.unwrap_or_default();
    let current = session
        .list_user_sessions()
        .await?
        .iter()
        .filter(|s| s.current)
        .count();
    Ok(format!("{user} {current}"))
}
async fn others(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_other_devices().await?.to_string())
}

fn app(store: Arc<dyn SessionStore>) -> Router {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder_shared(store, keys)
        .secure(Secure::Never)
        .build()
        .expect("valid config");
    Router::new()
        .route("/login/{user}", post(login))
        .route("/put", post(put))
        .route("/whoami", post(whoami))
        .route("/others", post(others))
        .layer(layer)
}

fn id_of(jar: &Jar) -> SessionId {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let mut headers = HeaderMap::new();
    let cookie = jar.cookie.as_deref().expect("a cookie");
    headers.insert(COOKIE, HeaderValue::from_str(cookie).expect("ascii"));
    session_id_from_headers(&headers, "sid", &keys)
        .expect("a verified cookie")
        .id
}

#[tokio::test]
async fn the_store_never_holds_the_cookies_id() {
    let memory = Arc::new(MemoryStore::new());
    let hashed: Arc<dyn SessionStore> =
        Arc::new(HashedIds::new(memory.clone()).expect("native store"));
    let app = app(hashed);
    let (mut laptop, mut phone) = (Jar::default(), Jar::default());
    for jar in [&mut laptop, &mut phone] {
        assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
        assert_eq!(jar.send(&app, "/put").await.1, "1");
    }
    let id = id_of(&laptop);
    assert!(
        memory.load(&id).await.expect("load").is_none(),
        "not under the id"
    );
    assert!(memory.load(&hashed_key(&id)).await.expect("load").is_some());
    assert_eq!(laptop.send(&app, "/whoami").await.1, "ada 1", "this device");
    assert_eq!(laptop.send(&app, "/others").await.1, "1");
    assert_eq!(laptop.send(&app, "/whoami").await.1, "ada 1");
    assert_eq!(phone.send(&app, "/whoami").await.1, " 0");
}

#[tokio::test]
async fn turning_it_on_keeps_sessions_with_the_fallback_and_a_login_moves_them() {
    let memory = Arc::new(MemoryStore::new());
    let plain = app(memory.clone());
    let (mut old, mut other) = (Jar::default(), Jar::default());
    for jar in [&mut old, &mut other] {
        assert_eq!(jar.send(&plain, "/login/ada").await.0, StatusCode::OK);
        assert_eq!(jar.send(&plain, "/put").await.1, "1");
    }

    let migrating = app(Arc::new(
        HashedIds::new(memory.clone())
            .expect("native store")
            .raw_fallback(true),
    ));
    assert_eq!(old.send(&migrating, "/put").await.1, "2", "still there");
    assert_eq!(old.send(&migrating, "/whoami").await.1, "ada 1");
    // Keeping this device while it is still under its raw id.
    assert_eq!(old.send(&migrating, "/others").await.1, "1");
    assert_eq!(old.send(&migrating, "/whoami").await.1, "ada 1");
    assert_eq!(other.send(&migrating, "/whoami").await.1, " 0");
    // A login moves it to the hashed key.
    assert_eq!(old.send(&migrating, "/login/ada").await.0, StatusCode::OK);
    let id = id_of(&old);
    assert!(memory.load(&id).await.expect("load").is_none());
    assert!(memory.load(&hashed_key(&id)).await.expect("load").is_some());

    // Fallback off: the moved session lives, one still under a raw id does not.
    let mut unmoved = Jar::default();
    assert_eq!(unmoved.send(&plain, "/login/bob").await.0, StatusCode::OK);
    let strict = app(Arc::new(
        HashedIds::new(memory.clone()).expect("native store"),
    ));
    assert_eq!(old.send(&strict, "/put").await.1, "3");
    assert_eq!(unmoved.send(&strict, "/whoami").await.1, " 0");
}

/// A hashed key from a dump, signed with the cookie secret, does not find its session even
/// while the fallback looks up raw ids (found by the history checker: the fallback used to
/// find the record under its own key).
#[tokio::test]
async fn a_stored_key_presented_as_a_cookie_finds_nothing() {
    let memory = Arc::new(MemoryStore::new());
    let app = app(Arc::new(
        HashedIds::new(memory.clone())
            .expect("native store")
            .raw_fallback(true),
    ));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let stolen = hashed_key(&id_of(&jar));
    let mut forged = Jar {
        cookie: Some(format!("sid={}", keys.sign_cookie_value(&stolen))),
        ..Jar::default()
    };
    assert_eq!(forged.send(&app, "/whoami").await.1, " 0");
    assert_eq!(jar.send(&app, "/whoami").await.1, "ada 1");
}

/// SECURITY.md's recipe for pruning a user's sessions: the ids `list_for_user` answers
/// (hashed keys) passed to the same store's `delete` remove those sessions (a review found
/// `delete` hashing them again and removing nothing), with and without the fallback.
#[tokio::test]
async fn listed_ids_can_be_deleted() {
    for fallback in [false, true] {
        let memory = Arc::new(MemoryStore::new());
        let store = Arc::new(
            HashedIds::new(memory.clone())
                .expect("native store")
                .raw_fallback(fallback),
        );
        let app = app(store.clone());
        let (mut laptop, mut phone) = (Jar::default(), Jar::default());
        for jar in [&mut laptop, &mut phone] {
            assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
        }
        let listed = store.list_for_user("ada").await.expect("list");
        assert_eq!(listed.len(), 2);
        for info in &listed {
            assert!(store.delete(&info.id).await.expect("delete"), "{fallback}");
        }
        assert!(store.list_for_user("ada").await.expect("list").is_empty());
        assert_eq!(laptop.send(&app, "/whoami").await.1, " 0");
        assert_eq!(phone.send(&app, "/whoami").await.1, " 0");
    }
}

#[test]
fn express_stores_are_refused() {
    #[derive(Debug)]
    struct Express;
    #[async_trait::async_trait]
    impl SessionStore for Express {
        async fn create(&self, _: &coatcheck::store::Record) -> Result<(), coatcheck::StoreError> {
            Ok(())
        }
        async fn load(
            &self,
            _: &SessionId,
        ) -> Result<Option<coatcheck::store::Record>, coatcheck::StoreError> {
            Ok(None)
        }
        async fn save(&self, _: &coatcheck::store::Record) -> Result<u64, coatcheck::StoreError> {
            Ok(1)
        }
        async fn touch(
            &self,
            _: &SessionId,
            _: coatcheck::Timestamp,
        ) -> Result<bool, coatcheck::StoreError> {
            Ok(false)
        }
        async fn delete(&self, _: &SessionId) -> Result<bool, coatcheck::StoreError> {
            Ok(false)
        }
        async fn list_for_user(
            &self,
            _: &str,
        ) -> Result<Vec<coatcheck::SessionInfo>, coatcheck::StoreError> {
            Ok(Vec::new())
        }
        async fn delete_for_user(
            &self,
            _: &str,
            _: Option<&SessionId>,
        ) -> Result<u64, coatcheck::StoreError> {
            Ok(0)
        }
        async fn delete_expired(&self) -> Result<u64, coatcheck::StoreError> {
            Ok(0)
        }
        fn capabilities(&self) -> coatcheck::store::Capabilities {
            coatcheck::store::Capabilities::new().with_express_layout(true)
        }
    }
    assert!(matches!(
        HashedIds::new(Express),
        Err(coatcheck::HashedIdsError::ExpressLayout)
    ));
}
