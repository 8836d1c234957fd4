//! The per-user lease of `create_limited` (issue 25, item 10): a caller dropped while the
//! lease is held (a timeout, a client gone) must not leave it behind for its 10 s, and a
//! create that cannot get the lease fails with the store's own error before the caller's
//! timeout (coatcheck's default `store_timeout`, 5 s) cuts it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{
    Clock, LimitPolicy, Record, SessionId, SessionLimit, SessionStore, StoreError, Timestamp,
};
use coatcheck_mongo::MongoStore;
use mongodb::bson::doc;
use tokio::task::AbortHandle;

/// coatcheck's default `store_timeout`: the bound the layer puts on one store call.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

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

async fn store_with(clock: TripClock) -> coatcheck_conformance::kit::Wrapped<common::Scratch> {
    let url = harness::url(Backend::Mongo).await.expect("checked");
    let client = common::client(&url).await;
    let store = MongoStore::builder(&client, common::DB)
        .collection(harness::unique_name("lease"))
        .clock(clock)
        .build_with_indexes()
        .await
        .expect("store with indexes");
    coatcheck_conformance::kit::Wrapped(common::Scratch(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_create_dropped_under_the_lease_does_not_leave_it_behind() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    let clock = TripClock::default();
    let scratch = store_with(clock.clone()).await;
    let store = scratch.0.clone();
    let limit = SessionLimit::new(5, LimitPolicy::EvictLeastRecentlySeen);
    let first = record("ada");

    // The caller goes away right after the lease is taken: the store reads its clock once
    // to take the lease, once more under it (the listing), then sends the listing — where
    // the caller is dropped.
    let gate = Arc::new(tokio::sync::Notify::new());
    let caller = tokio::spawn({
        let (store, first, gate) = (store.clone(), first.clone(), gate.clone());
        async move {
            gate.notified().await;
            store.create_limited(&first, limit).await
        }
    });
    clock.arm(2, caller.abort_handle());
    gate.notify_one();
    let dropped = caller.await;
    assert!(
        dropped.as_ref().is_err_and(|e| e.is_cancelled()),
        "the caller was dropped under the lease: {dropped:?}"
    );

    // The next limited login of that user goes through at once, not after the lease's 10 s.
    let started = Instant::now();
    let second = record("ada");
    let r = store.create_limited(&second, limit).await;
    let took = started.elapsed();
    assert!(
        r.is_ok() && took < Duration::from_secs(3),
        "the second limited create of the user: {r:?} after {took:?} (a lease left behind?)"
    );
    // The dropped create ran to completion, its lease was released.
    assert!(store.load(&first.id).await.expect("load").is_some());
    assert!(store
        .collection()
        .find_one(doc! { "_id": "limit:ada" })
        .await
        .expect("find")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_waiting_for_a_held_lease_fails_with_the_stores_error_before_the_store_timeout() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    let scratch = store_with(TripClock::default()).await;
    let store = &scratch.0;
    // Another process holds the user's lease (for 60 s).
    let held_until = mongodb::bson::DateTime::from_millis(
        Timestamp::now()
            .saturating_add(Duration::from_secs(60))
            .as_millis(),
    );
    store
        .collection()
        .insert_one(doc! { "_id": "limit:bob", "expires_at": held_until, "token": "other" })
        .await
        .expect("insert a lease");
    let limit = SessionLimit::new(5, LimitPolicy::EvictLeastRecentlySeen);
    let r = tokio::time::timeout(STORE_TIMEOUT, store.create_limited(&record("bob"), limit)).await;
    match r {
        Ok(Err(StoreError::Backend(e))) => {
            assert!(e.to_string().contains("lease"), "{e}");
        }
        other => panic!("expected the store's lease error within {STORE_TIMEOUT:?}: {other:?}"),
    }
}
