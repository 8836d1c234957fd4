//! Postgres-specific behaviour beyond the conformance suite: migrations, identifiers, time
//! zones, failure and recovery, corrupt rows, batched cleanup and the cleanup task.

mod common;

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{ManualClock, Record, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_postgres::{BuildError, PostgresStore};
use common::{empty_data_hex, scoped_store, scoped_with, unmigrated_store, url, SchemaGuard};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Executor as _;

const HOUR: Duration = Duration::from_secs(3600);

macro_rules! require_pg {
    () => {
        if !harness::require(Some(Backend::Postgres)).await {
            return;
        }
    };
}

fn record_at(now: Timestamp, ttl: Duration) -> Record {
    let mut r = Record::new(SessionId::generate(), now, now + ttl);
    r.data.insert("views".into(), json!(1));
    r
}

fn table(store: &PostgresStore) -> String {
    let (schema, table) = store
        .qualified_table_name()
        .split_once('.')
        .expect("schema.table");
    format!("\"{schema}\".\"{table}\"")
}

// ---------------------------------------------------------------------------------------
// Construction

#[tokio::test]
async fn bad_identifiers_are_refused_at_construction() {
    for bad in [
        "sessions\"; DROP TABLE users; --",
        "a;b",
        "a'b",
        "a\"b",
        "",
        "1abc",
        "has space",
        "dotted.name",
        "ünïcode",
    ] {
        let t = PostgresStore::builder()
            .table(bad)
            .connect_lazy("postgres://localhost/x");
        match t {
            Err(BuildError::InvalidIdentifier {
                what: "table",
                name,
            }) => assert_eq!(name, bad),
            other => panic!("table {bad:?}: expected InvalidIdentifier, got {other:?}"),
        }
        let s = PostgresStore::builder()
            .schema(bad)
            .connect_lazy("postgres://localhost/x");
        assert!(
            matches!(s, Err(BuildError::InvalidIdentifier { what: "schema", .. })),
            "schema {bad:?}"
        );
    }
    let long = "a".repeat(64);
    assert!(PostgresStore::builder()
        .table(&long)
        .connect_lazy("postgres://localhost/x")
        .is_err());
    let ok = "A".repeat(63);
    assert!(PostgresStore::builder()
        .table(&ok)
        .connect_lazy("postgres://localhost/x")
        .is_ok());
    // The error says what is wrong.
    let msg = PostgresStore::builder()
        .table("x;y")
        .connect_lazy("postgres://localhost/x")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("invalid table name \"x;y\""), "{msg}");
    assert!(matches!(
        PostgresStore::builder()
            .cleanup_batch_size(0)
            .connect_lazy("postgres://localhost/x"),
        Err(BuildError::ZeroCleanupBatch)
    ));
    assert!(matches!(
        PostgresStore::builder().connect_lazy("not a url"),
        Err(BuildError::InvalidUrl(_))
    ));
}

#[test]
fn connect_lazy_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(
        PostgresStore::builder().connect_lazy("postgres://localhost/x"),
        Err(BuildError::NoRuntime)
    ));
}

