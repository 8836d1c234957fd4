//! Round trips per operation, counted with MONITOR: on a private `redis-server` this test
//! starts itself (over the ConnectionManager and over a deadpool pool), and on the cluster
//! at `REDIS_CLUSTER_URLS` (commands filtered by this test's own key prefix).
//!
//! On Valkey 8.1 (`VALKEY_URL`, `VALKEY_CLUSTER_URLS`) the same operations take the
//! `SET … IFEQ` path: no `EVALSHA` where the server's compare-and-set does the work.
//!
//! Run with `-- --nocapture` to see the commands each operation issues.

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::RedisStore;
use common::{client_commands, script_commands, PrefixRecorder, PrivateRedis, Recorder, Seen};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn record(user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.data.insert("views".into(), json!(1));
    r.user_id = user.map(str::to_owned);
    r
}

fn show(what: &str, seen: &[Seen]) {
    eprintln!(
        "{what:<44} client: {:?}  in scripts: {:?}",
        client_commands(seen),
        script_commands(seen)
    );
}

/// Runs every operation once so that scripts are loaded and pooled connections leased.
async fn warm_up(store: &RedisStore) {
    let mut r = record(Some("warm"));
    store.create(&r).await.expect("create");
    store.load(&r.id).await.expect("load");
    r.version = store.save(&r).await.expect("save");
    store
        .touch(&r.id, r.expires_at + HOUR)
        .await
        .expect("touch");
    store.list_for_user("warm").await.expect("list");
    store.delete(&r.id).await.expect("delete");
    store
        .delete_for_user("warm", None)
        .await
        .expect("delete_for_user");
}

async fn single_node_counts(store: RedisStore, rec: &mut Recorder, label: &str) {
    warm_up(&store).await;
    rec.take().await;

    macro_rules! expect {
        ($what:expr, $op:expr, $cmds:expr) => {{
            let out = $op.await;
            let seen = rec.take().await;
            show(&format!("{label}: {}", $what), &seen);
            let want: Vec<&str> = $cmds.to_vec();
            assert_eq!(client_commands(&seen), want, "{label}: {}", $what);
            out
        }};
    }

    // Without a user.
    let mut r = record(None);
    expect!("create", store.create(&r), ["EVALSHA"]).expect("create");
    let loaded = expect!("load", store.load(&r.id), ["GET"]).expect("load");
    assert_eq!(loaded.as_ref(), Some(&r));
    expect!("load (absent)", store.load(&SessionId::generate()), ["GET"]).expect("load");
    r.data.insert("views".into(), json!(2));
    r.version = expect!("save", store.save(&r), ["EVALSHA"]).expect("save");
    let mut stale = r.clone();
    stale.version = 1;
    assert!(expect!("save (conflict)", store.save(&stale), ["EVALSHA"]).is_err());
    assert!(expect!(
        "touch",
        store.touch(&r.id, r.expires_at + HOUR),
        ["EVALSHA"]
    )
    .expect("touch"));
    assert!(expect!("delete", store.delete(&r.id), ["EVALSHA"]).expect("delete"));

    // With a user: the index is kept by the same script.
    let mut a = record(Some("alice"));
    let b = record(Some("alice"));
    expect!("create with user", store.create(&a), ["EVALSHA"]).expect("create");
    expect!("create with user", store.create(&b), ["EVALSHA"]).expect("create");
    a.data.insert("views".into(), json!(5));
    a.version = expect!("save with user", store.save(&a), ["EVALSHA"]).expect("save");
    a.user_id = Some("bob".into());
    a.version = expect!("save moving user", store.save(&a), ["EVALSHA"]).expect("save");
    a.user_id = Some("alice".into());
    a.version = expect!("save moving user back", store.save(&a), ["EVALSHA"]).expect("save");
    assert!(expect!(
        "touch with user",
        store.touch(&a.id, a.expires_at + HOUR),
        ["EVALSHA"]
    )
    .expect("touch"));
    let listed = expect!(
        "list_for_user (2 sessions)",
        store.list_for_user("alice"),
        ["EVALSHA"]
    )
    .expect("list");
    assert_eq!(listed.len(), 2);
    assert!(expect!("delete with user", store.delete(&b.id), ["EVALSHA"]).expect("delete"));
    let n = expect!(
        "delete_for_user",
        store.delete_for_user("alice", None),
        ["EVALSHA"]
    )
    .expect("dfu");
    assert_eq!(n, 1);
    let no: [&str; 0] = [];
    assert_eq!(
        expect!("delete_expired", store.delete_expired(), no).expect("de"),
        0
    );

    // After SCRIPT FLUSH (as after a server restart): NOSCRIPT, SCRIPT LOAD, EVALSHA.
    let c = record(None);
    let mut flush = redis::Client::open(rec.url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut flush)
        .await
        .expect("flush");
    rec.take().await;
    expect!(
        "create after SCRIPT FLUSH",
        store.create(&c),
        ["EVALSHA", "SCRIPT", "EVALSHA"]
    )
    .expect("create");
    expect!(
        "create (script cached again)",
        store.create(&record(None)),
        ["EVALSHA"]
    )
    .expect("create");
}

