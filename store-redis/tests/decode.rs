//! Values at a session key that are not coatcheck records: `Decode`, never a panic, never
//! an overwrite by `create`. Runs against `REDIS_URL` (or a testcontainers Redis) with a
//! prefix of its own.

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Codec, NativeCodec, Record, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_redis::RedisStore;
use redis::aio::MultiplexedConnection;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

async fn setup() -> Option<(RedisStore, MultiplexedConnection)> {
    if !harness::require(Some(Backend::Redis)).await {
        return None;
    }
    let url = harness::url(Backend::Redis).await.expect("checked");
    let store = RedisStore::builder()
        .prefix(format!("{}:", harness::unique_name("decode")))
        .connect(&url)
        .await
        .expect("connect");
    let raw = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    Some((store, raw))
}

fn is_decode<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Decode(e)) => eprintln!("{what}: {e}"),
        other => panic!("{what}: expected Decode, got {other:?}"),
    }
}

async fn hset(raw: &mut MultiplexedConnection, key: &str, fields: &[(&str, Vec<u8>)]) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (f, v) in fields {
        cmd.arg(*f).arg(v.as_slice());
    }
    let _: i64 = cmd.query_async(raw).await.expect("HSET");
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(60_000)
        .query_async(raw)
        .await
        .expect("PEXPIRE");
}

fn ms(t: Timestamp) -> Vec<u8> {
    t.as_millis().to_string().into_bytes()
}

fn good_data() -> Vec<u8> {
    let mut d = coatcheck_core::Data::new();
    d.insert("views".into(), json!(1));
    NativeCodec.encode(&d).expect("encode")
}

fn record_for(id: &SessionId) -> Record {
    let now = Timestamp::now();
    Record::new(id.clone(), now, now + HOUR)
}

#[tokio::test]
async fn a_plain_string_at_the_key_is_decode_and_is_never_overwritten() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    let id = SessionId::generate();
    let key = store.session_key(&id);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a session")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .expect("SET");

    is_decode("load", store.load(&id).await);
    is_decode("create", store.create(&record_for(&id)).await);
    is_decode("save", store.save(&record_for(&id)).await);
    is_decode("touch", store.touch(&id, Timestamp::now() + HOUR).await);
    let still: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("GET");
    assert_eq!(still, "not a session");
    // delete clears whatever is at the key, but it was not a live session.
    assert!(!store.delete(&id).await.expect("delete"));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0);
    store
        .create(&record_for(&id))
        .await
        .expect("the id is usable again");
}

#[tokio::test]
async fn other_value_types_at_the_key_are_decode() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    for (i, cmd) in ["RPUSH", "SADD"].into_iter().enumerate() {
        let id = SessionId::generate();
        let key = store.session_key(&id);
        let _: i64 = redis::cmd(cmd)
            .arg(&key)
            .arg("x")
            .query_async(&mut raw)
            .await
            .expect("write");
        is_decode(&format!("load over {cmd} ({i})"), store.load(&id).await);
        is_decode(
            &format!("create over {cmd}"),
            store.create(&record_for(&id)).await,
        );
        is_decode(
            &format!("save over {cmd}"),
            store.save(&record_for(&id)).await,
        );
        assert!(!store.delete(&id).await.expect("delete"));
    }
}

#[tokio::test]
async fn a_hash_with_a_garbage_data_field_is_decode() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    let id = SessionId::generate();
    let now = Timestamp::now();
    let key = store.session_key(&id);
    for garbage in [&b"\xff garbage"[..], b"", b"\x01\xc1", b"{not json"] {
        hset(
            &mut raw,
            &key,
            &[
                ("v", b"1".to_vec()),
                ("d", garbage.to_vec()),
                ("c", ms(now)),
                ("e", ms(now + HOUR)),
            ],
        )
        .await;
        is_decode("load with garbage data", store.load(&id).await);
    }
    // Expired garbage is simply not there: expiry is checked before the data is decoded.
    hset(&mut raw, &key, &[("e", ms(now - HOUR))]).await;
    assert!(store.load(&id).await.expect("load").is_none());
}

