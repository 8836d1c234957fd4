//! The per-user lease of `create_limited` on a Redis Cluster (issue 25, item 10): a caller
//! dropped while the lease is held (a timeout, a client gone) must not leave it behind for
//! its 10 s, and a create that cannot get the lease fails with the store's own error before
//! the operation timeout (5 s by default, as the layer's `store_timeout`) cuts it.
//!
//! On the cluster at `REDIS_CLUSTER_URLS`, and on a single node driven as a cluster
//! (`single_key_scripts`), which takes the same lease path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{
    Clock, LimitPolicy, Record, SessionId, SessionLimit, SessionStore, StoreError, Timestamp,
};
use coatcheck_redis::{RedisStore, DEFAULT_OPERATION_TIMEOUT};
use tokio::task::AbortHandle;

fn record(user: &str) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(
        SessionId::generate(),
        now,
        now.saturating_add(Duration::from_secs(3600)),
    );
    r.user_id = Some(user.into());
    r
}

/// The system clock, which aborts a registered task at its `trip_at`-th reading: a drop of
/// the caller at a known step of the store's work (the task is cancelled at its next
/// `.await` that is not ready, i.e. the next command sent to the server).
#[derive(Debug, Clone, Default)]
struct TripClock(Arc<Trip>);

#[derive(Debug, Default)]
struct Trip {
    readings: AtomicUsize,
    trip_at: AtomicUsize,
    victim: Mutex<Option<AbortHandle>>,
}

impl TripClock {
    fn arm(&self, trip_at: usize, victim: AbortHandle) {
        self.0.readings.store(0, Ordering::SeqCst);
        self.0.trip_at.store(trip_at, Ordering::SeqCst);
        *self.0.victim.lock().expect("victim") = Some(victim);
    }
}

impl Clock for TripClock {
    fn now(&self) -> Timestamp {
        let n = self.0.readings.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.0.trip_at.load(Ordering::SeqCst) {
            if let Some(victim) = self.0.victim.lock().expect("victim").take() {
                victim.abort();
            }
        }
        Timestamp::now()
    }
}

fn urls(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

/// A store on `backend` taking the cluster path, with its own prefix, and a connection for
/// writing keys directly.
async fn store_on(backend: Backend, clock: TripClock) -> (RedisStore, String, RawConn) {
    let url = harness::url(backend).await.expect("checked");
    let prefix = format!("{}:", harness::unique_name("lease"));
    let builder = RedisStore::builder().prefix(prefix.clone()).clock(clock);
    match backend {
        Backend::RedisCluster => {
            let nodes = urls(&url);
            let store = builder.connect_cluster(&nodes).await.expect("cluster");
            let raw = redis::cluster::ClusterClient::new(nodes)
                .expect("cluster client")
                .get_async_connection()
                .await
                .expect("cluster connection");
            (store, prefix, RawConn::Cluster(raw))
        }
        _ => {
            let store = builder
                .single_key_scripts(true)
                .connect(&url)
                .await
                .expect("connect");
            let raw = redis::Client::open(url.as_str())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            (store, prefix, RawConn::Single(raw))
        }
    }
}

enum RawConn {
    Cluster(redis::cluster_async::ClusterConnection),
    Single(redis::aio::MultiplexedConnection),
}

impl RawConn {
    async fn query(&mut self, cmd: &redis::Cmd) -> redis::Value {
        match self {
            RawConn::Cluster(c) => cmd.query_async(c).await,
            RawConn::Single(c) => cmd.query_async(c).await,
        }
        .expect("query")
    }
}

async fn dropped_under_the_lease(backend: Backend) {
    if !harness::require(Some(backend)).await {
        return;
    }
    let clock = TripClock::default();
    let (store, prefix, mut raw) = store_on(backend, clock.clone()).await;
    let limit = SessionLimit::new(5, LimitPolicy::EvictLeastRecentlySeen);
    let first = record("ada");

    // The caller goes away right after the lease is taken: the store's first clock reading
    // is under the lease (the listing), then it sends the listing — where the caller is
    // dropped.
    let gate = Arc::new(tokio::sync::Notify::new());
    let caller = tokio::spawn({
        let (store, first, gate) = (store.clone(), first.clone(), gate.clone());
        async move {
            gate.notified().await;
            store.create_limited(&first, limit).await
        }
    });
    clock.arm(1, caller.abort_handle());
    gate.notify_one();
    let dropped = caller.await;
    assert!(
        dropped.as_ref().is_err_and(|e| e.is_cancelled()),
        "the caller was dropped under the lease: {dropped:?}"
    );

    // The next limited login of that user goes through at once, not after the lease's 10 s.
    let started = Instant::now();
    let r = store.create_limited(&record("ada"), limit).await;
    let took = started.elapsed();
    assert!(
        r.is_ok() && took < Duration::from_secs(3),
        "the second limited create of the user: {r:?} after {took:?} (a lease left behind?)"
    );
    // The dropped create ran to completion, its lease was released.
    assert!(store.load(&first.id).await.expect("load").is_some());
    let lease = raw
        .query(redis::cmd("EXISTS").arg(format!("{prefix}limit:ada")))
        .await;
    assert_eq!(lease, redis::Value::Int(0), "the lease is gone");
}

async fn busy_lease_fails_before_the_timeout(backend: Backend) {
    if !harness::require(Some(backend)).await {
        return;
    }
    let (store, prefix, mut raw) = store_on(backend, TripClock::default()).await;
    // Another process holds the user's lease (for 60 s).
    raw.query(
        redis::cmd("SET")
            .arg(format!("{prefix}limit:bob"))
            .arg("other")
            .arg("PX")
            .arg(60_000),
    )
    .await;
    let limit = SessionLimit::new(5, LimitPolicy::EvictLeastRecentlySeen);
    let r = tokio::time::timeout(
        DEFAULT_OPERATION_TIMEOUT,
        store.create_limited(&record("bob"), limit),
    )
    .await;
    match r {
        Ok(Err(StoreError::Backend(e))) => {
            assert!(e.to_string().contains("lease"), "{e}");
        }
        other => panic!(
            "expected the store's lease error within {DEFAULT_OPERATION_TIMEOUT:?}: {other:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limited_create_dropped_under_the_lease_does_not_leave_it_behind() {
    dropped_under_the_lease(Backend::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_create_waiting_for_a_held_lease_fails_with_the_stores_error_before_the_timeout() {
    busy_lease_fails_before_the_timeout(Backend::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_scripts_limited_create_dropped_under_the_lease_does_not_leave_it_behind() {
    dropped_under_the_lease(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_scripts_create_waiting_for_a_held_lease_fails_before_the_timeout() {
    busy_lease_fails_before_the_timeout(Backend::Redis).await;
}
