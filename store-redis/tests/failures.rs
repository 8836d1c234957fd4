//! A Redis (or Valkey) server that dies or hangs under traffic: every operation fails with a `Backend`
//! error within a bounded time, nothing panics, and once the server is back the *same* store
//! object works again. Each test starts its own `redis-server` on a free loopback port.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck_core::{Record, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_redis::RedisStore;
use common::PrivateRedis;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);
/// No single operation may take longer than this, whatever the server does.
const BOUND: Duration = Duration::from_secs(6);

fn record(user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.data.insert("views".into(), json!(1));
    r.user_id = user.map(str::to_owned);
    r
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    backend: AtomicU64,
    slowest_ms: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::SeqCst),
            self.backend.load(Ordering::SeqCst),
        )
    }
}

/// Runs one operation under the bound; `Ok` and `Backend` are counted, anything else fails
/// the test (a `NotFound`/`None` is tolerated where a restart may have emptied the server).
async fn timed<T>(
    stats: &Stats,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Option<T> {
    let start = Instant::now();
    let res = tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {BOUND:?}"));
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    stats.slowest_ms.fetch_max(ms, Ordering::SeqCst);
    match res {
        Ok(v) => {
            stats.ok.fetch_add(1, Ordering::SeqCst);
            Some(v)
        }
        Err(StoreError::Backend(_)) => {
            stats.backend.fetch_add(1, Ordering::SeqCst);
            None
        }
        Err(StoreError::NotFound) if what == "save" => None,
        Err(e) => panic!("{what}: expected Ok or Backend, got {e:?}"),
    }
}

/// 8 tasks doing create → load → save → touch → delete until `stop`.
fn traffic(
    store: &RedisStore,
    stats: &Arc<Stats>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|i| {
            let store = store.clone();
            let stats = stats.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let user = format!("user-{}", i % 3);
                    let mut r = record(if i % 2 == 0 { Some(&user) } else { None });
                    if timed(&stats, "create", store.create(&r)).await.is_none() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    timed(&stats, "load", store.load(&r.id)).await;
                    r.data.insert("views".into(), json!(2));
                    timed(&stats, "save", store.save(&r)).await;
                    timed(&stats, "touch", store.touch(&r.id, r.expires_at + HOUR)).await;
                    if i % 2 == 0 {
                        timed(&stats, "list_for_user", store.list_for_user(&user)).await;
                    }
                    timed(&stats, "delete", store.delete(&r.id)).await;
                }
            })
        })
        .collect()
}

async fn stop_traffic(stop: &Arc<AtomicBool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("a traffic task panicked");
    }
}

/// The full contract still works on this store object.
async fn works(store: &RedisStore) {
    let mut r = record(Some("after"));
    store.create(&r).await.expect("create");
    assert_eq!(store.load(&r.id).await.expect("load").as_ref(), Some(&r));
    r.data.insert("views".into(), json!(9));
    r.version = store.save(&r).await.expect("save");
    assert!(store
        .touch(&r.id, r.expires_at + HOUR)
        .await
        .expect("touch"));
    assert_eq!(store.list_for_user("after").await.expect("list").len(), 1);
    assert_eq!(store.delete_for_user("after", None).await.expect("dfu"), 1);
    assert!(store.load(&r.id).await.expect("load").is_none());
}

