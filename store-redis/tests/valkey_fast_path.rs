//! The `SET … IFEQ` path (Valkey 8.1) decides exactly as the scripts would, also where its
//! remembered bytes or the user index went wrong behind its back (review findings):
//!
//! - a save or touch after a load puts the session back into its user's index when the
//!   member was lost (evicted, pruned by a process whose clock runs ahead, a failed cluster
//!   index write), as the script path does — otherwise "log out everywhere" misses it;
//! - `delete` answers from the value it removed, not from stale remembered bytes.

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{ManualClock, Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::RedisStore;
use common::urls_of;

const HOUR: Duration = Duration::from_secs(3600);

async fn store(urls: &[String], prefix: &str, clock: Option<ManualClock>) -> RedisStore {
    let mut b = RedisStore::builder().prefix(prefix);
    if let Some(c) = clock {
        b = b.clock(c);
    }
    if urls.len() > 1 {
        b.connect_cluster(urls).await.expect("connect")
    } else {
        b.connect(&urls[0]).await.expect("connect")
    }
}

async fn srem(urls: &[String], store: &RedisStore, user: &str, id: &SessionId) {
    let key = store.user_index_key(user);
    let n: i64 = if urls.len() > 1 {
        let client = redis::cluster::ClusterClient::new(urls.to_vec()).expect("client");
        let mut c = client.get_async_connection().await.expect("cluster");
        redis::cmd("SREM")
            .arg(&key)
            .arg(id.as_str())
            .query_async(&mut c)
            .await
            .expect("SREM")
    } else {
        let mut c = redis::Client::open(urls[0].as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        redis::cmd("SREM")
            .arg(&key)
            .arg(id.as_str())
            .query_async(&mut c)
            .await
            .expect("SREM")
    };
    assert_eq!(n, 1, "the member was there to lose");
}

async fn index_comes_back(backend: Backend) {
    let Some(urls) = urls_of(backend).await else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("cc-fast"));
    let store = store(&urls, &prefix, None).await;
    let now = Timestamp::now();
    for touch in [false, true] {
        let mut r = Record::new(SessionId::generate(), now, now + HOUR);
        r.user_id = Some("alice".into());
        store.create(&r).await.expect("create");
        let loaded = store.load(&r.id).await.expect("load").expect("live");
        srem(&urls, &store, "alice", &r.id).await;
        assert!(store.list_for_user("alice").await.expect("list").is_empty());
        // The next write after a load (a later expiry, as a rolling timeout does).
        if touch {
            assert!(store.touch(&r.id, now + HOUR + HOUR).await.expect("touch"));
        } else {
            let mut r = loaded;
            r.expires_at = now + HOUR + HOUR;
            r.data.insert("k".into(), 1.into());
            store.save(&r).await.expect("save");
        }
        let listed = store.list_for_user("alice").await.expect("list");
        assert_eq!(
            listed.len(),
            1,
            "{}: {} after a load puts the session back into its user's index",
            backend.name(),
            if touch { "touch" } else { "save" }
        );
        assert_eq!(store.delete_for_user("alice", None).await.expect("dfu"), 1);
        assert_eq!(store.load(&r.id).await.expect("load"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_fast_writes_restore_a_lost_index_member() {
    index_comes_back(Backend::Valkey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster_fast_writes_restore_a_lost_index_member() {
    index_comes_back(Backend::ValkeyCluster).await;
}

/// Process A loads (remembering expiry e1), process B extends the session to e2; at a time
/// between e1 and e2, A's delete removes a live session and must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_delete_answers_from_the_removed_value() {
    let Some(urls) = urls_of(Backend::Valkey).await else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("cc-fast"));
    let now = Timestamp::now();
    let clock = ManualClock::new(now);
    let a = store(&urls, &prefix, Some(clock.clone())).await;
    let b = store(&urls, &prefix, None).await;
    let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(10));
    r.user_id = Some("bob".into());
    a.create(&r).await.expect("create");
    a.load(&r.id).await.expect("load").expect("live");
    assert!(b.touch(&r.id, now + HOUR).await.expect("touch elsewhere"));
    clock.advance(Duration::from_secs(20));
    assert!(
        a.delete(&r.id).await.expect("delete"),
        "a live session was removed"
    );
    assert!(b.list_for_user("bob").await.expect("list").is_empty());
}
