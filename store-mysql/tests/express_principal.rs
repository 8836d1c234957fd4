//! Express mode's principal column (`coatcheck_user`, what log out everywhere finds
//! sessions by): Express never sees it (its own writes succeed whatever their JSON), a
//! session is its user's only where the column says so too, and `migrate()` brings any
//! earlier shape of the table up to this build's or refuses it.

mod common;

use coatcheck_conformance::harness;
use coatcheck_core::{ExpressFormat, SessionId, SessionStore, StoreError, Timestamp};
use coatcheck_mysql::{MigrateError, MySqlStore};
use common::scoped_with;
use serde_json::{json, Value};

use common::{record_at, HOUR};

/// A value nesting `levels` arrays deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

/// express-mysql-session's `schema.sql`, and nothing else.
fn node_schema(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (\
           `session_id` varchar(128) COLLATE utf8mb4_bin NOT NULL,\
           `expires` int(11) unsigned NOT NULL,\
           `data` mediumtext COLLATE utf8mb4_bin,\
           PRIMARY KEY (`session_id`)\
         ) ENGINE=InnoDB;"
    )
}

/// express-mysql-session's own insert of a session Node's `JSON.stringify` wrote.
fn node_insert(table: &str, sid: &str, json: &str) -> String {
    let expires = Timestamp::now().as_millis() / 1000 + 3600;
    format!(
        "INSERT INTO `{table}` (session_id, expires, data) VALUES ('{sid}', {expires}, '{}')",
        json.replace('\\', "\\\\").replace('\'', "''")
    )
}

/// A session JSON as Node writes it, with `extra` (`"key":value,…`) after the cookie.
fn node_json(extra: &str) -> String {
    format!(
        "{{\"cookie\":{{\"originalMaxAge\":3600000,\"httpOnly\":true,\"path\":\"/\"}},{extra}}}"
    )
}

fn express_store(table: &str, url: &str, key: &str) -> MySqlStore {
    MySqlStore::builder()
        .table(table)
        .express(ExpressFormat::new().user_key(Some(key)))
        .connect_lazy(url)
        .expect("config")
}

/// Defect: an anonymous session nesting past MariaDB's JSON depth could not be written at
/// all (error 4040 from the principal column's `JSON_EXTRACT`); now it is written and read
/// back as in the native layout. A signed-in one that deep could not be found by log out
/// everywhere, so it is refused with an `Encode` error naming why, and nothing is written.
#[tokio::test]
async fn deep_sessions_are_written_and_a_signed_in_one_too_deep_to_index_is_refused() {
    require_mysql!();
    let scoped = scoped_with(MySqlStore::builder().express(ExpressFormat::new())).await;
    let store = &scoped.0.store;
    let mut anonymous = record_at(Timestamp::now(), HOUR);
    anonymous.data.insert("tree".into(), nested(60));
    store.create(&anonymous).await.expect("create");
    let mut loaded = store
        .load(&anonymous.id)
        .await
        .expect("load")
        .expect("live");
    assert_eq!(loaded.data.get("tree"), Some(&nested(60)));
    loaded.data.insert("views".into(), json!(2));
    store.save(&loaded).await.expect("save");

    let mut signed_in = record_at(Timestamp::now(), HOUR);
    signed_in.user_id = Some("ada".into());
    signed_in.data.insert("tree".into(), nested(60));
    match store.create(&signed_in).await {
        Err(StoreError::Encode(e)) => assert!(e.to_string().contains("log out everywhere"), "{e}"),
        other => panic!("expected an Encode error, got {other:?}"),
    }
    assert!(store.load(&signed_in.id).await.expect("load").is_none());
    // Shallow enough (the cookie and the tree within the server's 31 levels): indexed.
    signed_in.data.insert("tree".into(), nested(28));
    store.create(&signed_in).await.expect("create");
    assert_eq!(store.list_for_user("ada").await.expect("list").len(), 1);
    let mut deeper = store
        .load(&signed_in.id)
        .await
        .expect("load")
        .expect("live");
    deeper.data.insert("tree".into(), nested(40));
    assert!(matches!(
        store.save(&deeper).await,
        Err(StoreError::Encode(_))
    ));
    assert!(store.load(&signed_in.id).await.expect("load").is_some());
}

