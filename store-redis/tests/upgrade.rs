//! Upgrading from coatcheck-redis 0.1, which kept each session in a hash (fields `v`, `d`,
//! `c`, `e`, `u`), logs nobody out: such records are read, listed, touched, saved and
//! revoked, and their first save moves them to the one-string layout. On Redis 7 (the
//! scripts) and on Valkey 8.1 (the `SET … IFEQ` path, whose fast commands must never be
//! taken for a hash).

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Codec, NativeCodec, Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::RedisStore;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

/// Writes `r` exactly as coatcheck-redis 0.1 did (hash, key TTL, user index set).
async fn write_hash(conn: &mut redis::aio::MultiplexedConnection, store: &RedisStore, r: &Record) {
    let key = store.session_key(&r.id);
    let data = NativeCodec.encode(&r.data).expect("encode");
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key)
        .arg("v")
        .arg(r.version)
        .arg("d")
        .arg(data)
        .arg("c")
        .arg(r.created_at.as_millis())
        .arg("e")
        .arg(r.expires_at.as_millis());
    if let Some(u) = &r.user_id {
        cmd.arg("u").arg(u);
    }
    let _: () = cmd.query_async(conn).await.expect("HSET");
    let _: () = redis::cmd("PEXPIREAT")
        .arg(&key)
        .arg(r.expires_at.as_millis())
        .query_async(conn)
        .await
        .expect("PEXPIREAT");
    if let Some(u) = &r.user_id {
        let _: () = redis::cmd("SADD")
            .arg(store.user_index_key(u))
            .arg(r.id.as_str())
            .query_async(conn)
            .await
            .expect("SADD");
    }
}

async fn key_type(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    redis::cmd("TYPE")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TYPE")
}

async fn check(backend: Backend) {
    if !harness::require(Some(backend)).await {
        return;
    }
    let url = harness::url(backend).await.expect("checked");
    let store = RedisStore::builder()
        .prefix(format!("{}:", harness::unique_name("cc-upgrade")))
        .connect(&url)
        .await
        .expect("connect");
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let now = Timestamp::now();
    let mut old = Vec::new();
    for _ in 0..4 {
        let mut r = Record::new(SessionId::generate(), now, now + HOUR);
        r.data.insert("cart".into(), json!(["tea", 2]));
        r.version = 7;
        r.user_id = Some("alice".into());
        write_hash(&mut conn, &store, &r).await;
        old.push(r);
    }
    let what = backend.name();

    // Read (twice: a load must not move or alter the record) and listed.
    for _ in 0..2 {
        let loaded = store.load(&old[0].id).await.expect("load").expect("live");
        assert_eq!(loaded, old[0], "{what}: a 0.1 record reads back as written");
    }
    assert_eq!(
        key_type(&mut conn, &store.session_key(&old[0].id)).await,
        "hash"
    );
    assert_eq!(store.list_for_user("alice").await.expect("list").len(), 4);

    // Saved: compare-and-set on the old version, then a string.
    let mut r = old[0].clone();
    r.data.insert("cart".into(), json!(["tea", 3]));
    let mut stale = r.clone();
    stale.version = 6;
    assert!(
        store.save(&stale).await.is_err(),
        "{what}: stale version refused"
    );
    r.version = store.save(&r).await.expect("save");
    assert_eq!(r.version, 8);
    assert_eq!(
        key_type(&mut conn, &store.session_key(&r.id)).await,
        "string"
    );
    assert_eq!(store.load(&r.id).await.expect("load"), Some(r.clone()));

    // Touched in place (still a hash until saved), and its new expiry holds.
    let later = now + HOUR + HOUR;
    assert!(store.touch(&old[1].id, later).await.expect("touch"));
    let touched = store.load(&old[1].id).await.expect("load").expect("live");
    assert_eq!(touched.expires_at, later);
    assert_eq!(touched.data, old[1].data);

    // Deleted one by one, and with everything else of the user.
    assert!(store.delete(&old[2].id).await.expect("delete"));
    assert_eq!(store.load(&old[2].id).await.expect("load"), None);
    let n = store
        .delete_for_user("alice", Some(&r.id))
        .await
        .expect("delete_for_user");
    assert_eq!(n, 2, "{what}: the touched hash and the untouched one");
    let left = store.list_for_user("alice").await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, r.id);
}

#[tokio::test]
async fn redis_reads_and_moves_records_of_the_hash_layout() {
    check(Backend::Redis).await;
}

#[tokio::test]
async fn valkey_reads_and_moves_records_of_the_hash_layout() {
    check(Backend::Valkey).await;
}