// ---------------------------------------------------------------------------------------
// Migration

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_migrations_of_a_fresh_table_all_succeed() {
    require_pg!();
    let url = url().await;
    let schema = harness::unique_name("ccmig");
    let _guard = SchemaGuard {
        url: url.clone(),
        schema: schema.clone(),
    };
    let stores: Vec<PostgresStore> = (0..10)
        .map(|_| {
            PostgresStore::builder()
                .schema(&schema)
                .table("sessions")
                .max_connections(2)
                .connect_lazy(&url)
                .expect("config")
        })
        .collect();
    // Open a connection per store first, so the migrations really start together.
    for s in &stores {
        sqlx::query("SELECT 1")
            .execute(s.pool())
            .await
            .expect("warm up");
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let tasks: Vec<_> = stores
        .iter()
        .cloned()
        .map(|s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.migrate().await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("migrate");
    }
    // Idempotent afterwards too.
    stores[0].migrate().await.expect("migrate again");

    let store = &stores[3];
    let cols: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'sessions' ORDER BY ordinal_position",
    )
    .bind(&schema)
    .fetch_all(store.pool())
    .await
    .expect("columns");
    let cols: Vec<(&str, &str, &str)> = cols
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", "text", "NO"),
            ("version", "bigint", "NO"),
            ("data", "bytea", "NO"),
            ("user_id", "text", "YES"),
            ("created_at", "timestamp with time zone", "NO"),
            ("expires_at", "timestamp with time zone", "NO"),
            ("device_handle", "text", "YES"),
            ("user_agent", "text", "YES"),
            ("ip", "text", "YES"),
            ("last_seen", "timestamp with time zone", "YES"),
            ("expires_bucket", "timestamp with time zone", "YES"),
        ]
    );
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'sessions'",
    )
    .bind(&schema)
    .fetch_all(store.pool())
    .await
    .expect("indexes");
    indexes.sort();
    assert_eq!(indexes.len(), 3, "{indexes:?}");
    assert!(
        indexes.iter().any(|d| d.contains("(expires_bucket)")),
        "{indexes:?}"
    );
    assert!(
        indexes
            .iter()
            .any(|d| d.contains("(user_id)") && d.contains("WHERE (user_id IS NOT NULL)")),
        "{indexes:?}"
    );
    assert!(
        indexes
            .iter()
            .any(|d| d.contains("UNIQUE") && d.contains("(id")),
        "{indexes:?}"
    );

    let now = Timestamp::now();
    let r = record_at(now, HOUR);
    stores[7].create(&r).await.expect("create");
    assert_eq!(stores[1].load(&r.id).await.expect("load"), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_queries_use_the_partial_index() {
    require_pg!();
    let store = scoped_store().await;
    let t = table(&store);
    let mut conn = store.pool().acquire().await.expect("conn");
    conn.execute("SET enable_seqscan = off").await.expect("set");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT id, created_at, expires_at FROM {t} \
         WHERE user_id = 'alice' AND expires_at > '2020-01-01Z'"
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    conn.execute("RESET enable_seqscan").await.expect("reset");
    let plan = plan.join("\n");
    assert!(plan.contains("sessions_user_id_idx"), "{plan}");
}

// ---------------------------------------------------------------------------------------
// Time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_exact_whatever_the_connection_time_zone() {
    require_pg!();
    let url = url().await;
    for tz in ["Asia/Tokyo", "America/New_York", "UTC", "Pacific/Chatham"] {
        let schema = harness::unique_name("cctz");
        let _guard = SchemaGuard {
            url: url.clone(),
            schema: schema.clone(),
        };
        let set = format!("SET TIME ZONE '{tz}'");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(PgConnectOptions::from_str(&url).expect("url"));
        // A clock years away from the database's own: only the application's clock counts.
        let start = Timestamp::from_millis(1_000_000_000_123); // 2001-09-09T01:46:40.123Z
        let clock = ManualClock::new(start);
        let store = PostgresStore::builder()
            .schema(&schema)
            .table("sessions")
            .clock(clock.clone())
            .build(pool)
            .expect("store");
        store.migrate().await.expect("migrate");
        let shown: String = sqlx::query_scalar("SHOW TimeZone")
            .fetch_one(store.pool())
            .await
            .expect("show");
        assert_eq!(shown, tz);

        let expires = start + Duration::from_millis(5_000);
        let mut r = Record::new(SessionId::generate(), start, expires);
        r.user_id = Some("tz-user".into());
        store.create(&r).await.expect("create");
        // What the server holds is the same instant, to the millisecond.
        let stored_ms: i64 = sqlx::query_scalar(&format!(
            "SELECT (extract(epoch FROM expires_at) * 1000)::int8 FROM {} WHERE id = $1",
            table(&store)
        ))
        .bind(r.id.as_str())
        .fetch_one(store.pool())
        .await
        .expect("stored");
        assert_eq!(stored_ms, expires.as_millis(), "{tz}");

        clock.set(expires - Duration::from_millis(1));
        assert_eq!(
            store.load(&r.id).await.expect("load"),
            Some(r.clone()),
            "{tz}: live at T-1ms"
        );
        assert_eq!(store.list_for_user("tz-user").await.expect("list").len(), 1);
        r.version = store.save(&r).await.expect("save at T-1ms");
        assert_eq!(store.delete_expired().await.expect("cleanup"), 0);

        clock.set(expires);
        assert_eq!(
            store.load(&r.id).await.expect("load"),
            None,
            "{tz}: gone at T"
        );
        assert!(store
            .list_for_user("tz-user")
            .await
            .expect("list")
            .is_empty());
        assert!(!store.touch(&r.id, expires + HOUR).await.expect("touch"));
        assert!(matches!(store.save(&r).await, Err(StoreError::NotFound)));
        assert_eq!(
            store
                .delete_for_user("tz-user", None)
                .await
                .expect("revoke"),
            0
        );
        // Its id is free again: an expired row counts as absent.
        let mut again = Record::new(r.id.clone(), expires, expires + HOUR);
        again.data.insert("second".into(), json!(true));
        store.create(&again).await.expect("create over expired row");
        assert_eq!(
            store.load(&again.id).await.expect("load"),
            Some(again.clone())
        );
        // And touch moves it exactly.
        let moved = expires + Duration::from_millis(1);
        assert!(store.touch(&again.id, moved).await.expect("touch"));
        clock.set(moved - Duration::from_millis(1));
        assert!(store.load(&again.id).await.expect("load").is_some());
        clock.set(moved);
        assert!(store.load(&again.id).await.expect("load").is_none());
        assert_eq!(store.delete_expired().await.expect("cleanup"), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_and_infinite_expiry_round_trip() {
    require_pg!();
    let store = scoped_store().await;
    let now = Timestamp::now();
    for expires in [
        Timestamp::from_millis(i64::MAX),
        Timestamp::from_millis(253_402_300_799_999), // 9999-12-31T23:59:59.999Z
    ] {
        let r = Record::new(SessionId::generate(), now, expires);
        store.create(&r).await.expect("create");
        assert_eq!(store.load(&r.id).await.expect("load"), Some(r));
    }
}

// ---------------------------------------------------------------------------------------
// Failure and recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_backend_error_within_the_acquire_timeout() {
    let store = PostgresStore::builder()
        .acquire_timeout(Duration::from_millis(800))
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .expect("config");
    let started = std::time::Instant::now();
    let r = record_at(Timestamp::now(), HOUR);
    assert!(store.create(&r).await.expect_err("create").is_backend());
    assert!(store.load(&r.id).await.expect_err("load").is_backend());
    assert!(store
        .delete_expired()
        .await
        .expect_err("cleanup")
        .is_backend());
    let err = store.migrate().await.expect_err("migrate");
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

async fn terminate(admin: &sqlx::PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) t",
    )
    .bind(app)
    .fetch_one(admin)
    .await
    .expect("terminate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_recovers_after_its_connections_are_terminated() {
    require_pg!();
    let app = harness::unique_name("ccapp");
    let store = scoped_with(
        PostgresStore::builder()
            .application_name(&app)
            .max_connections(4),
    )
    .await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url().await)
        .await
        .expect("admin");

    let mut r = record_at(Timestamp::now(), HOUR);
    r.user_id = Some("u".into());
    store.create(&r).await.expect("create");
    for round in 0..3 {
        // Fill the pool with idle connections: several operations at once.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = store.store.clone();
            let id = r.id.clone();
            tasks.push(tokio::spawn(async move { s.load(&id).await }));
        }
        for t in tasks {
            assert!(t.await.expect("task").expect("load").is_some());
        }
        let killed = terminate(&admin, &app).await;
        assert!(killed >= 1, "round {round}: no connection was terminated");
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Every kind of operation works again on the same store, on the first try.
        match round {
            0 => {
                assert_eq!(
                    store
                        .load(&r.id)
                        .await
                        .expect("load after terminate")
                        .as_ref(),
                    Some(&r)
                );
            }
            1 => {
                r.data.insert("round".into(), json!(round));
                r.version = store.save(&r).await.expect("save after terminate");
            }
            _ => {
                let other = record_at(Timestamp::now(), HOUR);
                store.create(&other).await.expect("create after terminate");
                assert!(store.delete(&other.id).await.expect("delete"));
            }
        }
        assert_eq!(store.list_for_user("u").await.expect("list").len(), 1);
        assert!(store
            .touch(&r.id, Timestamp::now() + HOUR)
            .await
            .expect("touch"));
        r = store.load(&r.id).await.expect("load").expect("present");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_decode_errors() {
    require_pg!();
    let store = scoped_store().await;
    let t = table(&store);
    let r = record_at(Timestamp::now(), HOUR);
    store.create(&r).await.expect("create");

    for garbage in [&b"\xff\x00garbage"[..], b"", b"\x01\xc1", b"{not json"] {
        sqlx::query(&format!("UPDATE {t} SET data = $2 WHERE id = $1"))
            .bind(r.id.as_str())
            .bind(garbage)
            .execute(store.pool())
            .await
            .expect("corrupt");
        match store.load(&r.id).await {
            Err(StoreError::Decode(_)) => {}
            other => panic!("{garbage:?}: expected Decode, got {other:?}"),
        }
    }
    // A version no coatcheck store writes.
    sqlx::query(&format!(
        "UPDATE {t} SET data = $2, version = -5 WHERE id = $1"
    ))
    .bind(r.id.as_str())
    .bind(coatcheck_core::Codec::encode(&coatcheck_core::NativeCodec, &r.data).expect("encode"))
    .execute(store.pool())
    .await
    .expect("corrupt version");
    assert!(matches!(
        store.load(&r.id).await,
        Err(StoreError::Decode(_))
    ));
    // The corrupt row can still be removed.
    assert!(store.delete(&r.id).await.expect("delete"));

    // A row written by another tool with an id coatcheck would never accept is skipped by
    // list_for_user (and still revoked by delete_for_user).
    let good = {
        let mut g = record_at(Timestamp::now(), HOUR);
        g.user_id = Some("mixed".into());
        g
    };
    store.create(&good).await.expect("create");
    sqlx::query(&format!(
        "INSERT INTO {t} SELECT 'bad id!', version, data, user_id, created_at, expires_at FROM {t} WHERE id = $1"
    ))
    .bind(good.id.as_str())
    .execute(store.pool())
    .await
    .expect("insert foreign row");
    let listed = store.list_for_user("mixed").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, good.id);
    assert_eq!(
        store.delete_for_user("mixed", None).await.expect("revoke"),
        2
    );
}

// ---------------------------------------------------------------------------------------
// Cleanup

async fn count(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table(store)))
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_expired_works_in_batches_and_keeps_live_rows() {
    require_pg!();
    let store = scoped_with(PostgresStore::builder().cleanup_batch_size(3)).await;
    let now = Timestamp::now();
    let live: Vec<Record> = (0..4).map(|_| record_at(now, HOUR)).collect();
    for r in &live {
        store.create(r).await.expect("create live");
    }
    for i in 0..10 {
        let r = Record::new(
            SessionId::generate(),
            now - HOUR,
            now - Duration::from_millis(1 + i),
        );
        store.create(&r).await.expect("create expired");
    }
    assert_eq!(count(&store).await, 14);
    assert_eq!(store.delete_expired().await.expect("cleanup"), 10);
    assert_eq!(count(&store).await, 4);
    assert_eq!(store.delete_expired().await.expect("again"), 0);
    for r in &live {
        assert_eq!(store.load(&r.id).await.expect("load").as_ref(), Some(r));
    }
    // Exactly a multiple of the batch size: the loop still ends.
    for _ in 0..6 {
        let r = Record::new(
            SessionId::generate(),
            now - HOUR,
            now - Duration::from_millis(1),
        );
        store.create(&r).await.expect("create expired");
    }
    assert_eq!(store.delete_expired().await.expect("cleanup"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_task_removes_expired_rows_survives_errors_and_ends_with_the_store() {
    require_pg!();
    let scoped = scoped_store().await;
    let store = scoped.store.clone();
    let t = table(&store);
    let now = Timestamp::now();
    let expired = |n: u64| {
        Record::new(
            SessionId::generate(),
            now - HOUR,
            now - Duration::from_millis(n),
        )
    };

    let task = store.spawn_cleanup(Duration::from_millis(50));
    for i in 1..=5 {
        store.create(&expired(i)).await.expect("create expired");
    }
    let live = record_at(now, HOUR);
    store.create(&live).await.expect("create live");
    wait_for(|| async { count(&store).await == 1 }).await;

    // The table disappears: every run fails; the task logs and carries on.
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(store.pool())
        .await
        .expect("drop table");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "the cleanup task died on an error");

    // Back again: the task picks up where it left off.
    store.migrate().await.expect("migrate");
    for i in 1..=3 {
        store.create(&expired(i)).await.expect("create expired");
    }
    wait_for(|| async { count(&store).await == 0 }).await;
    assert!(!task.is_finished());

    // Dropping every clone of the store ends the task.
    drop(store);
    drop(scoped);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("task ends once the store is dropped")
        .expect("task did not panic");
}

async fn wait_for<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A table of the layout before devices: `migrate` adds the device columns, its rows read
/// with no device (last seen = created), are listed, and take a device at their next save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adds_device_columns_to_a_table_of_the_earlier_layout() {
    require_pg!();
    let (store, guard) = unmigrated_store("devmig").await;
    let schema = &guard.schema;
    let now = Timestamp::now();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".sessions (id text COLLATE \"C\" \
         PRIMARY KEY, version bigint NOT NULL, data bytea NOT NULL, user_id text COLLATE \"C\", \
         created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL); \
         INSERT INTO \"{schema}\".sessions VALUES ('{id}', 1, '\\x{data}', 'ada', \
         to_timestamp({c}), to_timestamp({e}))",
        id = "old-layout-session-id-0123456789",
        data = empty_data_hex(),
        c = now.as_millis() / 1000,
        e = now.as_millis() / 1000 + 3600,
    ))
    .execute(store.pool())
    .await
    .expect("old layout");
    store.migrate().await.expect("migrate");
    let id = SessionId::parse("old-layout-session-id-0123456789").expect("id");
    let mut old = store.load(&id).await.expect("load").expect("live");
    assert_eq!(old.device, None);
    assert_eq!(old.last_seen, old.created_at);
    let listed = store.list_for_user("ada").await.expect("list");
    assert_eq!(listed.len(), 1);
    old.device = Some(coatcheck_core::Device::new().with_user_agent(Some("curl/8")));
    old.last_seen = Timestamp::now();
    old.version = store.save(&old).await.expect("save");
    assert_eq!(store.load(&id).await.expect("load"), Some(old));
}