/// Polls until an operation succeeds again; returns how long that took.
async fn recovers(store: &RedisStore) -> Duration {
    let start = Instant::now();
    loop {
        let r = record(None);
        match tokio::time::timeout(BOUND, store.create(&r)).await {
            Ok(Ok(())) => return start.elapsed(),
            Ok(Err(StoreError::Backend(_))) => {}
            Ok(Err(e)) => panic!("while recovering: {e:?}"),
            Err(_) => panic!("create did not answer within {BOUND:?} while recovering"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the store did not recover within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn killed_and_restarted(store: RedisStore, server: &PrivateRedis, label: &str) {
    works(&store).await;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = traffic(&store, &stats, &stop);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (ok_before, err_before) = stats.snapshot();
    assert!(
        ok_before > 0,
        "{label}: no traffic got through before the kill"
    );
    assert_eq!(err_before, 0, "{label}: errors before the kill");

    server.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, err_down) = stats.snapshot();
    assert!(
        err_down > 0,
        "{label}: no Backend errors while the server was down"
    );
    stop_traffic(&stop, tasks).await;

    // Every operation, directly: Backend, quickly.
    let r = record(Some("u"));
    for (what, res) in [
        (
            "create",
            tokio::time::timeout(BOUND, store.create(&r))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "load",
            tokio::time::timeout(BOUND, store.load(&r.id))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "save",
            tokio::time::timeout(BOUND, store.save(&r))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "touch",
            tokio::time::timeout(BOUND, store.touch(&r.id, r.expires_at))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "delete",
            tokio::time::timeout(BOUND, store.delete(&r.id))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "list_for_user",
            tokio::time::timeout(BOUND, store.list_for_user("u"))
                .await
                .map(|r| r.map(drop)),
        ),
        (
            "delete_for_user",
            tokio::time::timeout(BOUND, store.delete_for_user("u", None))
                .await
                .map(|r| r.map(drop)),
        ),
    ] {
        match res {
            Ok(Err(StoreError::Backend(e))) => eprintln!("{label}: {what} while down: {e}"),
            other => panic!("{label}: {what} while down: expected Backend, got {other:?}"),
        }
    }

    server.restart();
    let took = recovers(&store).await;
    eprintln!(
        "{label}: down for {:?}; {} ok / {} Backend errors, slowest op {} ms; working again {:?} after the restart",
        killed_at.elapsed(),
        stats.ok.load(Ordering::SeqCst),
        stats.backend.load(Ordering::SeqCst),
        stats.slowest_ms.load(Ordering::SeqCst),
        took
    );
    works(&store).await;

    // And under traffic, without a single error.
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = traffic(&store, &stats, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_traffic(&stop, tasks).await;
    let (ok, err) = stats.snapshot();
    assert!(
        ok > 0 && err == 0,
        "{label}: after restart {ok} ok, {err} errors"
    );
}

async fn frozen_then_thawed(store: RedisStore, server: &PrivateRedis, label: &str) {
    works(&store).await;
    server.freeze(true);
    let r = record(None);
    let start = Instant::now();
    match tokio::time::timeout(BOUND, store.load(&r.id)).await {
        Ok(Err(StoreError::Backend(e))) => {
            eprintln!(
                "{label}: load on a hung server after {:?}: {e}",
                start.elapsed()
            )
        }
        other => panic!("{label}: load on a hung server: expected Backend, got {other:?}"),
    }
    match tokio::time::timeout(BOUND, store.create(&r)).await {
        Ok(Err(StoreError::Backend(_))) => {}
        other => panic!("{label}: create on a hung server: expected Backend, got {other:?}"),
    }
    server.freeze(false);
    recovers(&store).await;
    works(&store).await;
}

fn builder() -> coatcheck_redis::RedisStoreBuilder {
    RedisStore::builder()
        .prefix("fail:")
        .response_timeout(Duration::from_millis(500))
        .operation_timeout(Some(Duration::from_secs(2)))
}

fn pool(url: &str) -> deadpool_redis::Pool {
    deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_manager_survives_a_server_kill_and_restart() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let store = builder().connect(server.url()).await.expect("connect");
    killed_and_restarted(store, &server, "manager").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_survives_a_server_kill_and_restart() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let store = builder().pool(pool(server.url())).expect("options");
    killed_and_restarted(store, &server, "pool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_manager_times_out_on_a_hung_server_and_recovers() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let store = builder().connect(server.url()).await.expect("connect");
    frozen_then_thawed(store, &server, "manager").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_times_out_on_a_hung_server_and_recovers() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    // Pooled connections carry redis-rs's default response timeout (500 ms); the store's
    // operation timeout is the outer bound in any case.
    let store = builder().pool(pool(server.url())).expect("options");
    frozen_then_thawed(store, &server, "pool").await;
}

// Valkey 8.1: the same faults on the `SET … IFEQ` path (its probe, its fast writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_survives_a_server_kill_and_restart() {
    let Some(server) = PrivateRedis::valkey() else {
        return;
    };
    let store = builder().connect(server.url()).await.expect("connect");
    killed_and_restarted(store, &server, "valkey").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_times_out_on_a_hung_server_and_recovers() {
    let Some(server) = PrivateRedis::valkey() else {
        return;
    };
    let store = builder().connect(server.url()).await.expect("connect");
    frozen_then_thawed(store, &server, "valkey").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_store_starts_before_its_server() {
    // Take a port, start nothing there yet.
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let url = server.url();
    server.kill();
    let store = builder().connect_lazy(url).expect("lazy");
    match tokio::time::timeout(BOUND, store.load(&SessionId::generate())).await {
        Ok(Err(StoreError::Backend(_))) => {}
        other => panic!("expected Backend before the server exists, got {other:?}"),
    }
    server.restart();
    recovers(&store).await;
    works(&store).await;
}
