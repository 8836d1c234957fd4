//! Sessions bound to the user's credentials (`credential_check`): a password changed
//! through a path that never touches the session layer signs out every device of that user
//! on its next request, on every store; nothing else is signed out; a lookup failure fails
//! the request and ends nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::mongo::MongoStore;
use coatcheck::postgres::PostgresStore;
use coatcheck::redis::RedisStore;
use coatcheck::{
    KeyRing, Secure, Session, SessionError, SessionEvent, SessionLayer, SessionLayerBuilder,
    SessionStore, CREDENTIAL_KEY,
};
use coatcheck_conformance::{harness, Backend};
use common::Jar;
use http::StatusCode;

const SECRET: &str = "credential test secret, long enough: 0123456789";

async fn login(session: Session, Path(user): Path<String>) -> Result<String, SessionError> {
    session.login(user).await?;
    Ok("ok".into())
}
async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session.user_id().await?.unwrap_or_default())
}
async fn put(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}
/// Tries to write the stamp, then clears the data: what the application sees.
async fn meddle(session: Session) -> Result<String, SessionError> {
    let refused = matches!(
        session.insert(CREDENTIAL_KEY, "forged").await,
        Err(SessionError::ReservedKey(_))
    );
    let hidden = session.get_value(CREDENTIAL_KEY).await?.is_none();
    session.clear().await?;
    Ok(format!("{refused} {hidden}"))
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/whoami", post(whoami))
        .route("/put", post(put))
        .route("/meddle", post(meddle))
        .layer(layer)
}

/// The application's user table (user -> password hash), and whether it answers.
#[derive(Clone, Default)]
struct Users {
    hashes: Arc<RwLock<HashMap<String, String>>>,
    down: Arc<AtomicBool>,
}

impl Users {
    fn set(&self, user: &str, hash: &str) {
        self.hashes
            .write()
            .expect("lock")
            .insert(user.into(), hash.into());
    }
    fn remove(&self, user: &str) {
        self.hashes.write().expect("lock").remove(user);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("user database unavailable")]
struct UsersDown;

fn checked(builder: SessionLayerBuilder, users: &Users) -> SessionLayerBuilder {
    let users = users.clone();
    builder.credential_check(move |user: String| {
        let users = users.clone();
        async move {
            if users.down.load(Ordering::SeqCst) {
                return Err(UsersDown);
            }
            let hashes = users.hashes.read().expect("lock");
            Ok(hashes.get(&user).map(|h| h.as_bytes().to_vec()))
        }
    })
}

fn builder(store: Arc<dyn SessionStore>) -> SessionLayerBuilder {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    SessionLayer::builder_shared(store, keys).secure(Secure::Never)
}

/// Waits (briefly) for the events delivered off the request path.
async fn events_seen(events: &Mutex<Vec<SessionEvent>>, want: usize) -> Vec<SessionEvent> {
    for _ in 0..200 {
        if events.lock().expect("lock").len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    events.lock().expect("lock").clone()
}

/// Two devices of ada and one of bob; ada's password changes behind the layer's back.
async fn password_change_signs_out_everywhere(store: Arc<dyn SessionStore>, what: &str) {
    let users = Users::default();
    users.set("ada", "hash-1");
    users.set("bob", "bob-1");
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = checked(builder(store), &users)
        .on_event(move |e| {
            if matches!(e, SessionEvent::CredentialsChanged { .. }) {
                seen.lock().expect("lock").push(e);
            }
        })
        .build()
        .expect("valid config");
    let app = router(layer);

    let (mut laptop, mut phone, mut bob) = (Jar::default(), Jar::default(), Jar::default());
    for (jar, user) in [(&mut laptop, "ada"), (&mut phone, "ada"), (&mut bob, "bob")] {
        let (status, body) = jar.send(&app, &format!("/login/{user}")).await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        assert_eq!(jar.send(&app, "/put").await.1, "1", "{what}");
        assert_eq!(jar.send(&app, "/whoami").await.1, user, "{what}");
    }
    // The stamp is the session's own.
    assert_eq!(laptop.send(&app, "/meddle").await.1, "true true", "{what}");
    assert_eq!(laptop.send(&app, "/whoami").await.1, "ada", "{what}");

    // The password changes through the user table alone.
    users.set("ada", "hash-2");
    let phone_before = phone.clone();
    for jar in [&mut laptop, &mut phone] {
        let (status, body) = jar.send(&app, "/whoami").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, ""),
            "{what}: logged out"
        );
        assert!(
            jar.cookie.is_none(),
            "{what}: cookie cleared: {:?}",
            jar.last_set
        );
    }
    assert_eq!(
        bob.send(&app, "/whoami").await.1,
        "bob",
        "{what}: bob stays"
    );
    let got = events_seen(&events, 2).await;
    assert_eq!(got.len(), 2, "{what}: {got:?}");
    assert!(
        got.iter().all(
            |e| matches!(e, SessionEvent::CredentialsChanged { user, handle: Some(_) } if user == "ada")
        ),
        "{what}: {got:?}"
    );

