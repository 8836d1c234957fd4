//! "Remember me", chosen per session: the cookie's persistence and the timeouts of each
//! policy, kept across `login`/`regenerate`, switched back, hidden from the application's
//! data; and kept by every store and layout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::mongo::MongoStore;
use coatcheck::postgres::PostgresStore;
use coatcheck::redis::RedisStore;
use coatcheck::{
    ExpressFormat, KeyRing, ManualClock, Secure, Session, SessionError, SessionLayer, SessionStore,
    Timestamp, REMEMBER_ME_KEY,
};
use coatcheck_conformance::{harness, Backend};
use common::Jar;
use http::StatusCode;

const SECRET: &str = "remember-me test secret, long enough: 0123456789";
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `/login/{remember}`: the login, then the checkbox.
async fn login(session: Session, Path(remember): Path<bool>) -> Result<String, SessionError> {
    session.login("ada").await?;
    session.remember_me(remember).await?;
    Ok("ok".into())
}
async fn remember(session: Session, Path(yes): Path<bool>) -> Result<String, SessionError> {
    session.remember_me(yes).await?;
    Ok("ok".into())
}
async fn regenerate(session: Session) -> Result<String, SessionError> {
    session.regenerate().await?;
    Ok("ok".into())
}
/// The user, whether remembered, and the expiry in seconds from the epoch.
async fn state(session: Session) -> Result<String, SessionError> {
    let user = session.user_id().await?.unwrap_or_default();
    let remembered = session.is_remembered().await?;
    let expires = session
        .expires_at()
        .await?
        .map_or(0, |t| t.as_millis() / 1000);
    Ok(format!("{user} {remembered} {expires}"))
}
async fn put(session: Session) -> Result<String, SessionError> {
    session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok("ok".into())
}
/// Tries to write the reserved key, then clears the data: what the application sees.
async fn meddle(session: Session) -> Result<String, SessionError> {
    let refused = matches!(
        session.insert(REMEMBER_ME_KEY, false).await,
        Err(SessionError::ReservedKey(_))
    );
    let hidden = session.get_value(REMEMBER_ME_KEY).await?.is_none();
    session.clear().await?;
    Ok(format!(
        "{refused} {hidden} {}",
        session.is_remembered().await?
    ))
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login/{remember}", post(login))
        .route("/remember/{yes}", post(remember))
        .route("/regenerate", post(regenerate))
        .route("/state", post(state))
        .route("/put", post(put))
        .route("/meddle", post(meddle))
        .layer(layer)
}

/// Unticked: a browser-session cookie, 30 minutes idle, 12 hours at most. Ticked: a
/// persistent cookie, 30 days idle, 90 days at most.
fn layer(store: impl SessionStore, clock: &ManualClock) -> SessionLayer {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    SessionLayer::builder(store, keys)
        .secure(Secure::Never)
        .clock(clock.clone())
        .browser_session(true)
        .idle_timeout(30 * MIN)
        .absolute_timeout(12 * HOUR)
        .remember_me(30 * DAY, Some(90 * DAY))
        .build()
        .expect("valid config")
}

impl Jar {
    /// Whether the last `Set-Cookie` persists (has `Expires`); panics if none was sent.
    fn persistent(&self) -> bool {
        self.last_set
            .as_deref()
            .expect("a Set-Cookie")
            .contains("Expires=")
    }

    /// `(user, remembered, expires in seconds from the epoch)`.
    async fn state(&mut self, app: &Router) -> (String, bool, i64) {
        let (status, body) = self.send(app, "/state").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut parts = body.split(' ');
        let user = parts.next().unwrap_or_default().to_owned();
        let remembered = parts.next() == Some("true");
        let expires = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (user, remembered, expires)
    }
}

fn secs(t: Timestamp) -> i64 {
    t.as_millis() / 1000
}

