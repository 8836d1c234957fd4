//! MongoDB-specific tests beyond the conformance suite: indexes, the server's own TTL
//! removal, the document layout, wrongly shaped documents, the store's clock, and bounded
//! failures.

mod common;

use std::time::{Duration, Instant};

use coatcheck_conformance::harness;
use coatcheck_core::{Clock, ManualClock, Record, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_mongo::{BuildError, MongoStore};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use serde_json::json;

use common::{scratch, Scratch, DB, UNREACHABLE_URL};

const HOUR: Duration = Duration::from_secs(3600);

/// One way of spoiling a stored document.
type Spoil = Box<dyn Fn(&mut Document)>;

fn live_record(user: Option<&str>) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.data.insert("views".into(), json!(1));
    r.user_id = user.map(str::to_owned);
    r
}

async fn raw(store: &Scratch, id: &SessionId) -> Option<Document> {
    store
        .0
        .collection()
        .find_one(doc! { "_id": id.as_str() })
        .await
        .expect("raw find")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_a_ttl_index_and_a_user_index_and_ensuring_is_idempotent() {
    if common::url().await.is_none() {
        return;
    }
    let store = scratch().await;
    // Once more on top of the builder's: an identical index is no error.
    store.0.ensure_indexes().await.expect("ensure again");
    store.0.ensure_indexes().await.expect("and again");

    let mut cursor = store
        .0
        .collection()
        .list_indexes()
        .await
        .expect("list_indexes");
    let mut ttl = None;
    let mut user = None;
    let mut count = 0;
    while cursor.advance().await.expect("cursor") {
        let index = cursor.deserialize_current().expect("index model");
        count += 1;
        if index.keys == doc! { "expires_at": 1 } {
            ttl = Some(index);
        } else if index.keys == doc! { "user_id": 1 } {
            user = Some(index);
        }
    }
    assert_eq!(count, 3, "_id, expires_at and user_id, nothing more");
    let ttl = ttl.expect("an index on expires_at");
    let ttl_opts = ttl.options.expect("TTL index options");
    assert_eq!(
        ttl_opts.expire_after,
        Some(Duration::ZERO),
        "expireAfterSeconds: 0"
    );
    let user = user.expect("an index on user_id");
    let user_opts = user.options.expect("user index options");
    assert_eq!(user_opts.sparse, Some(true));
    assert_eq!(
        user_opts.expire_after, None,
        "the user index is no TTL index"
    );
}

/// The one slow test: the server's TTL monitor (about once a minute) removes an expired
/// document by itself, without `delete_expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_removes_expired_documents_by_itself() {
    if common::url().await.is_none() {
        return;
    }
    let store = scratch().await;
    let now = Timestamp::now();
    let expired = Record::new(
        SessionId::generate(),
        now - HOUR,
        now - Duration::from_secs(1),
    );
    let live = live_record(None);
    store.create(&expired).await.expect("create expired");
    store.create(&live).await.expect("create live");
    assert!(
        raw(&store, &expired.id).await.is_some(),
        "written, still physically there"
    );
    assert!(store.load(&expired.id).await.expect("load").is_none());

    let started = Instant::now();
    let limit = Duration::from_secs(130);
    loop {
        if raw(&store, &expired.id).await.is_none() {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the server did not remove the expired document within {limit:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "TTL monitor removed the document after {:?}",
        started.elapsed()
    );
    assert!(
        raw(&store, &live.id).await.is_some(),
        "the live document stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_have_the_documented_layout() {
    if common::url().await.is_none() {
        return;
    }
    let store = scratch().await;
    let mut r = live_record(Some("alice"));
    store.create(&r).await.expect("create");
    let d = raw(&store, &r.id).await.expect("stored");
    assert_eq!(d.get_str("_id").expect("_id"), r.id.as_str());
    assert_eq!(d.get_i64("version").expect("version is an int64"), 1);
    assert_eq!(d.get_str("user_id").expect("user_id"), "alice");
    assert_eq!(
        d.get_datetime("created_at")
            .expect("created_at is a date")
            .timestamp_millis(),
        r.created_at.as_millis()
    );
    assert_eq!(
        d.get_datetime("expires_at")
            .expect("expires_at is a date")
            .timestamp_millis(),
        r.expires_at.as_millis()
    );
    let data = d
        .get_binary_generic("data")
        .expect("data is generic binary");
    assert_eq!(data[0], coatcheck_core::NATIVE_FORMAT_V1);
    assert_eq!(
        d.get_datetime("last_seen")
            .expect("last_seen is a date")
            .timestamp_millis(),
        r.last_seen.as_millis()
    );
    assert_eq!(d.len(), 7, "no other fields: {d}");

    // A signed-in device: its handle, user agent and ip as strings beside the user.
    let mut signed_in = live_record(Some("alice"));
    signed_in.device = Some(
        coatcheck_core::Device::new()
            .with_user_agent(Some("curl/8"))
            .with_ip(Some("192.0.2.1")),
    );
    store.create(&signed_in).await.expect("create");
    let d = raw(&store, &signed_in.id).await.expect("stored");
    let device = signed_in.device.as_ref().expect("device");
    assert_eq!(
        d.get_str("device_handle").expect("handle"),
        device.handle.as_str()
    );
    assert_eq!(d.get_str("user_agent").expect("user_agent"), "curl/8");
    assert_eq!(d.get_str("ip").expect("ip"), "192.0.2.1");

    // Logging out removes the field (the user index is sparse), and the version stays int64.
    r.user_id = None;
    r.version = store.save(&r).await.expect("save");
    let d = raw(&store, &r.id).await.expect("stored");
    assert!(!d.contains_key("user_id"), "{d}");
    assert_eq!(d.get_i64("version").expect("version is an int64"), 2);
    // A document written by another tool with user_id: null reads as no user.
    store
        .0
        .collection()
        .update_one(
            doc! { "_id": r.id.as_str() },
            doc! { "$set": { "user_id": Bson::Null } },
        )
        .await
        .expect("set null");
    assert_eq!(
        store
            .load(&r.id)
            .await
            .expect("load")
            .expect("live")
            .user_id,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_replaces_an_expired_leftover_but_never_a_live_one() {
    if common::url().await.is_none() {
        return;
    }
    let store = scratch().await;
    let now = Timestamp::now();
    let mut old = Record::new(
        SessionId::generate(),
        now - HOUR,
        now - Duration::from_secs(5),
    );
    old.data.insert("old".into(), json!(true));
    old.user_id = Some("old-user".into());
    store.create(&old).await.expect("create expired");
    assert!(
        raw(&store, &old.id).await.is_some(),
        "the leftover is there"
    );

    let mut fresh = Record::new(old.id.clone(), now, now + HOUR);
    fresh.data.insert("fresh".into(), json!(true));
    store
        .create(&fresh)
        .await
        .expect("an expired leftover counts as absent");
    assert_eq!(
        store.load(&fresh.id).await.expect("load"),
        Some(fresh.clone())
    );
    assert!(store
        .list_for_user("old-user")
        .await
        .expect("list")
        .is_empty());

    let mut intruder = fresh.clone();
    intruder.data.insert("intruder".into(), json!(true));
    assert!(matches!(
        store.create(&intruder).await,
        Err(StoreError::IdTaken)
    ));
    assert_eq!(store.load(&fresh.id).await.expect("load"), Some(fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_shaped_documents_are_decode_errors() {
    if common::url().await.is_none() {
        return;
    }
    let store = scratch().await;
    let good = live_record(Some("shape-user"));
    store.create(&good).await.expect("create");
    let template = raw(&store, &good.id).await.expect("stored");
    store.delete(&good.id).await.expect("delete");

    let future = DateTime::from_millis((Timestamp::now() + HOUR).as_millis());
    let garbage = Binary {
        subtype: BinarySubtype::Generic,
        bytes: b"\xff\x00 not a session".to_vec(),
    };
    let mut variants: Vec<(&str, Spoil)> = vec![
        (
            "no version",
            Box::new(|d: &mut Document| drop(d.remove("version"))),
        ),
        (
            "no data",
            Box::new(|d: &mut Document| drop(d.remove("data"))),
        ),
        (
            "no created_at",
            Box::new(|d: &mut Document| drop(d.remove("created_at"))),
        ),
        (
            "version is a string",
            Box::new(|d: &mut Document| drop(d.insert("version", "1"))),
        ),
        (
            "version is negative",
            Box::new(|d: &mut Document| drop(d.insert("version", -1_i64))),
        ),
        (
            "data is a string",
            Box::new(|d: &mut Document| drop(d.insert("data", "{}"))),
        ),
        (
            "data is an object",
            Box::new(|d: &mut Document| drop(d.insert("data", doc! {"a": 1}))),
        ),
        (
            "user_id is a number",
            Box::new(|d: &mut Document| drop(d.insert("user_id", 42_i32))),
        ),
        (
            "created_at is a string",
            Box::new(|d: &mut Document| drop(d.insert("created_at", "yesterday"))),
        ),
        (
            "created_at is an int",
            Box::new(|d: &mut Document| drop(d.insert("created_at", 0_i64))),
        ),
    ];
    let g = garbage.clone();
    variants.push((
        "garbage data",
        Box::new(move |d: &mut Document| drop(d.insert("data", g.clone()))),
    ));
    variants.push((
        "empty data",
        Box::new(|d: &mut Document| {
            drop(d.insert(
                "data",
                Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: Vec::new(),
                },
            ))
        }),
    ));

    for (what, change) in &variants {
        let id = SessionId::generate();
        let mut d = template.clone();
        d.insert("_id", id.as_str());
        d.insert("expires_at", future);
        change(&mut d);
        store
            .0
            .collection()
            .insert_one(&d)
            .await
            .expect("insert raw");
        match store.load(&id).await {
            Err(StoreError::Decode(_)) => {}
            other => panic!("{what}: expected Decode, got {other:?}"),
        }
        store
            .0
            .collection()
            .delete_one(doc! { "_id": id.as_str() })
            .await
            .expect("clean");
    }

    // An _id that is no session id, listed through the user index.
    let mut d = template.clone();
    d.insert("_id", "not a valid id!");
    d.insert("expires_at", future);
    store
        .0
        .collection()
        .insert_one(&d)
        .await
        .expect("insert raw");
    assert!(matches!(
        store.list_for_user("shape-user").await,
        Err(StoreError::Decode(_))
    ));
    store
        .0
        .collection()
        .delete_one(doc! { "_id": "not a valid id!" })
        .await
        .expect("clean");

    // expires_at of the wrong type never matches `$gt: date`, so such a document is simply
    // not live: absent, and the store does not fail on it.
    let id = SessionId::generate();
    let mut d = template.clone();
    d.insert("_id", id.as_str());
    d.insert("expires_at", "tomorrow");
    store
        .0
        .collection()
        .insert_one(&d)
        .await
        .expect("insert raw");
    assert_eq!(store.load(&id).await.expect("load"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_follows_the_store_clock_not_the_server_clock() {
    let Some(url) = common::url().await else {
        return;
    };
    let client = common::client(&url).await;
    // A clock a day behind the real time: records expiring "in a minute" by it are long
    // expired for the server, yet live for the store.
    let clock = ManualClock::new(Timestamp::now() - Duration::from_secs(86_400));
    let store = Scratch(
        MongoStore::builder(&client, DB)
            .collection(harness::unique_name("cc"))
            .clock(clock.clone())
            .build()
            .expect("store"),
    );
    let start = clock.now();
    let mut r = Record::new(
        SessionId::generate(),
        start,
        start + Duration::from_secs(60),
    );
    r.user_id = Some("clocked".into());
    store.create(&r).await.expect("create");
    assert_eq!(store.load(&r.id).await.expect("load"), Some(r.clone()));
    r.version = store.save(&r).await.expect("save");
    assert_eq!(store.list_for_user("clocked").await.expect("list").len(), 1);

    clock.advance(Duration::from_secs(61));
    assert_eq!(store.load(&r.id).await.expect("load"), None);
    assert!(matches!(store.save(&r).await, Err(StoreError::NotFound)));
    assert!(!store.touch(&r.id, clock.now() + HOUR).await.expect("touch"));
    assert!(store
        .list_for_user("clocked")
        .await
        .expect("list")
        .is_empty());
    assert!(!store.delete(&r.id).await.expect("delete"));
    assert_eq!(store.delete_expired().await.expect("delete_expired"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_uses_the_sessions_collection_and_ensures_indexes() {
    let Some(url) = common::url().await else {
        return;
    };
    let db = harness::unique_name("ccdb");
    let store = MongoStore::connect(&url, &db).await.expect("connect");
    assert_eq!(store.collection_name(), "sessions");
    let names = store
        .collection()
        .list_index_names()
        .await
        .expect("index names");
    assert_eq!(names.len(), 3, "{names:?}");
    let r = live_record(Some("u"));
    store.create(&r).await.expect("create");
    assert_eq!(store.load(&r.id).await.expect("load"), Some(r));
    store.database().drop().await.expect("drop test database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_setup_within_bounded_time() {
    let started = Instant::now();
    let url = format!("{UNREACHABLE_URL}&serverSelectionTimeoutMS=1000");
    match MongoStore::connect(&url, "app").await {
        Err(BuildError::Indexes(_)) => {}
        other => panic!("expected BuildError::Indexes, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Without timeouts in the URL, the store's defaults (3 s) apply, not the driver's 30 s.
    let started = Instant::now();
    assert!(MongoStore::connect(UNREACHABLE_URL, "app").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    let store = common::unreachable().await;
    assert!(matches!(
        store.delete_expired().await,
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_beyond_the_document_limit_is_an_encode_error_before_any_io() {
    // The store points at a closed port: an Encode error proves nothing was sent.
    let store = common::unreachable().await;
    let mut r = live_record(None);
    r.data
        .insert("blob".into(), json!("x".repeat(17 * 1024 * 1024)));
    assert!(matches!(store.create(&r).await, Err(StoreError::Encode(_))));
    assert!(matches!(store.save(&r).await, Err(StoreError::Encode(_))));
}

#[tokio::test]
async fn bad_names_are_setup_errors() {
    let client = mongodb::Client::with_uri_str(UNREACHABLE_URL)
        .await
        .expect("client");
    for (db, coll) in [
        ("", "s"),
        ("a.b", "s"),
        ("app", ""),
        ("app", "a$b"),
        ("app", "system.x"),
    ] {
        match MongoStore::builder(&client, db).collection(coll).build() {
            Err(BuildError::InvalidName { .. }) => {}
            other => panic!("{db:?}.{coll:?}: expected InvalidName, got {other:?}"),
        }
    }
}
