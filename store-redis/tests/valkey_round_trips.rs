//! Commands per operation on Valkey 8.1, which has `SET … IFEQ`: after a load, a save, a
//! touch or a delete is ordinary commands in one round trip, no Lua; the scripts run only
//! where the server's compare-and-set cannot decide (a conflict, a change of user, a
//! create with a user, the user-wide operations). Counted with MONITOR on the server at
//! `VALKEY_URL` and on every master of `VALKEY_CLUSTER_URLS`, filtered by this test's own
//! key prefix. Run with `-- --nocapture` to see them.

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::RedisStore;
use common::{client_commands, urls_of, PrefixRecorder};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn record(user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.data.insert("views".into(), json!(1));
    r.user_id = user.map(str::to_owned);
    r
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The same sequence on a node and on a cluster; `cluster` adds the commands a cluster
/// sends separately (the index lives in another slot), and compares without order.
async fn counts(store: RedisStore, rec: &mut PrefixRecorder, cluster: bool) {
    let label = if cluster { "cluster" } else { "node" };
    // The first operation probes for IFEQ once.
    let warm = record(None);
    store.create(&warm).await.expect("create");
    let seen = client_commands(&rec.take().await);
    assert_eq!(seen, ["SET", "SET"], "{label}: probe, then create");

    macro_rules! expect {
        ($what:expr, $op:expr, $cmds:expr) => {{
            let out = $op.await;
            let seen = client_commands(&rec.take().await);
            eprintln!("{label}: {:<44} {:?}", $what, seen);
            let want: Vec<String> = $cmds.iter().map(|s: &&str| s.to_string()).collect();
            if cluster {
                assert_eq!(sorted(seen), sorted(want), "{label}: {}", $what);
            } else {
                assert_eq!(seen, want, "{label}: {}", $what);
            }
            out
        }};
    }

    let mut r = record(None);
    expect!("create", store.create(&r), ["SET"]).expect("create");
    expect!("load", store.load(&r.id), ["GET"]).expect("load");
    r.data.insert("views".into(), json!(2));
    r.version = expect!("save", store.save(&r), ["SET"]).expect("save");
    let mut stale = r.clone();
    stale.version = 1;
    assert!(expect!(
        "save (conflict: the script decides)",
        store.save(&stale),
        ["EVALSHA"]
    )
    .is_err());
    expect!("load", store.load(&r.id), ["GET"]).expect("load");
    assert!(expect!("touch", store.touch(&r.id, r.expires_at + HOUR), ["SET"]).expect("touch"));
    assert!(expect!("delete", store.delete(&r.id), ["GETDEL"]).expect("delete"));

    // With a user.
    let mut a = record(Some("alice"));
    let b = record(Some("alice"));
    let with_index: &[&str] = if cluster {
        &["EVALSHA", "SADD", "PEXPIREAT", "PEXPIREAT"]
    } else {
        &["EVALSHA"]
    };
    expect!("create with user (script)", store.create(&a), with_index).expect("create");
    expect!("create with user (script)", store.create(&b), with_index).expect("create");
    a.data.insert("views".into(), json!(5));
    // On a node the index is re-asserted in the same round trip, as the script does.
    let same: &[&str] = if cluster {
        &["SET"]
    } else {
        &["SADD", "PEXPIREAT", "PEXPIREAT", "SET"]
    };
    a.version = expect!("save with user, same expiry", store.save(&a), same).expect("save");
    a.expires_at = a.expires_at + HOUR;
    a.version = expect!(
        "save with user, later expiry (+ index)",
        store.save(&a),
        ["SADD", "PEXPIREAT", "PEXPIREAT", "SET"]
    )
    .expect("save");
    a.user_id = Some("bob".into());
    a.version = expect!("save moving user (script)", store.save(&a), with_index).expect("save");
    a.user_id = Some("alice".into());
    a.version =
        expect!("save moving user back (script)", store.save(&a), with_index).expect("save");
    assert!(expect!(
        "touch with user, later (+ index)",
        store.touch(&a.id, a.expires_at + HOUR),
        ["SADD", "PEXPIREAT", "PEXPIREAT", "SET"]
    )
    .expect("touch"));
    let listed: &[&str] = if cluster {
        &["SMEMBERS", "GET", "GET"]
    } else {
        &["EVALSHA"]
    };
    let listed = expect!(
        "list_for_user (2 sessions)",
        store.list_for_user("alice"),
        listed
    )
    .expect("list");
    assert_eq!(listed.len(), 2);
    assert!(expect!("delete with user", store.delete(&b.id), ["GETDEL", "SREM"]).expect("delete"));
    let dfu: &[&str] = if cluster {
        &["SMEMBERS", "EVALSHA", "SREM", "SMEMBERS"]
    } else {
        &["EVALSHA"]
    };
    let n = expect!("delete_for_user", store.delete_for_user("alice", None), dfu).expect("dfu");
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_node_ifeq_round_trips() {
    let Some(urls) = urls_of(Backend::Valkey).await else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("vrt"));
    let mut rec = PrefixRecorder::node(&urls[0], &prefix).await;
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect(&urls[0])
        .await
        .expect("connect");
    counts(store, &mut rec, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster_ifeq_round_trips() {
    let Some(urls) = urls_of(Backend::ValkeyCluster).await else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("vrt"));
    let mut rec = PrefixRecorder::cluster(&urls[0], &prefix).await;
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .connect_cluster(&urls)
        .await
        .expect("connect");
    counts(store, &mut rec, true).await;
}

/// Express-compatible mode (connect-redis's JSON strings): loads are `MULTI GET PTTL EXEC`
/// everywhere; on Valkey the saves after a load (and the first save after a create) are one
/// `SET … IFEQ <the text loaded>`, on Redis 7 the save script.
async fn express_counts(backend: Backend, ifeq: bool) {
    let Some(urls) = urls_of(backend).await else {
        return;
    };
    let prefix = format!("{}:", harness::unique_name("xrt"));
    let mut rec = PrefixRecorder::node(&urls[0], &prefix).await;
    let store = RedisStore::builder()
        .prefix(prefix.clone())
        .express(coatcheck_core::ExpressFormat::new())
        .connect(&urls[0])
        .await
        .expect("connect");
    let label = backend.name();
    let save = if ifeq { "SET" } else { "EVALSHA" };
    let mut steps: Vec<(&str, Vec<String>)> = Vec::new();
    let mut r = record(None);
    store.create(&r).await.expect("create");
    steps.push(("create (+ probe)", client_commands(&rec.take().await)));
    r.data.insert("views".into(), json!(2));
    let first = store.save(&r).await;
    steps.push((
        "first save after create",
        client_commands(&rec.take().await),
    ));
    let loaded = store.load(&r.id).await.expect("load").expect("live");
    steps.push(("load", client_commands(&rec.take().await)));
    let mut r = loaded;
    r.data.insert("views".into(), json!(3));
    r.version = store.save(&r).await.expect("save after load");
    steps.push(("save after load", client_commands(&rec.take().await)));
    r.data.insert("views".into(), json!(4));
    r.version = store.save(&r).await.expect("second save");
    steps.push(("second save", client_commands(&rec.take().await)));
    assert!(store
        .touch(&r.id, r.expires_at + HOUR)
        .await
        .expect("touch"));
    steps.push(("touch", client_commands(&rec.take().await)));
    assert!(store.delete(&r.id).await.expect("delete"));
    steps.push(("delete", client_commands(&rec.take().await)));
    for (what, seen) in &steps {
        eprintln!("{label} express: {what:<26} {seen:?}");
    }
    let want: [(&str, &[&str]); 7] = [
        ("create (+ probe)", &["SET", "SET"]),
        ("first save after create", &[save]),
        // Inside MULTI … EXEC, which name no key and so are not in this prefix's lines.
        ("load", &["GET", "PTTL"]),
        ("save after load", &[save]),
        ("second save", &[save]),
        ("touch", &["EXPIRE"]),
        ("delete", &["DEL"]),
    ];
    for ((what, seen), (_, want)) in steps.iter().zip(want) {
        assert_eq!(seen, want, "{label} express: {what}");
    }
    // The script compares hashes and refuses the first save after a create once (express
    // versions are opaque); the server's compare-and-set compares the text and does not.
    assert_eq!(
        first.is_ok(),
        ifeq,
        "{label}: first save after create: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_express_round_trips() {
    express_counts(Backend::Valkey, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis7_express_round_trips() {
    express_counts(Backend::Redis, false).await;
}
