//! Saves are HOT updates (heap-only tuples: no index entry written, no dead index entry left)
//! although a rolling expiry moves `expires_at` on every save: the table indexes a 5-minute
//! bucket of the expiry, not the expiry itself. And a table of the earlier layout (indexed
//! `expires_at`) is moved to the bucket by `migrate`, its rows and cleanup intact.

mod common;

use std::time::{Duration, Instant};

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};
use coatcheck_postgres::PostgresStore;
use common::{empty_data_hex, scoped_with, unmigrated_store};
use sqlx::Executor as _;

macro_rules! require_pg {
    () => {
        if !harness::require(Some(Backend::Postgres)).await {
            return;
        }
    };
}

/// The table's (updates, HOT updates) as the statistics report them, once they show at
/// least `updates` (a backend reports its counts when idle, within a second or ten).
async fn updates(store: &PostgresStore, updates: i64) -> (i64, i64) {
    let (schema, table) = store
        .qualified_table_name()
        .split_once('.')
        .map(|(s, t)| (s.to_owned(), t.to_owned()))
        .expect("schema.table");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // PostgreSQL 15+: report this connection's counts at its next idle moment.
        let _ = store
            .pool()
            .execute("SELECT pg_stat_force_next_flush()")
            .await;
        let row: (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_one(store.pool())
        .await
        .expect("statistics");
        if row.0 >= updates || Instant::now() > deadline {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 200 saves of one signed-in session, each moving its expiry a second on (a rolling idle
/// timeout), on one connection: nearly all are HOT. With `expires_at` itself indexed, none
/// was (the benchmark counted 12 HOT updates in 175,597).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_saves_are_hot_updates() {
    require_pg!();
    let store = scoped_with(PostgresStore::builder().max_connections(1)).await;
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(1800));
    r.user_id = Some("ada".into());
    store.create(&r).await.expect("create");
    const SAVES: i64 = 200;
    for i in 0..SAVES {
        r.data.insert("n".into(), serde_json::json!(i));
        r.expires_at = r.expires_at + Duration::from_secs(1);
        r.version = store.save(&r).await.expect("save");
    }
    assert_eq!(store.load(&r.id).await.expect("load"), Some(r));
    let (all, hot) = updates(&store, SAVES).await;
    assert!(all >= SAVES, "{all} updates reported");
    // The bucket moves at most once in 200 seconds of expiry; a page without room for the
    // new version may still cost a few.
    assert!(hot * 10 >= all * 9, "{hot} HOT updates of {all}");
}

/// A table of the layout before the bucket, with its `expires_at` index and a live and an
/// expired row: `migrate` adds the bucket and keeps the old index (an earlier build
/// restarting mid-deploy finds it instead of rebuilding it under a lock that blocks writes),
/// `finish_upgrade` drops it, and the cleanup removes the expired row through the new index
/// and keeps the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_an_indexed_expiry_table_to_the_bucket() {
    require_pg!();
    let (store, guard) = unmigrated_store("bucketmig").await;
    let schema = &guard.schema;
    let data = empty_data_hex();
    let s = Timestamp::now().as_millis() / 1000;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".sessions (id text COLLATE \"C\" \
         PRIMARY KEY, version bigint NOT NULL, data bytea NOT NULL, user_id text COLLATE \"C\", \
         created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL, device_handle text \
         COLLATE \"C\", user_agent text, ip text, last_seen timestamptz); \
         CREATE INDEX sessions_expires_at_idx ON \"{schema}\".sessions (expires_at); \
         INSERT INTO \"{schema}\".sessions (id, version, data, created_at, expires_at) VALUES \
         ('live-session-of-the-old-layout-0', 1, '\\x{data}', to_timestamp({s}), \
         to_timestamp({s} + 3600)), \
         ('expired-session-of-the-old-layout', 1, '\\x{data}', to_timestamp({s} - 7200), \
         to_timestamp({s} - 1))"
    ))
    .execute(store.pool())
    .await
    .expect("old layout");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate again");
    let indexes = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1",
        )
        .bind(schema)
        .fetch_all(store.pool())
        .await
        .expect("indexes")
    };
    let kept = indexes().await;
    assert!(
        kept.iter().any(|i| i == "sessions_expires_at_idx"),
        "kept for an earlier build: {kept:?}"
    );
    store.finish_upgrade().await.expect("finish the upgrade");
    store.finish_upgrade().await.expect("again: a no-op");
    store.migrate().await.expect("migrate after it");
    let indexes = indexes().await;
    assert!(
        indexes.iter().any(|i| i == "sessions_expires_bucket_idx"),
        "{indexes:?}"
    );
    assert!(
        !indexes.iter().any(|i| i == "sessions_expires_at_idx"),
        "{indexes:?}"
    );
    // The cleanup's query takes the bucket's index.
    let mut conn = store.pool().acquire().await.expect("conn");
    conn.execute("SET enable_seqscan = off").await.expect("set");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT id FROM \"{schema}\".sessions \
         WHERE expires_bucket <= now() AND expires_at <= now() LIMIT 10"
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    conn.execute("RESET enable_seqscan").await.expect("reset");
    drop(conn);
    assert!(plan.join("\n").contains("expires_bucket_idx"), "{plan:?}");
    assert_eq!(store.delete_expired().await.expect("cleanup"), 1);
    let live = SessionId::parse("live-session-of-the-old-layout-0").expect("id");
    let expired = SessionId::parse("expired-session-of-the-old-layout").expect("id");
    assert!(store.load(&live).await.expect("load").is_some());
    assert_eq!(store.load(&expired).await.expect("load"), None);
}