#[tokio::test]
async fn a_hash_missing_or_mangling_fields_is_decode() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    let now = Timestamp::now();
    let full = || {
        vec![
            ("v", b"1".to_vec()),
            ("d", good_data()),
            ("c", ms(now)),
            ("e", ms(now + HOUR)),
        ]
    };

    // Each required field missing in turn.
    for missing in ["v", "d", "c", "e"] {
        let id = SessionId::generate();
        let fields: Vec<_> = full().into_iter().filter(|(f, _)| *f != missing).collect();
        hset(&mut raw, &store.session_key(&id), &fields).await;
        is_decode(&format!("load without {missing}"), store.load(&id).await);
    }
    // Only foreign fields.
    let id = SessionId::generate();
    hset(
        &mut raw,
        &store.session_key(&id),
        &[("foo", b"bar".to_vec())],
    )
    .await;
    is_decode("load of a foreign hash", store.load(&id).await);
    is_decode(
        "create over a foreign hash",
        store.create(&record_for(&id)).await,
    );
    is_decode("save of a foreign hash", store.save(&record_for(&id)).await);
    is_decode(
        "touch of a foreign hash",
        store.touch(&id, now + HOUR).await,
    );
    assert!(!store.delete(&id).await.expect("delete"));

    // Fields that are not numbers / not UTF-8.
    for (field, bad) in [
        ("v", b"one".to_vec()),
        ("c", b"yesterday".to_vec()),
        ("e", b"soon".to_vec()),
        ("v", b"-1".to_vec()),
        ("u", b"\xff\xfe".to_vec()),
    ] {
        let id = SessionId::generate();
        let mut fields = full();
        fields.retain(|(f, _)| *f != field);
        fields.push((field, bad));
        hset(&mut raw, &store.session_key(&id), &fields).await;
        is_decode(&format!("load with bad {field}"), store.load(&id).await);
        if field == "v" || field == "e" {
            is_decode(
                &format!("save with bad {field}"),
                store.save(&record_for(&id)).await,
            );
        }
        if field == "e" {
            is_decode("touch with bad e", store.touch(&id, now + HOUR).await);
        }
    }
}

#[tokio::test]
async fn a_user_index_of_the_wrong_type_is_decode() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    let key = store.user_index_key("mallory");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .expect("SET");
    is_decode("list_for_user", store.list_for_user("mallory").await);
    is_decode(
        "delete_for_user",
        store.delete_for_user("mallory", None).await,
    );
}

#[tokio::test]
async fn stale_index_members_are_pruned_when_read() {
    let Some((store, mut raw)) = setup().await else {
        return;
    };
    let now = Timestamp::now();
    let mut live = Record::new(SessionId::generate(), now, now + HOUR);
    live.user_id = Some("pat".into());
    store.create(&live).await.expect("create");
    let index = store.user_index_key("pat");
    // A member whose session is gone, one that is not even a session id, one whose session
    // now belongs to someone else.
    let mut other = Record::new(SessionId::generate(), now, now + HOUR);
    other.user_id = Some("sam".into());
    store.create(&other).await.expect("create");
    let gone = SessionId::generate();
    let _: i64 = redis::cmd("SADD")
        .arg(&index)
        .arg(gone.as_str())
        .arg("not an id!")
        .arg(other.id.as_str())
        .query_async(&mut raw)
        .await
        .expect("SADD");
    let listed = store.list_for_user("pat").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, live.id);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&index)
        .query_async(&mut raw)
        .await
        .expect("SMEMBERS");
    assert_eq!(members, vec![live.id.as_str().to_owned()]);
    // The index set expires with its sessions.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&index)
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 3_600_000 + 1_000, "index ttl {ttl}");
    assert_eq!(store.delete_for_user("sam", None).await.expect("dfu"), 1);
    assert!(store.load(&live.id).await.expect("load").is_some());
}