/// Defects: on a table Express created holding a session the server cannot parse (nested
/// past its depth, a lone surrogate escape `"\ud800"` that `JSON.stringify` writes, an
/// over-long principal), `migrate()` failed and the Rust app could not start; after it,
/// Express's own insert of such a session failed (4038, 1406): Express saw the addition.
/// Now both succeed, and such a session is never reported as its user's while log out
/// everywhere cannot find it — also when the server is not in strict mode (the failed
/// extraction used to leave the column NULL while `load` named the user).
#[tokio::test]
async fn express_never_sees_the_principal_column_and_load_agrees_with_it() {
    require_mysql!();
    let url = common::url().await;
    let table = harness::unique_name("cc_emx");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: table.clone(),
    };
    let deep = node_json(&format!("\"userId\":\"ada\",\"tree\":{}", nested(40)));
    let surrogate = node_json("\"userId\":\"ada\",\"note\":\"\\ud800\"");
    let long = node_json(&format!("\"userId\":\"{}\"", "x".repeat(4000)));
    common::admin(
        &url,
        format!(
            "{}{};",
            node_schema(&table),
            node_insert(&table, "deepSid0deepSid0deepSid0deepSid0", &deep)
        ),
    )
    .expect("express-mysql-session's table and a deep session");
    let store = express_store(&table, &url, "userId");
    store
        .migrate()
        .await
        .expect("migrate over a session the server cannot parse");
    // After the migration, Express's own inserts of what the server cannot parse.
    common::admin(
        &url,
        node_insert(&table, "surrSid0surrSid0surrSid0surrSid0", &surrogate),
    )
    .expect("a lone surrogate written by Express after the migration");
    common::admin(
        &url,
        node_insert(&table, "longSid0longSid0longSid0longSid0", &long),
    )
    .expect("an over-long principal written by Express after the migration");
    // A server not in strict mode: the same.
    common::admin(
        &url,
        format!(
            "SET SESSION sql_mode = ''; {}",
            node_insert(&table, "laxSid00laxSid00laxSid00laxSid00", &deep)
        ),
    )
    .expect("a deep session written without strict mode");
    assert!(store.list_for_user("ada").await.expect("list").is_empty());
    for sid in [
        "deepSid0deepSid0deepSid0deepSid0",
        "surrSid0surrSid0surrSid0surrSid0",
        "longSid0longSid0longSid0longSid0",
        "laxSid00laxSid00laxSid00laxSid00",
    ] {
        let id = SessionId::parse(sid).expect("id");
        match store.load(&id).await {
            Err(StoreError::Decode(_)) => {}
            Ok(Some(r)) => panic!("{sid}: served as {:?}'s, unlisted", r.user_id),
            other => panic!("{sid}: expected a Decode error, got {other:?}"),
        }
    }
    // A session the server can read is its user's, listed and revoked.
    common::admin(
        &url,
        node_insert(
            &table,
            "fineSid0fineSid0fineSid0fineSid0",
            &node_json("\"userId\":\"ada\""),
        ),
    )
    .expect("insert");
    assert_eq!(store.list_for_user("ada").await.expect("list").len(), 1);
    assert_eq!(store.delete_for_user("ada", None).await.expect("revoke"), 1);
}