    // Deleted, not hidden: the old password back does not bring the session back.
    users.set("ada", "hash-1");
    let mut old = phone_before;
    assert_eq!(old.send(&app, "/whoami").await.1, "", "{what}: stays gone");
    users.set("ada", "hash-2");

    // A login with the new password works and stays.
    assert_eq!(phone.send(&app, "/login/ada").await.0, StatusCode::OK);
    assert_eq!(phone.send(&app, "/put").await.1, "1", "{what}");
    assert_eq!(phone.send(&app, "/whoami").await.1, "ada", "{what}");

    // The user table failing fails the request and ends nothing.
    users.down.store(true, Ordering::SeqCst);
    let (status, _) = phone.send(&app, "/whoami").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
    users.down.store(false, Ordering::SeqCst);
    assert_eq!(phone.send(&app, "/whoami").await.1, "ada", "{what}: intact");

    // A deleted user is signed out too.
    users.remove("bob");
    assert_eq!(bob.send(&app, "/whoami").await.1, "", "{what}");
}

#[tokio::test]
async fn a_password_change_signs_out_every_device_memory() {
    password_change_signs_out_everywhere(Arc::new(MemoryStore::new()), "memory").await;
}

#[tokio::test]
async fn an_unknown_user_is_not_logged_in() {
    let users = Users::default();
    let app = router(
        checked(builder(Arc::new(MemoryStore::new())), &users)
            .build()
            .expect("valid config"),
    );
    let mut jar = Jar::default();
    let (status, _) = jar.send(&app, "/login/nobody").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(jar.cookie.is_none(), "nothing written: {:?}", jar.last_set);
}

#[tokio::test]
async fn sessions_signed_in_before_the_check_was_on_are_signed_out() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let users = Users::default();
    users.set("ada", "hash-1");
    let before = router(builder(store.clone()).build().expect("valid config"));
    let after = router(
        checked(builder(store), &users)
            .build()
            .expect("valid config"),
    );
    let mut jar = Jar::default();
    assert_eq!(jar.send(&before, "/login/ada").await.0, StatusCode::OK);
    let mut anonymous = Jar::default();
    assert_eq!(anonymous.send(&before, "/put").await.1, "1");
    // No stamp: signed out once the check is on. An anonymous session has nothing to
    // check and stays.
    assert_eq!(jar.send(&after, "/whoami").await.1, "");
    assert_eq!(anonymous.send(&after, "/put").await.1, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_signs_out_every_device_redis() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    let url = harness::url(Backend::Redis).await.expect("checked");
    let store = RedisStore::builder()
        .prefix(format!("{}:", harness::unique_name("cc-cred")))
        .connect(&url)
        .await
        .expect("connect to Redis");
    password_change_signs_out_everywhere(Arc::new(store), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_signs_out_every_device_postgres() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let url = harness::url(Backend::Postgres).await.expect("checked");
    let table = harness::unique_name("cc_credentials");
    let store = PostgresStore::builder()
        .table(&table)
        .connect_lazy(&url)
        .expect("valid config");
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    password_change_signs_out_everywhere(Arc::new(store), "postgres").await;
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .expect("drop the test table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_signs_out_every_device_mongo() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    let url = harness::url(Backend::Mongo).await.expect("checked");
    let options = coatcheck::mongo::mongodb::options::ClientOptions::parse(&url)
        .await
        .expect("MONGODB_URL parses");
    let client = MongoStore::client_with_defaults(options).expect("client");
    let store = MongoStore::builder(&client, "coatcheck_test")
        .collection(harness::unique_name("cc_credentials"))
        .build_with_indexes()
        .await
        .expect("store with indexes");
    password_change_signs_out_everywhere(Arc::new(store), "mongo").await;
}
