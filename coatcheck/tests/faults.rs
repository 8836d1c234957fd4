//! Fault injection through the middleware, on every store: each test starts its own server
//! (`coatcheck_conformance::servers`) on a free loopback port and kills, freezes, slows,
//! exhausts or crashes it while the real `SessionLayer` serves requests.
//!
//! What must hold, whatever the backend does:
//! - a request that needs the store gets a 5xx within a bounded time, never a panic, never a
//!   `Set-Cookie` (a browser keeps its cookie and its session);
//! - when the server is back, the *same* app serves again, without a restart;
//! - a slow server or an exhausted pool ends in a `503` after the configured
//!   [`store_timeout`](coatcheck::SessionLayerBuilder::store_timeout), not a hung request;
//! - Postgres (durable): every save acknowledged before `pg_ctl stop -m immediate` is there
//!   after the restart.
//!
//! Every test also checks that nothing logged during it — by the middleware, the stores or
//! their drivers, at TRACE — contains a session id or cookie value (`assert_no_id_logged`).
//!
//! SECURITY.md points at these by name.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use coatcheck::mongo::{mongodb, MongoStore};
use coatcheck::postgres::PostgresStore;
use coatcheck::redis::RedisStore;
use coatcheck::{KeyRing, Session, SessionError, SessionLayer, SessionStore};
use coatcheck_conformance::kit::Reply;
use coatcheck_conformance::servers::{PostgresServer, Server};
use http::StatusCode;
use sqlx::Connection as _;

const SECRET: &str = "fault test secret, long enough: 0123456789";
/// The middleware's bound on one store call in these tests.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// No response may take longer than this, whatever the server does (the store timeout,
/// plus a request's few store calls, plus slack for a loaded 2-core machine).
const BOUND: Duration = Duration::from_secs(4);
/// How long a restarted server may take until the same app serves again.
const RECOVERY: Duration = Duration::from_secs(20);

async fn count(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("n").await?.unwrap_or(0).to_string())
}

/// Everything logged by this test binary (one global subscriber, TRACE, no filter).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Every raw session id and cookie value the tests saw in a `Set-Cookie`.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

/// Nothing logged so far contains a session id or cookie value seen so far, while the
/// faults did make the stack log (so the capture works).
fn assert_no_id_logged() {
    let log = String::from_utf8_lossy(&LOG.lock().expect("log lock")).into_owned();
    assert!(log.contains("session"), "the faults were logged");
    for secret in SECRETS.lock().expect("lock").iter() {
        assert!(
            !log.contains(secret.as_str()),
            "a session id or cookie is in the logs"
        );
    }
}

fn app(store: impl SessionStore) -> Router {
    capture_logs();
    let layer = SessionLayer::builder(store, KeyRing::new([SECRET]).expect("long secret"))
        .store_timeout(Some(STORE_TIMEOUT))
        .build()
        .expect("valid config");
    Router::new()
        .route("/count", post(count))
        .route("/read", get(read))
        .route("/static", get(|| async { "no session needed" }))
        .layer(layer)
}