/// Defect: a principal key changed to a prefix of the old one (`userId` → `user`) passed
/// `migrate()` (a substring check) and log out everywhere then revoked nothing.
#[tokio::test]
async fn a_principal_key_changed_to_a_prefix_of_the_old_is_refused() {
    require_mysql!();
    let scoped = scoped_with(MySqlStore::builder().express(ExpressFormat::new())).await;
    let table = scoped.0.guard.table.clone();
    let url = common::url().await;
    for key in ["user", "userI", "Id"] {
        match express_store(&table, &url, key).migrate().await {
            Err(e @ MigrateError::WrongShape { .. }) => assert!(e.to_string().contains(&table)),
            other => panic!("{key}: expected WrongShape, got {other:?}"),
        }
    }
    express_store(&table, &url, "userId")
        .migrate()
        .await
        .expect("the same key");
}

/// Defect: `migrate()` kept the principal column of a table an earlier build created: the
/// padded `VARCHAR … utf8mb4_bin` one (`delete_for_user("alice")` revoked `"alice "`'s
/// sessions) and the unguarded `VARBINARY` one (a deep session could not be written). Both
/// are rebuilt, by several instances migrating at once; their sessions stay, now told apart.
#[tokio::test]
async fn migrate_rebuilds_an_earlier_builds_principal_column() {
    require_mysql!();
    let url = common::url().await;
    let earlier = [
        "VARCHAR(760) COLLATE utf8mb4_bin AS (JSON_UNQUOTE(JSON_EXTRACT(data, '$.userId'))) VIRTUAL",
        "VARBINARY(3040) AS (CASE WHEN JSON_TYPE(JSON_EXTRACT(data, '$.userId')) \
         IN ('STRING', 'INTEGER', 'UNSIGNED INTEGER') \
         THEN CAST(JSON_UNQUOTE(JSON_EXTRACT(data, '$.userId')) AS BINARY) END) VIRTUAL",
    ];
    for column in earlier {
        let table = harness::unique_name("cc_emo");
        let _guard = common::TableGuard {
            url: url.clone(),
            table: table.clone(),
        };
        common::admin(
            &url,
            format!(
                "{} ALTER TABLE `{table}` ADD COLUMN `coatcheck_user` {column}, \
                 ADD KEY `coatcheck_user_idx` (`coatcheck_user`, expires), \
                 ADD KEY `coatcheck_expires_idx` (expires); {}; {}",
                node_schema(&table),
                node_insert(
                    &table,
                    "aliceSidaliceSidaliceSidaliceSid",
                    &node_json("\"userId\":\"alice\"")
                ),
                node_insert(
                    &table,
                    "spaceSidspaceSidspaceSidspaceSid",
                    &node_json("\"userId\":\"alice \"")
                ),
            ),
        )
        .expect("an earlier build's table");
        let stores: Vec<MySqlStore> = (0..4)
            .map(|_| express_store(&table, &url, "userId"))
            .collect();
        for result in futures_util::future::join_all(stores.iter().map(|s| s.migrate())).await {
            result.expect("migrate");
        }
        let store = &stores[0];
        assert_eq!(
            store.delete_for_user("alice", None).await.expect("revoke"),
            1,
            "{column}"
        );
        assert_eq!(
            store.list_for_user("alice ").await.expect("list").len(),
            1,
            "{column}"
        );
        let mut deep = record_at(Timestamp::now(), HOUR);
        deep.data.insert("tree".into(), nested(60));
        store
            .create(&deep)
            .await
            .expect("a deep session after the rebuild");
        store.migrate().await.expect("a no-op the second time");
    }
}