#[tokio::test(flavor = "current_thread")]
async fn single_node_connection_manager_one_round_trip_each() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let mut rec = Recorder::new(server.url()).await;
    let store = RedisStore::builder()
        .prefix("rt:")
        .connect(server.url())
        .await
        .expect("connect");
    single_node_counts(store, &mut rec, "manager").await;
}

#[tokio::test(flavor = "current_thread")]
async fn single_node_pool_one_round_trip_each() {
    let Some(server) = PrivateRedis::redis() else {
        return;
    };
    let mut rec = Recorder::new(server.url()).await;
    let pool = deadpool_redis::Config::from_url(server.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool");
    let store = RedisStore::builder()
        .prefix("rt:")
        .pool(pool)
        .expect("no conflicting options");
    single_node_counts(store, &mut rec, "pool").await;
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_round_trips() {
    if !harness::require(Some(Backend::RedisCluster)).await {
        return;
    }
    let urls: Vec<String> = harness::url(Backend::RedisCluster)
        .await
        .expect("checked")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let prefix = format!("{}:", harness::unique_name("rt"));
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect_cluster(&urls)
        .await
        .expect("cluster");
    let mut rec = PrefixRecorder::cluster(&urls[0], &prefix).await;
    warm_up(&store).await;
    rec.take().await;

    macro_rules! expect {
        ($what:expr, $op:expr, $cmds:expr) => {{
            let out = $op.await;
            let seen = rec.take().await;
            show(&format!("cluster: {}", $what), &seen);
            let want: Vec<String> = $cmds.iter().map(|s: &&str| s.to_string()).collect();
            assert_eq!(
                sorted(client_commands(&seen)),
                sorted(want),
                "cluster: {}",
                $what
            );
            out
        }};
    }

    let mut r = record(None);
    expect!("create", store.create(&r), ["EVALSHA"]).expect("create");
    expect!("load", store.load(&r.id), ["GET"]).expect("load");
    r.version = expect!("save", store.save(&r), ["EVALSHA"]).expect("save");
    expect!(
        "touch",
        store.touch(&r.id, r.expires_at + HOUR),
        ["EVALSHA"]
    )
    .expect("touch");
    expect!("delete", store.delete(&r.id), ["EVALSHA"]).expect("delete");

    let mut a = record(Some("alice"));
    let b = record(Some("alice"));
    expect!(
        "create with user (+ index)",
        store.create(&a),
        ["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    )
    .expect("create");
    store.create(&b).await.expect("create");
    rec.take().await;
    a.version = expect!("save with user, same expiry", store.save(&a), ["EVALSHA"]).expect("save");
    a.expires_at = a.expires_at + HOUR;
    a.version = expect!(
        "save with user, later expiry (+ index)",
        store.save(&a),
        ["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    )
    .expect("save");
    a.user_id = Some("bob".into());
    a.version = expect!(
        "save moving user (+ index)",
        store.save(&a),
        ["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    )
    .expect("save");
    a.user_id = Some("alice".into());
    a.version = expect!(
        "save moving user back (+ index)",
        store.save(&a),
        ["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    )
    .expect("save");
    expect!(
        "touch with user, later (+ index)",
        store.touch(&a.id, a.expires_at + HOUR),
        ["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    )
    .expect("touch");
    expect!(
        "touch with user, earlier",
        store.touch(&a.id, a.expires_at),
        ["EVALSHA"]
    )
    .expect("touch");
    // bob's set still names `a` (pruned on read): SMEMBERS, one GET, SREM of the stale id.
    let bobs = expect!(
        "list_for_user (1 stale)",
        store.list_for_user("bob"),
        ["SMEMBERS", "GET", "SREM"]
    )
    .expect("list");
    assert!(bobs.is_empty());
    let listed = expect!(
        "list_for_user (2 sessions)",
        store.list_for_user("alice"),
        ["SMEMBERS", "GET", "GET"]
    )
    .expect("list");
    assert_eq!(listed.len(), 2);
    expect!(
        "delete with user (+ SREM)",
        store.delete(&b.id),
        ["EVALSHA", "SREM"]
    )
    .expect("delete");
    let n = expect!(
        "delete_for_user (1 session)",
        store.delete_for_user("alice", None),
        // The second SMEMBERS confirms nothing was added meanwhile (a concurrent rotation).
        ["SMEMBERS", "EVALSHA", "SREM", "SMEMBERS"]
    )
    .expect("dfu");
    assert_eq!(n, 1);
}
