//! Redis Sentinel and failover: a store that follows the master the sentinels name, and
//! [`Replicated`], which makes a revocation wait for replicas (`WAIT`) so that a failover
//! cannot bring a logged-out session back. Each test starts its own primary, two replicas
//! and three sentinels (`ReplicatedRedis`) on loopback.
//!
//! The history tests measure what a failover does to each configuration — the replicas
//! 250 ms behind when the primary is killed — over the same seeds: without `Replicated`
//! (expected: resurrected sessions and lost writes; the checker must see them, or the
//! fault proves nothing), with revocations acknowledged (expected: no resurrection; saves
//! may still be lost) and with every write acknowledged (expected: no anomaly at all).
//! SECURITY.md quotes their figures.
//!
//! The histories wait for **both** replicas. With one of two, a write can be acknowledged
//! by the replica that is not promoted — and Sentinel does promote unexpectedly: with
//! `down-after-milliseconds` at 1 s, on two loaded cores, a sentinel sometimes started a
//! second failover right after the planned one, promoting the other replica while the new
//! master was taking writes. That is the limit `Replicated` documents.

use std::time::Duration;

use coatcheck_conformance::harness;
use coatcheck_conformance::history::{self, Config, Deployment};
use coatcheck_conformance::servers::{ClusterWithReplicas, ReplicatedRedis, MASTER_NAME};
use coatcheck_core::{Record, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_redis::{BuildError, NotReplicated, RedisStore, Replicated};

const HOUR: Duration = Duration::from_secs(3600);
/// Below the nemesis's replica lag (700 ms), so a revocation in that window fails closed.
const WITHIN: Duration = Duration::from_millis(200);

fn record(user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.user_id = user.map(str::to_owned);
    r
}

async fn sentinel_store(
    group: &ReplicatedRedis,
    prefix: &str,
    replicated: Option<Replicated>,
) -> RedisStore {
    let mut b = RedisStore::builder().prefix(prefix.to_owned());
    if let Some(r) = replicated {
        b = b.replicated(r);
    }
    b.connect_sentinel(group.sentinel_urls(), MASTER_NAME)
        .await
        .expect("connect through the sentinels")
}

fn not_replicated(e: &StoreError) -> Option<NotReplicated> {
    match e {
        StoreError::Backend(b) => b.downcast_ref::<NotReplicated>().copied(),
        _ => None,
    }
}

/// Retries `op` until it succeeds (the requests in flight during a switch fail); panics
/// after 10 s.
async fn eventually<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_master_through_a_failover() {
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("cc-sentinel"));
    let store = sentinel_store(&group, &prefix, Some(Replicated::revocations(2, WITHIN))).await;
    let kept = record(Some("alice"));
    store.create(&kept).await.expect("create");
    let before = group.master_port();

    // Both replicas have it (the create waited for nobody, but nothing is lagging here:
    // a revocation of another session waits for both, and replication is in order).
    let other = record(Some("alice"));
    store.create(&other).await.expect("create");
    assert!(store.delete(&other.id).await.expect("delete, replicated"));

    tokio::task::block_in_place(|| group.fail_over(Duration::ZERO));
    assert_ne!(group.master_port(), before, "a replica was promoted");

    // The same store object reaches the new master: what was replicated is there, and
    // writes go to the new master (not READONLY on a demoted one).
    let loaded = eventually(|| store.load(&kept.id)).await;
    assert_eq!(loaded.map(|r| r.id), Some(kept.id.clone()));
    assert_eq!(store.load(&other.id).await.expect("load"), None);
    let fresh = record(Some("alice"));
    eventually(|| store.create(&fresh)).await;
    assert_eq!(store.list_for_user("alice").await.expect("list").len(), 2);
    assert_eq!(
        store
            .delete_for_user("alice", None)
            .await
            .expect("log out everywhere, replicated"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_replicas_do_not_acknowledge_fails_closed() {
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("cc-sentinel"));
    let store = sentinel_store(&group, &prefix, Some(Replicated::revocations(1, WITHIN))).await;
    let r = record(Some("bob"));
    store.create(&r).await.expect("create");

    let replicas: Vec<u16> = group.replica_ports();
    group.freeze_replicas(true);
    let started = std::time::Instant::now();
    let refused = store.delete(&r.id).await;
    let waited = started.elapsed();
    group.freeze_replicas(false);
    let e = refused.expect_err("a delete no replica acknowledged is an error, not a logout");
    let nr = not_replicated(&e).unwrap_or_else(|| panic!("NotReplicated, got {e}"));
    assert_eq!((nr.wanted(), nr.acknowledged()), (1, 0));
    assert!(waited >= WITHIN, "waited {waited:?}");
    assert_eq!(replicas.len(), 2);

    // Writes that are not revocations do not wait (revocations only).
    let s = record(None);
    group.freeze_replicas(true);
    let created = store.create(&s).await;
    group.freeze_replicas(false);
    created.expect("a create does not wait for replicas");

    // Once the replicas are back, the same revocation succeeds.
    let again = record(Some("bob"));
    store.create(&again).await.expect("create");
    eventually(|| store.delete_for_user("bob", None)).await;
    assert_eq!(store.list_for_user("bob").await.expect("list"), vec![]);
}

/// With `every_write`, create, save and touch each wait too — on Redis 7 (the scripts) and
/// on Valkey 8.1 (`SET … NX` / `SET … IFEQ`, the paths that bypass the scripts).
async fn every_write_waits(group: ReplicatedRedis) {
    let prefix = format!("{}:", harness::unique_name("cc-sentinel"));
    let every = Replicated::revocations(2, WITHIN).every_write();
    let store = sentinel_store(&group, &prefix, Some(every)).await;
    let mut r = record(None);
    store.create(&r).await.expect("create");
    let loaded = store.load(&r.id).await.expect("load").expect("there");
    r.version = loaded.version;

    group.freeze_replicas(true);
    let created = store.create(&record(None)).await;
    let created_user = store.create(&record(Some("carol"))).await;
    r.data.insert("k".into(), 1.into());
    let saved = store.save(&r).await;
    let touched = store.touch(&r.id, r.expires_at + HOUR).await;
    group.freeze_replicas(false);
    for (what, outcome) in [
        ("create", created.map(drop)),
        ("create with a user", created_user.map(drop)),
        ("save", saved.map(drop)),
        ("touch", touched.map(drop)),
    ] {
        let e = outcome.expect_err(what);
        assert!(not_replicated(&e).is_some(), "{what}: {e}");
    }
}

/// A revocation that finds its session already gone — another instance's `DEL`, not
/// replicated yet — must not be acknowledged before that `DEL` is on the replicas. (On
/// Redis 7.0 here its `WAIT` waited even without the store's fence write — the test passed
/// with the fence replaced by a read — so this checks the behaviour, and the fence makes it
/// independent of what the operation's own commands happened to propagate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_of_an_unreplicated_deletion_waits_for_it() {
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("cc-sentinel"));
    let waiting = sentinel_store(&group, &prefix, Some(Replicated::revocations(1, WITHIN))).await;
    let other = sentinel_store(&group, &prefix, None).await;
    let r = record(Some("dora"));
    waiting.create(&r).await.expect("create");
    // Let the replicas have the session (and each client's earlier writes).
    waiting
        .delete(&record(None).id)
        .await
        .expect("a replicated no-op");

    group.freeze_replicas(true);
    let by_other = other.delete(&r.id).await;
    let seen_gone = waiting.delete(&r.id).await;
    let everywhere = waiting.delete_for_user("dora", None).await;
    group.freeze_replicas(false);
    assert_eq!(by_other.ok(), Some(true), "the other instance deleted it");
    for (what, outcome) in [
        ("delete", seen_gone.map(drop)),
        ("delete_for_user", everywhere.map(drop)),
    ] {
        let e = outcome.expect_err(what);
        assert!(not_replicated(&e).is_some(), "{what}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_waits_when_asked() {
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    every_write_waits(group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_waits_when_asked_valkey() {
    let Some(group) = ReplicatedRedis::valkey() else {
        return;
    };
    every_write_waits(group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sentinel_configurations_are_errors_that_say_which() {
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    let e = RedisStore::builder()
        .connect_sentinel(group.sentinel_urls(), "no-such-master")
        .await
        .expect_err("an unknown master name");
    assert!(
        matches!(&e, BuildError::Sentinel { master, .. } if master == "no-such-master"),
        "{e}"
    );
    assert!(e.to_string().contains("no-such-master"), "{e}");

    let e = RedisStore::builder()
        .replicated(Replicated::revocations(3, WITHIN))
        .connect_sentinel(group.sentinel_urls(), MASTER_NAME)
        .await
        .expect_err("more replicas than exist");
    assert!(
        matches!(
            e,
            BuildError::NotEnoughReplicas {
                wanted: 3,
                connected: 2
            }
        ),
        "{e}"
    );
    let e = RedisStore::builder()
        .replicated(Replicated::revocations(1, WITHIN))
        .connect_cluster([group.master_url()])
        .await
        .expect_err("WAIT on a cluster connection");
    assert!(
        matches!(e, BuildError::ReplicationUnsupported { .. }),
        "{e}"
    );

    let none: [&str; 0] = [];
    let e = RedisStore::builder()
        .connect_sentinel(none, MASTER_NAME)
        .await
        .expect_err("no sentinels");
    assert!(matches!(e, BuildError::NoSentinels), "{e}");

    // A single node with no replicas: asking for one is refused at build, not at the first
    // logout.
    let e = RedisStore::builder()
        .replicated(Replicated::revocations(1, WITHIN))
        .connect(&group.replica_urls()[0])
        .await
        .map(drop)
        .expect_err("a replica has no replicas of its own");
    assert!(
        matches!(
            e,
            BuildError::NotEnoughReplicas {
                wanted: 1,
                connected: 0
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_manager_of_yours_cannot_wait_for_replicas() {
    let client = redis::Client::open("redis://127.0.0.1:1").expect("url");
    let manager = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .expect("lazy manager");
    let e = RedisStore::builder()
        .replicated(Replicated::revocations(1, WITHIN))
        .connection_manager(manager)
        .expect_err("a manager may reconnect between the write and its WAIT");
    assert!(
        matches!(e, BuildError::ReplicationUnsupported { .. }),
        "{e}"
    );
}

/// The store contract holds with every write waiting for both replicas: the conformance
/// cases that write, revoke, cap and list, each on a fresh prefix of one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_with_every_write_replicated() {
    use coatcheck_conformance::{cases, devices};
    let Some(group) = ReplicatedRedis::redis() else {
        return;
    };
    let every = Some(Replicated::revocations(2, Duration::from_secs(1)).every_write());
    macro_rules! run {
        ($($case:path),* $(,)?) => {$(
            let prefix = format!("{}:", harness::unique_name("cc-contract"));
            $case(sentinel_store(&group, &prefix, every).await).await;
        )*};
    }
    run!(
        cases::create_then_load_returns_every_field,
        cases::create_of_taken_id_is_id_taken_and_keeps_original,
        cases::save_with_current_version_increments_it,
        cases::save_with_stale_version_is_conflict,
        cases::save_after_delete_is_not_found_and_does_not_resurrect,
        cases::delete_version_is_compare_and_delete,
        cases::touch_moves_expiry_only,
        cases::touch_of_missing_or_expired_is_false,
        cases::delete_is_true_then_false,
        cases::list_for_user_returns_only_live_sessions_of_that_user,
        cases::delete_for_user_removes_all_or_all_but_one,
        cases::save_moving_user_id_moves_index,
        cases::concurrent_counter_increments_are_exact,
        devices::device_and_last_seen_round_trip,
        devices::delete_device_revokes_only_the_users_own,
        devices::session_limit_refuses_at_the_limit,
        devices::session_limit_evicts_the_least_recently_seen,
        devices::concurrent_limited_creates_never_pass_the_limit,
    );
}

/// `n` clients through the sentinels, as app instances behind a load balancer.
async fn deployment(
    group: &ReplicatedRedis,
    replicated: Option<Replicated>,
    n: usize,
) -> Deployment {
    let prefix = format!("{}:", harness::unique_name("cc-failover"));
    // The previous history's failover may still be settling (a replica resyncing).
    tokio::task::block_in_place(|| group.settle());
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(sentinel_store(group, &prefix, replicated).await);
    }
    Deployment::instances(stores)
}

fn failover_config(label: &str, seeds: usize) -> Option<(Config, std::sync::Arc<ReplicatedRedis>)> {
    failover_config_on(ReplicatedRedis::redis(), label, seeds)
}

fn failover_config_on(
    group: Option<ReplicatedRedis>,
    label: &str,
    seeds: usize,
) -> Option<(Config, std::sync::Arc<ReplicatedRedis>)> {
    let group = std::sync::Arc::new(group?);
    let config = Config::new(label).seeds(seeds).faults(group.clone());
    Some((config, group))
}

/// Without `Replicated`: a failover loses what the replicas had not received — sessions
/// revoked before it come back (`revoked`), acknowledged writes vanish. The checker must
/// see it; the count is the figure SECURITY.md gives for "no durability".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_unreplicated() {
    let Some((config, group)) = failover_config("failover_unreplicated", 6) else {
        return;
    };
    let found = history::survey(config, |n| deployment(&group, None, n)).await;
    eprintln!(
        "failover without Replicated: {} histories, {} failovers, anomalies {:?}",
        found.histories, found.faults, found.anomalies
    );
    assert!(found.faults > 0, "no failover was injected");
    assert!(
        found.count("revoked") > 0 && found.total() > found.count("revoked"),
        "a failover with the replicas behind must resurrect revoked sessions and lose writes; \
         the checker saw {:?}",
        found.anomalies
    );
}

/// `Replicated::revocations`: no revoked session comes back; saves may still be lost (they
/// do not wait), which is what the option says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_revocations() {
    let Some((config, group)) = failover_config("failover_revocations", 6) else {
        return;
    };
    let r = Replicated::revocations(2, WITHIN);
    let found = history::survey(config, |n| deployment(&group, Some(r), n)).await;
    eprintln!(
        "failover with Replicated::revocations: {} histories, {} failovers, anomalies {:?}",
        found.histories, found.faults, found.anomalies
    );
    assert!(found.faults > 0, "no failover was injected");
    assert_eq!(
        found.count("revoked"),
        0,
        "a revocation acknowledged by a replica came back:\n{}",
        found.first_report
    );
    assert_eq!(found.count("credential"), 0, "{}", found.first_report);
}

/// `Replicated::revocations(..).every_write()`: a failover loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_every_write() {
    let Some((config, group)) = failover_config("failover_every_write", 6) else {
        return;
    };
    let r = Replicated::revocations(2, WITHIN).every_write();
    let found = history::survey(config, |n| deployment(&group, Some(r), n)).await;
    nothing_lost(&found);
}

/// No anomaly at all, and the failovers really happened (a nemesis narrowed by
/// `COATCHECK_NEMESIS` to other kinds would inject none, and prove nothing).
fn nothing_lost(found: &history::Survey) {
    assert!(found.faults > 0, "no failover was injected");
    assert_eq!(found.total(), 0, "{}", found.first_report);
}

/// Valkey 8.1 under Sentinel, every write acknowledged: its `SET … IFEQ` path compares the
/// bytes each client remembers, and after a failover the new master may hold other bytes
/// (a write that failed closed reached only the old one): a mismatch must be a conflict
/// the middleware resolves by reloading, never a lost or doubled write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_valkey_every_write() {
    let Some((config, group)) =
        failover_config_on(ReplicatedRedis::valkey(), "failover_valkey_every_write", 4)
    else {
        return;
    };
    let r = Replicated::revocations(2, WITHIN).every_write();
    let found = history::survey(config, |n| deployment(&group, Some(r), n)).await;
    nothing_lost(&found);
}

/// Redis Cluster with replicas (3 masters + 3 replicas) through a coordinated
/// `CLUSTER FAILOVER` and a killed master: the cluster connection follows `MOVED`/`ASK` and
/// the new topology; requests fail only while the switch is under way, none once the cluster
/// is settled again, and every session created before is still there with its user index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_replicas_through_failovers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let Some(cluster) = ClusterWithReplicas::redis() else {
        return;
    };
    let store = Arc::new(
        RedisStore::builder()
            .prefix(format!("{}:", harness::unique_name("cc-cluster")))
            .operation_timeout(Some(Duration::from_secs(2)))
            .connect_cluster(cluster.urls())
            .await
            .expect("connect to the cluster"),
    );
    let mut ids = Vec::new();
    for i in 0..120 {
        let r = record(Some(&format!("user-{}", i % 12)));
        store.create(&r).await.expect("create");
        ids.push(r.id);
    }
    let ids = Arc::new(ids);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut traffic = Vec::new();
    for t in 0..4usize {
        let (store, ids, stop, ok, failed) = (
            store.clone(),
            ids.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        traffic.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % ids.len();
                let r = match store.load(&ids[i]).await {
                    Ok(Some(mut r)) => {
                        r.data.insert("n".into(), (i as u64).into());
                        store.save(&r).await.map(drop)
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) | Err(StoreError::Conflict) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    /// After a switch: how long until a full pass over every session (and a user's index)
    /// succeeds, then a second full pass without one error.
    async fn recovered(store: &RedisStore, ids: &[SessionId]) -> Duration {
        let started = std::time::Instant::now();
        loop {
            let mut clean = true;
            for id in ids {
                match store.load(id).await {
                    Ok(loaded) => assert!(
                        loaded.is_some(),
                        "a session created before the failover is gone"
                    ),
                    Err(_) => clean = false,
                }
            }
            if clean {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the store did not recover within 15 s of the cluster settling"
            );
        }
        let took = started.elapsed();
        for id in ids {
            store
                .load(id)
                .await
                .expect("no error once recovered")
                .expect("still there");
        }
        assert_eq!(store.list_for_user("user-3").await.expect("list").len(), 10);
        took
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let promoted = tokio::task::block_in_place(|| cluster.failover_one());
    let first = recovered(&store, &ids).await;
    let switched = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let killed = tokio::task::block_in_place(|| cluster.kill_a_master());
    let second = recovered(&store, &ids).await;
    let after = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.expect("traffic task");
    }
    eprintln!(
        "cluster failovers: CLUSTER FAILOVER to :{promoted}: {} ok, {} failed, recovered {first:?} after the cluster settled; \
         master :{killed} killed: {} ok, {} failed, recovered {second:?} after",
        switched.0 - before.0,
        switched.1 - before.1,
        after.0 - switched.0,
        after.1 - switched.1,
    );
    assert!(
        after.0 > switched.0 && switched.0 > before.0,
        "traffic went on"
    );
}