/// `method uri` with exactly `cookie` (none when `None`), bounded by `3 × BOUND`; the
/// reply and how long it took. Remembers the cookie value and id of any `Set-Cookie`, for
/// [`assert_no_id_logged`].
async fn call(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> (Reply, Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(BOUND * 3, common::send(app, method, uri, cookie))
        .await
        .unwrap_or_else(|_| panic!("{method} {uri} hung for {:?}", BOUND * 3));
    if let Some((_, value)) = common::set_pair(&r).and_then(|c| c.split_once('=')) {
        let keys = KeyRing::new([SECRET]).expect("long secret");
        let mut secrets = SECRETS.lock().expect("lock");
        secrets.push(value.to_owned());
        if let Some(v) = keys.verify_cookie_value(value) {
            secrets.push(v.id.as_str().to_owned());
        }
    }
    (r, start.elapsed())
}

/// A fresh session with its counter at 1; its cookie.
async fn new_session(app: &Router) -> String {
    let (r, _) = call(app, "POST", "/count", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    common::set_pair(&r)
        .expect("a new session's cookie")
        .to_owned()
}

/// A failure as the browser must see it: 5xx, in time, no cookie change.
fn assert_failed_cleanly(r: &Reply, took: Duration, what: &str) {
    assert!(r.status.is_server_error(), "{what}: {r:?}");
    assert!(
        r.set_cookie().is_none(),
        "{what}: Set-Cookie on a failure: {r:?}"
    );
    assert!(took <= BOUND, "{what}: took {took:?}");
}

/// The requests that need the store, with and without a session.
async fn every_kind_fails_cleanly(app: &Router, cookie: &str) {
    for (method, uri, cookie) in [
        ("POST", "/count", Some(cookie)),
        ("GET", "/read", Some(cookie)),
        ("POST", "/count", None),
    ] {
        let (r, took) = call(app, method, uri, cookie).await;
        assert_failed_cleanly(
            &r,
            took,
            &format!("{method} {uri} cookie={}", cookie.is_some()),
        );
    }
    // A request that never touches the session needs no store.
    let (r, _) = call(app, "GET", "/static", Some(cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Background traffic on `cookie` (and new sessions) until stopped: every reply is a 200
/// or a clean failure, each in time; returns (ok, failed) counts.
/// Also returns a live count of its successes.
#[allow(clippy::type_complexity)]
fn traffic(
    app: &Router,
    cookie: &str,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<(u64, u64)>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicU64::new(0));
    let tasks = (0..4)
        .map(|i| {
            let (app, cookie, stop) = (app.clone(), cookie.to_owned(), stop.clone());
            let successes = successes.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let c = (i % 2 == 0).then_some(cookie.as_str());
                    let (r, took) = call(&app, "POST", "/count", c).await;
                    if r.status == StatusCode::OK {
                        ok += 1;
                        successes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        assert_failed_cleanly(&r, took, "traffic");
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    (stop, successes, tasks)
}

async fn finish(
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64)>>,
) -> (u64, u64) {
    stop.store(true, Ordering::SeqCst);
    let mut totals = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await.expect("traffic task did not panic");
        totals.0 += ok;
        totals.1 += failed;
    }
    totals
}

/// Polls until a new session can be created again, within [`RECOVERY`].
async fn serves_again(app: &Router) -> String {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (r, took) = call(app, "POST", "/count", None).await;
        if r.status == StatusCode::OK {
            return common::set_pair(&r)
                .expect("a new session's cookie")
                .to_owned();
        }
        assert_failed_cleanly(&r, took, "while recovering");
        assert!(
            Instant::now() < deadline,
            "the app did not recover within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stop during traffic → clean failures; restart → the same app serves again.
async fn stop_during_traffic_then_restart(
    app: &Router,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) {
    let cookie = new_session(app).await;
    let (stop, successes, tasks) = traffic(app, &cookie);
    // Kill it once the traffic is flowing (a few requests have succeeded).
    let deadline = Instant::now() + RECOVERY;
    while successes.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "no traffic got through");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    every_kind_fails_cleanly(app, &cookie).await;
    let (ok, failed) = finish(stop, tasks).await;
    assert!(
        ok > 0 && failed > 0,
        "traffic saw both sides: ok={ok} failed={failed}"
    );
    restart();
    let fresh = serves_again(app).await;
    let (r, _) = call(app, "POST", "/count", Some(&fresh)).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "2"));
}

/// The session's counter, read through the app (waiting, within [`RECOVERY`], for the
/// backend to answer again after an earlier fault).
async fn count_of(app: &Router, cookie: &str) -> u64 {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (r, took) = call(app, "GET", "/read", Some(cookie)).await;
        if r.status == StatusCode::OK {
            return r.text().parse().expect("a count");
        }
        assert_failed_cleanly(&r, took, "reading the count");
        assert!(Instant::now() < deadline, "no recovery: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server has just stopped answering (the caller made it so after reading `before`):
/// 503 after the store timeout; once `fast` undoes it, the session is intact.
async fn slow_server_times_out(app: &Router, cookie: &str, before: u64, fast: impl FnOnce()) {
    for (method, uri) in [("GET", "/read"), ("POST", "/count")] {
        let (r, took) = call(app, method, uri, Some(cookie)).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {r:?}"
        );
        assert_failed_cleanly(&r, took, uri);
        assert!(
            took >= STORE_TIMEOUT,
            "{uri} failed before the timeout ({took:?}): {r:?}"
        );
    }
    fast();
    let after = count_of(app, cookie).await;
    // The timed-out increment may or may not have landed; nothing else changed.
    assert!(after == before || after == before + 1, "{before} → {after}");
}

// --- Redis -----------------------------------------------------------------------------------

fn redis_store(url: &str) -> RedisStore {
    RedisStore::builder()
        .connect_lazy(url)
        .expect("a valid url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_during_traffic_fails_cleanly_and_recovers() {
    let Some(server) = Server::redis() else {
        return;
    };
    let app = app(redis_store(server.url()));
    stop_during_traffic_then_restart(&app, || server.kill(), || server.restart()).await;
    assert_no_id_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_debug_sleep_times_out_with_503() {
    let Some(server) = Server::redis() else {
        return;
    };
    let app = app(redis_store(server.url()));
    let cookie = new_session(&app).await;
    let port = server.port();
    let before = count_of(&app, &cookie).await;
    // DEBUG SLEEP blocks the whole server; a raw connection sends it and waits.
    let sleeper = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"DEBUG SLEEP 4\r\n").expect("send");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("+OK after the sleep");
    });
    // Wait until the server really sleeps: a PING on another connection goes unanswered.
    let deadline = Instant::now() + RECOVERY;
    loop {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        s.write_all(b"PING\r\n").expect("send");
        let mut buf = [0u8; 7];
        if s.read_exact(&mut buf).is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "DEBUG SLEEP never took effect");
        std::thread::sleep(Duration::from_millis(10));
    }
    slow_server_times_out(&app, &cookie, before, || {
        sleeper.join().expect("DEBUG SLEEP finished");
    })
    .await;
    assert_no_id_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_server_times_out_with_503() {
    let Some(server) = Server::redis() else {
        return;
    };
    let app = app(redis_store(server.url()));
    let cookie = new_session(&app).await;
    let before = count_of(&app, &cookie).await;
    server.freeze(true);
    slow_server_times_out(&app, &cookie, before, || server.freeze(false)).await;
    assert_no_id_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_exhausted_pool_is_a_bounded_wait_and_a_clear_error() {
    use coatcheck::redis::deadpool_redis::{Config, Runtime};
    let Some(server) = Server::redis() else {
        return;
    };
    let pool = Config::from_url(server.url())
        .builder()
        .expect("pool config")
        .max_size(1)
        .wait_timeout(Some(Duration::from_millis(300)))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("pool");
    // Somebody else holds the pool's only connection before the store leases one.
    let held = pool.get().await.expect("the one connection");
    let store = RedisStore::from_pool(pool);
    let app = app(store.clone());
    let (r, took) = call(&app, "POST", "/count", None).await;
    assert_failed_cleanly(&r, took, "exhausted pool");
    let err = store
        .load(&coatcheck::SessionId::generate())
        .await
        .expect_err("no connection to be had");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(err.is_backend(), "{text}");
    assert!(
        text.to_lowercase().contains("timeout") || text.to_lowercase().contains("timed out"),
        "{text}"
    );
    drop(held);
    serves_again(&app).await;
    assert_no_id_logged();
}

// --- Postgres --------------------------------------------------------------------------------

async fn postgres_store(server: &PostgresServer, pool_size: u32) -> PostgresStore {
    let store = PostgresStore::builder()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&server.url())
        .expect("a valid url");
    store.migrate().await.expect("migrate");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_traffic_fails_cleanly_and_recovers() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let app = app(postgres_store(&server, 8).await);
    stop_during_traffic_then_restart(&app, || server.crash(), || server.start_again()).await;
    assert_no_id_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_held_by_another_connection_times_out_with_503() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let store = postgres_store(&server, 8).await;
    let table = store.qualified_table_name().to_owned();
    let app = app(store);
    let cookie = new_session(&app).await;
    let before = count_of(&app, &cookie).await;
    let mut locker = sqlx::PgConnection::connect(&server.url())
        .await
        .expect("connect");
    let locked = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let holder = {
        let (locked, release) = (locked.clone(), release.clone());
        tokio::spawn(async move {
            let mut tx = locker.begin().await.expect("begin");
            sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .execute(&mut *tx)
                .await
                .expect("lock");
            locked.notify_one();
            release.notified().await;
            tx.rollback().await.expect("rollback");
        })
    };
    locked.notified().await;
    slow_server_times_out(&app, &cookie, before, || release.notify_one()).await;
    holder.await.expect("lock holder");
    assert_no_id_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exhausted_pool_is_a_bounded_wait_and_a_clear_error() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let store = postgres_store(&server, 2).await;
    let app = app(store.clone());
    let cookie = new_session(&app).await;
    let held = [
        store.pool().acquire().await.expect("connection 1"),
        store.pool().acquire().await.expect("connection 2"),
    ];
    every_kind_fails_cleanly(&app, &cookie).await;
    let start = Instant::now();
    let err = store
        .load(&coatcheck::SessionId::generate())
        .await
        .expect_err("no connection to be had");
    assert!(start.elapsed() < BOUND);
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(err.is_backend(), "{text}");
    assert!(text.contains("pool timed out"), "{text}");
    drop(held);
    let (r, _) = call(&app, "POST", "/count", Some(&cookie)).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "2"),
        "{r:?}"
    );
    assert_no_id_logged();
}

/// Four browsers increment their counters; the server crashes (`pg_ctl stop -m immediate`)
/// in the middle. After the restart every counter is at least what its last 200 said — and
/// at most one more (the request in flight at the crash may have committed unacknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_saves_survive_an_immediate_shutdown() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let app = app(postgres_store(&server, 8).await);
    let mut browsers = Vec::new();
    for _ in 0..4 {
        browsers.push((new_session(&app).await, Arc::new(AtomicU64::new(1))));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = browsers
        .iter()
        .map(|(cookie, acked)| {
            let (app, cookie, acked, stop) =
                (app.clone(), cookie.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let (r, took) = call(&app, "POST", "/count", Some(&cookie)).await;
                    if r.status == StatusCode::OK {
                        acked.store(r.text().parse().expect("a count"), Ordering::SeqCst);
                    } else {
                        assert_failed_cleanly(&r, took, "during the crash");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("browser task");
    }
    server.start_again();
    for (cookie, acked) in &browsers {
        let acked = acked.load(Ordering::SeqCst);
        assert!(
            acked > 1,
            "the browser got acknowledgements before the crash"
        );
        let deadline = Instant::now() + RECOVERY;
        let stored: u64 = loop {
            let (r, _) = call(&app, "GET", "/read", Some(cookie)).await;
            if r.status == StatusCode::OK {
                break r.text().parse().expect("a count");
            }
            assert!(Instant::now() < deadline, "no recovery: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            stored == acked || stored == acked + 1,
            "acknowledged {acked}, found {stored} after the crash"
        );
    }
    assert_no_id_logged();
}

// --- MongoDB-wire server ---------------------------------------------------------------------

async fn mongo_store(server: &Server, pool_size: u32) -> MongoStore {
    let mut options = mongodb::options::ClientOptions::parse(server.url())
        .await
        .expect("a valid url");
    options.max_pool_size = Some(pool_size);
    // Longer than the layer's store timeout, so that the layer's bound is what the tests see.
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    MongoStore::connect_with_options(options, "faults")
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_stopped_during_traffic_fails_cleanly_and_recovers() {
    let Some(server) = Server::mongo() else {
        return;
    };
    let app = app(mongo_store(&server, 8).await);
    stop_during_traffic_then_restart(&app, || server.kill(), || server.restart()).await;
    assert_no_id_logged();
}

/// A paused wire server with a one-connection pool: every one of eight concurrent
/// requests ends in a 503 within the bound, none waits forever for the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_paused_server_and_exhausted_pool_time_out_with_503() {
    let Some(server) = Server::mongo() else {
        return;
    };
    let app = app(mongo_store(&server, 1).await);
    let cookie = new_session(&app).await;
    server.freeze(true);
    let replies = futures_util::future::join_all((0..8).map(|_| {
        let (app, cookie) = (app.clone(), cookie.clone());
        async move { call(&app, "POST", "/count", Some(&cookie)).await }
    }))
    .await;
    for (r, took) in &replies {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
        assert_failed_cleanly(r, *took, "paused, one connection");
    }
    server.freeze(false);
    let before = count_of(&app, &cookie).await;
    server.freeze(true);
    slow_server_times_out(&app, &cookie, before, || server.freeze(false)).await;
    assert_no_id_logged();
}