#[tokio::test]
async fn each_choice_gets_its_cookie_and_its_timeouts() {
    let clock = ManualClock::new(Timestamp::now());
    let app = router(layer(
        MemoryStore::builder().clock(clock.clone()).build(),
        &clock,
    ));
    let now = now_secs(&clock);

    let mut unticked = Jar::default();
    assert_eq!(unticked.send(&app, "/login/false").await.0, StatusCode::OK);
    assert!(!unticked.persistent(), "unticked: a browser-session cookie");
    assert_eq!(
        unticked.state(&app).await,
        ("ada".into(), false, now + 30 * 60)
    );

    let mut ticked = Jar::default();
    assert_eq!(ticked.send(&app, "/login/true").await.0, StatusCode::OK);
    assert!(ticked.persistent(), "ticked: a persistent cookie");
    assert_eq!(
        ticked.state(&app).await,
        ("ada".into(), true, now + 30 * 86_400)
    );

    // An hour later the unticked session is gone (30 minutes idle); the ticked one lives,
    // and a write rolls it by its own idle timeout and sends its persistent cookie again.
    clock.advance(HOUR);
    assert_eq!(
        unticked.state(&app).await.0,
        "",
        "idle timeout of the unticked policy"
    );
    assert_eq!(ticked.send(&app, "/put").await.0, StatusCode::OK);
    assert!(ticked.persistent());
    assert_eq!(ticked.state(&app).await.2, now + 3600 + 30 * 86_400);

    // Its absolute lifetime is the remembered one (90 days), not the layer's 12 hours.
    for _ in 0..4 {
        clock.advance(20 * DAY);
        assert_eq!(ticked.send(&app, "/put").await.0, StatusCode::OK);
        assert_eq!(
            ticked.state(&app).await.0,
            "ada",
            "{:?}",
            ticked.state(&app).await
        );
    }
    let (_, _, expires) = ticked.state(&app).await;
    assert_eq!(
        expires,
        now + 90 * 86_400,
        "capped at 90 days after creation"
    );
    clock.advance(11 * DAY);
    assert_eq!(
        ticked.state(&app).await.0,
        "",
        "past the remembered absolute lifetime"
    );
}

fn now_secs(clock: &ManualClock) -> i64 {
    secs(coatcheck::core::Clock::now(clock))
}

#[tokio::test]
async fn the_choice_survives_rotation_and_switching_back_shortens_the_session() {
    let clock = ManualClock::new(Timestamp::now());
    let app = router(layer(
        MemoryStore::builder().clock(clock.clone()).build(),
        &clock,
    ));
    let now = now_secs(&clock);
    let mut jar = Jar::default();
    jar.send(&app, "/login/true").await;
    let first = jar.cookie.clone();
    assert_eq!(jar.send(&app, "/regenerate").await.0, StatusCode::OK);
    assert_ne!(jar.cookie, first, "a new id");
    assert!(jar.persistent(), "the rotated cookie still persists");
    assert_eq!(
        jar.state(&app).await,
        ("ada".into(), true, now + 30 * 86_400)
    );

    // A login again (same user) keeps it too.
    let mut again = Jar {
        cookie: jar.cookie.clone(),
        ..Jar::default()
    };
    assert_eq!(again.send(&app, "/remember/true").await.0, StatusCode::OK);
    assert!(again.last_set.is_none(), "no change, nothing written");

    // Unticking: the cookie becomes a browser-session cookie and the expiry shrinks to
    // the unticked idle timeout (a write never shortens a session by itself; this one must).
    assert_eq!(jar.send(&app, "/remember/false").await.0, StatusCode::OK);
    assert!(!jar.persistent());
    assert_eq!(jar.state(&app).await, ("ada".into(), false, now + 30 * 60));
    // And the unticked idle timeout applies again.
    clock.advance(31 * MIN);
    assert_eq!(jar.state(&app).await.0, "");
}

#[tokio::test]
async fn the_key_is_the_sessions_own_not_the_applications() {
    let clock = ManualClock::new(Timestamp::now());
    let app = router(layer(
        MemoryStore::builder().clock(clock.clone()).build(),
        &clock,
    ));
    let mut jar = Jar::default();
    jar.send(&app, "/login/true").await;
    let (status, body) = jar.send(&app, "/meddle").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "true true true",
        "refused, hidden, and kept by clear()"
    );
    assert!(jar.state(&app).await.1);
}