/// A table express-mysql-session created first (its `schema.sql`, with a session Node
/// wrote): `migrate()` adds the expiry index and the principal column, concurrent
/// migrations included, and the existing session is read, listed and revoked by user.
#[tokio::test]
async fn express_migrate_upgrades_a_table_express_created() {
    require_mysql!();
    let url = common::url().await;
    let table = harness::unique_name("cc_ems");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: table.clone(),
    };
    let expires = Timestamp::now().as_millis() / 1000 + 3600;
    common::admin(
        &url,
        format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (\
               `session_id` varchar(128) COLLATE utf8mb4_bin NOT NULL,\
               `expires` int(11) unsigned NOT NULL,\
               `data` mediumtext COLLATE utf8mb4_bin,\
               PRIMARY KEY (`session_id`)\
             ) ENGINE=InnoDB;\
             INSERT INTO `{table}` VALUES ('nodeSid0nodeSid0nodeSid0nodeSid', {expires}, \
               '{{\"cookie\":{{\"originalMaxAge\":3600000,\"expires\":\"2030-01-01T00:00:00.000Z\",\
\"httpOnly\":true,\"path\":\"/\"}},\"userId\":\"ada\",\"counter\":3}}')"
        ),
    )
    .expect("express-mysql-session's table");
    let stores: Vec<MySqlStore> = (0..4)
        .map(|_| {
            MySqlStore::builder()
                .table(&table)
                .express(ExpressFormat::new())
                .connect_lazy(&url)
                .expect("config")
        })
        .collect();
    let migrations = stores.iter().map(|s| s.migrate());
    for result in futures_util::future::join_all(migrations).await {
        result.expect("migrate");
    }
    let store = &stores[0];
    let listed = store.list_for_user("ada").await.expect("list");
    assert_eq!(listed.len(), 1);
    let id = listed[0].id.clone();
    let loaded = store.load(&id).await.expect("load").expect("live");
    assert_eq!(loaded.user_id.as_deref(), Some("ada"));
    assert_eq!(loaded.data.get("counter"), Some(&json!(3)));
    assert_eq!(store.delete_for_user("ada", None).await.expect("revoke"), 1);
    assert!(store.load(&id).await.expect("load").is_none());
}

/// Express mode's principal column: bytes compared byte for byte (`alice` and `alice ` are
/// two users, as in the native layout, although a `_bin` text collation would pad them
/// equal), only a string or an integer is a principal, and a table whose principal column
/// reads another key than the configured one is refused at `migrate()`.
#[tokio::test]
async fn express_principals_match_byte_for_byte_and_a_changed_key_is_refused() {
    require_mysql!();
    let scoped = scoped_with(MySqlStore::builder().express(ExpressFormat::new())).await;
    let store = &scoped.0.store;
    let table = scoped.0.guard.table.clone();
    for user in ["alice", "alice ", "42"] {
        let mut r = record_at(Timestamp::now(), HOUR);
        r.user_id = Some(user.into());
        store.create(&r).await.expect("create");
    }
    for user in ["alice", "alice ", "42"] {
        assert_eq!(
            store.list_for_user(user).await.expect("list").len(),
            1,
            "{user:?}"
        );
    }
    assert_eq!(
        store.delete_for_user("alice", None).await.expect("revoke"),
        1
    );
    assert_eq!(store.list_for_user("alice ").await.expect("list").len(), 1);
    // A principal that is neither a string nor an integer is none.
    let expires = Timestamp::now().as_millis() / 1000 + 3600;
    common::admin(
        &common::url().await,
        format!(
            "INSERT INTO `{table}` (session_id, expires, data) VALUES \
             ('boolSid0boolSid0boolSid0boolSid', {expires}, '{{\"cookie\":{{}},\"userId\":true}}'), \
             ('nullSid0nullSid0nullSid0nullSid', {expires}, '{{\"cookie\":{{}},\"userId\":null}}')"
        ),
    )
    .expect("rows written by hand");
    for user in ["true", "1", "null"] {
        assert!(
            store.list_for_user(user).await.expect("list").is_empty(),
            "{user:?}"
        );
    }
    // The same table under another principal key: refused, not silently revoking nothing.
    let other = MySqlStore::builder()
        .table(&table)
        .express(ExpressFormat::new().user_key(Some("accountId")))
        .connect_lazy(&common::url().await)
        .expect("config");
    match other.migrate().await {
        Err(e @ coatcheck_mysql::MigrateError::WrongShape { .. }) => {
            assert!(e.to_string().contains(&table), "{e}");
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}
