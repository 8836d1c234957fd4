//! Express mode's principal index (what log out everywhere finds sessions by) names the user
//! `load` names, for every principal Node writes, and `migrate()` replaces an earlier
//! build's index.

mod common;

use coatcheck_core::{ExpressFormat, SessionId, SessionStore};
use coatcheck_sqlite::SqliteStore;
use common::{fresh_file, url_of};

/// better-sqlite3-session-store's own write of a session Node's `JSON.stringify` wrote.
async fn node_write(store: &SqliteStore, sid: &str, json: &str) {
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO \"{}\" (sid, sess, expire) VALUES (?, ?, ?)",
        store.table_name()
    ))
    .bind(sid)
    .bind(json)
    .bind("2999-01-01T00:00:00.000Z")
    .execute(store.pool())
    .await
    .expect("Node's write");
}

/// Defect: a Node integer user id past `i64::MAX` was the session's user to `load`, but the
/// index read it as a REAL (`9.22337203685478e+18`): log out everywhere revoked nothing. The
/// index now reads an integer as its JSON text, digit for digit; an index an earlier build
/// created under the old expression is dropped by `migrate()`.
#[tokio::test]
async fn a_node_integer_principal_past_i64_is_listed_and_revoked() {
    let file = fresh_file("cc_xp");
    let store = SqliteStore::builder()
        .express(ExpressFormat::new())
        .connect_lazy(&url_of(&file))
        .expect("config");
    store.migrate().await.expect("migrate");
    // The earlier build's index, as a table it migrated has it.
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS \"sessions_coatcheck_user_idx\" ON \"sessions\" ((CASE WHEN \
         json_type(sess, '$.userId') IN ('text', 'integer') THEN CAST(json_extract(sess, \
         '$.userId') AS TEXT) END), expire)",
    )
    .execute(store.pool())
    .await
    .expect("the earlier index");
    store.migrate().await.expect("migrate again");
    let earlier: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sessions_coatcheck_user_idx'",
    )
    .fetch_one(store.pool())
    .await
    .expect("sqlite_master");
    assert_eq!(earlier, 0, "the earlier build's index is dropped");

    for user in ["9223372036854775808", "18446744073709551615", "42", "-7"] {
        let sid = format!("{:0<32}", format!("s{}", user.replace('-', "m")));
        node_write(
            &store,
            &sid,
            &format!("{{\"cookie\":{{\"path\":\"/\"}},\"userId\":{user}}}"),
        )
        .await;
        let id = SessionId::parse(&sid).expect("id");
        let loaded = store.load(&id).await.expect("load").expect("live");
        assert_eq!(loaded.user_id.as_deref(), Some(user));
        let listed = store.list_for_user(user).await.expect("list");
        assert_eq!(listed.len(), 1, "{user} listed");
        assert_eq!(
            store.delete_for_user(user, None).await.expect("revoke"),
            1,
            "{user}"
        );
        assert!(store.load(&id).await.expect("load").is_none());
    }
}
