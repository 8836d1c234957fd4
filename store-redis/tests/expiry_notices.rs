//! The opt-in expiry stream from keyspace notifications, on a private `redis-server` and a
//! private `valkey-server` (the test changes `notify-keyspace-events`, so not on a shared
//! server), and refused on a cluster node.

mod common;

use std::time::Duration;

use coatcheck_core::{ExpiryNotice, Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::{NoticeError, Notifications, RedisStore};
use common::{urls_of, PrivateRedis};

const HOUR: Duration = Duration::from_secs(3600);

fn expiring_in(ms: u64, user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + Duration::from_millis(ms));
    r.user_id = user.map(str::to_owned);
    r
}

async fn flags(url: &str) -> String {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await
        .expect("CONFIG GET");
    got.get(1).cloned().unwrap_or_default()
}

async fn announces_expired_sessions(server: PrivateRedis) {
    let url = server.url().to_owned();
    let store = RedisStore::builder()
        .prefix("notice:")
        .connect(&url)
        .await
        .expect("connect");
    let other = RedisStore::builder()
        .prefix("notice-other:")
        .connect(&url)
        .await
        .expect("connect");

    // Off by default: refused as configured, enabled on request (adding `Ex`, keeping what
    // was there).
    assert_eq!(flags(&url).await, "");
    match store
        .expiry_notices(&url, Notifications::AsConfigured)
        .await
    {
        Err(NoticeError::NotificationsOff(f)) => assert_eq!(f, ""),
        other => panic!("expected NotificationsOff, got {:?}", other.map(|_| ())),
    }
    let mut notices = store
        .expiry_notices(&url, Notifications::EnableIfOff)
        .await
        .expect("notices");
    let now_flags = flags(&url).await;
    assert!(
        now_flags.contains('E') && now_flags.contains('x'),
        "{now_flags}"
    );

    // A signed-in session (its user index key expires with it), a live one, and another
    // store's: only this store's expiring session is announced.
    let short = expiring_in(300, Some("ada"));
    store.create(&short).await.expect("create");
    store
        .create(&Record::new(
            SessionId::generate(),
            Timestamp::now(),
            Timestamp::now() + HOUR,
        ))
        .await
        .expect("create live");
    other
        .create(&expiring_in(200, None))
        .await
        .expect("create other");

    let got = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a notice within 10 s");
    assert_eq!(got, Some(ExpiryNotice::Expired(short.id.clone())));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        notices.try_recv().is_err(),
        "only this store's session keys are announced"
    );

    // Configured already: `AsConfigured` now works.
    let mut again = store
        .expiry_notices(&url, Notifications::AsConfigured)
        .await
        .expect("notices, as configured");

    // The server goes away: the stream ends instead of hanging or panicking.
    server.kill();
    let end = tokio::time::timeout(Duration::from_secs(10), again.recv())
        .await
        .expect("the stream ends within 10 s");
    assert_eq!(end, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_announces_expired_sessions() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    announces_expired_sessions(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_announces_expired_sessions() {
    let Some(server) = PrivateRedis::valkey() else {
        return;
    };
    announces_expired_sessions(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_is_refused() {
    let Some(urls) = urls_of(coatcheck_conformance::Backend::RedisCluster).await else {
        return;
    };
    let store = RedisStore::builder()
        .connect_cluster(&urls)
        .await
        .expect("connect");
    match store
        .expiry_notices(&urls[0], Notifications::AsConfigured)
        .await
    {
        Err(NoticeError::Cluster) => {}
        other => panic!("expected Cluster, got {:?}", other.map(|_| ())),
    }
}
