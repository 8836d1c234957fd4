//! The store's own tests: eviction order, the index under eviction, sweeping.

use super::*;
use coatcheck_core::ManualClock;

fn rec(now: Timestamp, ttl_ms: u64) -> Record {
    Record::new(
        SessionId::generate(),
        now,
        now + Duration::from_millis(ttl_ms),
    )
}

#[tokio::test]
async fn capacity_evicts_expired_first_then_soonest_to_expire() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = MemoryStore::builder()
        .capacity(4)
        .clock(clock.clone())
        .build();
    let now = clock.now();
    let dying = rec(now, 10);
    let soon = rec(now, 1_000);
    let later: Vec<Record> = (0..2).map(|i| rec(now, 10_000 + i)).collect();
    for r in [&dying, &soon, &later[0], &later[1]] {
        store.create(r).await.unwrap();
    }
    clock.advance(Duration::from_millis(20)); // `dying` is now expired
    let a = rec(clock.now(), 50_000);
    store.create(&a).await.unwrap();
    assert_eq!(store.evictions(), 0, "the expired one made room");
    assert_eq!(store.len(), 4);
    let b = rec(clock.now(), 50_000);
    store.create(&b).await.unwrap();
    assert_eq!(store.evictions(), 1);
    assert!(
        store.load(&soon.id).await.unwrap().is_none(),
        "soonest to expire went"
    );
    for r in [&later[0], &later[1], &a, &b] {
        assert!(store.load(&r.id).await.unwrap().is_some());
    }
    assert_eq!(store.len(), 4);
}

#[tokio::test]
async fn anonymous_sessions_are_evicted_before_signed_in_ones() {
    let store = MemoryStore::builder().capacity(3).build();
    let now = Timestamp::now();
    let mut user = rec(now, 1_000);
    user.user_id = Some("u".into());
    store.create(&user).await.unwrap();
    let anon = [rec(now, 60_000), rec(now, 90_000)];
    for r in &anon {
        store.create(r).await.unwrap();
    }
    store.create(&rec(now, 120_000)).await.unwrap();
    assert_eq!(store.evictions(), 1);
    assert!(
        store.load(&user.id).await.unwrap().is_some(),
        "signed in, kept although it expires soonest"
    );
    assert!(store.load(&anon[0].id).await.unwrap().is_none());
    assert!(store.load(&anon[1].id).await.unwrap().is_some());
}

#[tokio::test]
async fn eviction_keeps_the_user_index_consistent() {
    let store = MemoryStore::builder().capacity(2).build();
    let now = Timestamp::now();
    let mut first = rec(now, 1_000);
    first.user_id = Some("u".into());
    store.create(&first).await.unwrap();
    let mut second = rec(now, 60_000);
    second.user_id = Some("v".into());
    store.create(&second).await.unwrap();
    store.create(&rec(now, 60_000)).await.unwrap();
    assert!(store.list_for_user("u").await.unwrap().is_empty());
    assert_eq!(store.list_for_user("v").await.unwrap().len(), 1);
    assert_eq!(store.inner.user_shard("u").get("u").map(|s| s.len()), None);
}

#[tokio::test]
async fn expired_never_returned_before_sweep_and_sweep_frees_memory() {
    let clock = ManualClock::new(Timestamp::from_millis(0));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    for _ in 0..100 {
        store.create(&rec(clock.now(), 100)).await.unwrap();
    }
    let keep = rec(clock.now(), 10_000);
    store.create(&keep).await.unwrap();
    clock.advance(Duration::from_millis(100));
    assert_eq!(store.len(), 101);
    assert!(store.load(&keep.id).await.unwrap().is_some());
    assert_eq!(store.delete_expired().await.unwrap(), 100);
    assert_eq!(store.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn background_sweeper_runs_and_stops_with_the_store() {
    let clock = ManualClock::new(Timestamp::from_millis(0));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    store.create(&rec(clock.now(), 10)).await.unwrap();
    let handle = store.spawn_sweeper(Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.len(), 0);
    drop(store);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(handle.is_finished());
}
