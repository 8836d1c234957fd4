//! Express-compatible mode on a server whose default `TimeZone` is not UTC.
//!
//! connect-pg-simple's `expire` is a `timestamp` without time zone that Node writes with
//! `to_timestamp(…)`, converted in its connection's zone: the server's default. sqlx asks
//! for UTC, so before the fix a Node session on a server west of UTC looked expired to Rust
//! (not loaded, not listed, deleted by `delete_expired`) — and east of UTC, Rust's sessions
//! outlived their expiry for Node. The test gives a database of its own a default of
//! `Pacific/Honolulu` (UTC−10, no daylight saving) and plays Node's SQL on a connection in
//! that zone.

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{ExpressFormat, Record, SessionId, SessionStore, Timestamp};
use coatcheck_postgres::PostgresStore;
use sqlx::Connection as _;

const ZONE: &str = "Pacific/Honolulu";

/// The server URL with another database in its path.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[tokio::test]
async fn express_mode_agrees_with_node_on_a_non_utc_server() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let url = harness::url(Backend::Postgres).await.expect("checked");
    let db = harness::unique_name("cc_tz");
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in [
        format!("CREATE DATABASE \"{db}\""),
        format!("ALTER DATABASE \"{db}\" SET timezone TO '{ZONE}'"),
    ] {
        sqlx::raw_sql(&sql)
            .execute(&mut admin)
            .await
            .expect("create a database with a non-UTC default");
    }
    let db_url = with_database(&url, &db);
    let outcome = run(&db_url).await;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    outcome.unwrap_or_else(|e| panic!("{e}"));
}

async fn run(db_url: &str) -> Result<(), String> {
    let store = PostgresStore::builder()
        .express(ExpressFormat::new())
        .connect_lazy(db_url)
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    // Node: a connection in the server's default zone (node-postgres sets none).
    let mut node = sqlx::PgConnection::connect(db_url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(&format!("SET TimeZone = '{ZONE}'"))
        .execute(&mut node)
        .await
        .map_err(|e| e.to_string())?;
    let now_s = Timestamp::now().as_millis() / 1000;
    let sid = SessionId::generate();
    let sess = r#"{"cookie":{"originalMaxAge":3600000,"expires":null,"httpOnly":true,"path":"/"},"userId":"nina","n":1}"#;
    // connect-pg-simple's upsert, expiring in an hour.
    sqlx::query("INSERT INTO session (sess, expire, sid) SELECT $1::json, to_timestamp($2), $3")
        .bind(sess)
        .bind((now_s + 3600) as f64)
        .bind(sid.as_str())
        .execute(&mut node)
        .await
        .map_err(|e| e.to_string())?;
    // Rust sees Node's live session as live.
    let loaded = store.load(&sid).await.map_err(|e| e.to_string())?;
    let loaded = loaded.ok_or("Node's live session looks expired to Rust")?;
    let left = loaded.expires_at.as_millis() - Timestamp::now().as_millis();
    if !(3_500_000..=3_700_000).contains(&left) {
        return Err(format!(
            "expiry read as {left} ms from now, not about an hour"
        ));
    }
    let listed = store
        .list_for_user("nina")
        .await
        .map_err(|e| e.to_string())?;
    if listed.len() != 1 {
        return Err(format!("list_for_user missed Node's session: {listed:?}"));
    }
    let swept = store.delete_expired().await.map_err(|e| e.to_string())?;
    if swept != 0 || store.load(&sid).await.map_err(|e| e.to_string())?.is_none() {
        return Err(format!(
            "delete_expired removed a live Node session ({swept})"
        ));
    }
    // Node sees Rust's live session as live, and its expired one as expired.
    let now = Timestamp::now();
    let live = Record::new(SessionId::generate(), now, now + Duration::from_secs(600));
    store.create(&live).await.map_err(|e| e.to_string())?;
    let node_read = "SELECT sess FROM session WHERE sid = $1 AND expire >= to_timestamp($2)";
    let found = sqlx::query(node_read)
        .bind(live.id.as_str())
        .bind(now_s as f64)
        .fetch_optional(&mut node)
        .await
        .map_err(|e| e.to_string())?;
    if found.is_none() {
        return Err("Rust's live session looks expired to Node".into());
    }
    let found = sqlx::query(node_read)
        .bind(live.id.as_str())
        .bind((now_s + 3600) as f64)
        .fetch_optional(&mut node)
        .await
        .map_err(|e| e.to_string())?;
    if found.is_some() {
        return Err("Rust's session outlives its expiry for Node".into());
    }
    node.close().await.map_err(|e| e.to_string())?;
    Ok(())
}