#[test]
fn a_remembered_policy_that_cannot_work_is_refused() {
    let keys = || KeyRing::new([SECRET]).expect("long secret");
    let zero = SessionLayer::builder(MemoryStore::new(), keys())
        .remember_me(Duration::ZERO, None)
        .build();
    assert!(
        matches!(zero, Err(coatcheck::ConfigError::ZeroIdleTimeout)),
        "{zero:?}"
    );
    let short = SessionLayer::builder(MemoryStore::new(), keys())
        .touch_after(Duration::from_secs(120))
        .remember_me(Duration::from_secs(60), None)
        .build();
    assert!(
        matches!(
            short,
            Err(coatcheck::ConfigError::TouchAfterNotBelowIdle { .. })
        ),
        "{short:?}"
    );
}

/// Login remembered, a later request, a rotation: still remembered, still persistent, on
/// this store.
async fn survives_on(store: Arc<dyn SessionStore>, what: &str) {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder(store, keys)
        .secure(Secure::Never)
        .browser_session(true)
        .idle_timeout(30 * MIN)
        .remember_me(30 * DAY, None)
        .build()
        .expect("valid config");
    let app = router(layer);
    let mut jar = Jar::default();
    let (status, body) = jar.send(&app, "/login/true").await;
    assert_eq!(status, StatusCode::OK, "{what}: {body}");
    assert!(jar.persistent(), "{what}");
    let (user, remembered, expires) = jar.state(&app).await;
    assert_eq!((user.as_str(), remembered), ("ada", true), "{what}");
    let now = secs(Timestamp::now());
    assert!(
        expires > now + 29 * 86_400,
        "{what}: the stored expiry is the remembered one"
    );
    assert_eq!(
        jar.send(&app, "/regenerate").await.0,
        StatusCode::OK,
        "{what}"
    );
    assert!(jar.persistent(), "{what}");
    assert_eq!(jar.send(&app, "/put").await.0, StatusCode::OK, "{what}");
    assert!(jar.state(&app).await.1, "{what}: kept after a rotation");
    assert_eq!(
        jar.send(&app, "/remember/false").await.0,
        StatusCode::OK,
        "{what}"
    );
    let (_, remembered, expires) = jar.state(&app).await;
    assert!(!remembered, "{what}");
    assert!(expires <= now + 31 * 60, "{what}: shortened in the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_keeps_the_choice_redis() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    let url = harness::url(Backend::Redis).await.expect("checked");
    for express in [false, true] {
        let mut b = RedisStore::builder().prefix(format!("{}:", harness::unique_name("cc-rm")));
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = b.connect(&url).await.expect("connect to Redis");
        survives_on(Arc::new(store), &format!("redis, express {express}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_keeps_the_choice_postgres() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let url = harness::url(Backend::Postgres).await.expect("checked");
    for express in [false, true] {
        let table = harness::unique_name("cc_remember");
        let mut b = PostgresStore::builder().table(&table);
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = b.connect_lazy(&url).expect("valid config");
        store.migrate().await.expect("migrate");
        let pool = store.pool().clone();
        survives_on(Arc::new(store), &format!("postgres, express {express}")).await;
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS \"{table}\""))
            .execute(&pool)
            .await
            .expect("drop the test table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_keeps_the_choice_mongo() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    let url = harness::url(Backend::Mongo).await.expect("checked");
    let options = coatcheck::mongo::mongodb::options::ClientOptions::parse(&url)
        .await
        .expect("MONGODB_URL parses");
    let client = MongoStore::client_with_defaults(options).expect("client");
    for express in [false, true] {
        let mut b = MongoStore::builder(&client, "coatcheck_test")
            .collection(harness::unique_name("cc_remember"));
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = b.build_with_indexes().await.expect("store with indexes");
        survives_on(Arc::new(store), &format!("mongo, express {express}")).await;
    }
}
