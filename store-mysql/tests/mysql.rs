//! What is particular to MySQL / MariaDB: construction errors, found rows, concurrent
//! migrations, integer expiry whatever the connection's time zone, byte-exact keys, corrupt
//! rows, batched cleanup, and cleanup racing live traffic without deadlock errors.

mod common;

use std::time::Duration;

use coatcheck_conformance::harness;
use coatcheck_core::{
    ExpressFormat, ManualClock, SessionId, SessionStore, StoreError, StoreOptions, Timestamp,
};
use coatcheck_mysql::{BuildError, MySqlStore, MAX_USER_ID_LEN};
use common::{scoped_store, scoped_with};
use serde_json::json;

use common::{record_at, HOUR};

fn table(store: &MySqlStore) -> String {
    format!("`{}`", store.qualified_table_name())
}

async fn count(store: &MySqlStore) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table(store)))
        .fetch_one(store.pool())
        .await
        .expect("count")
}

// ---------------------------------------------------------------------------------------
// Construction

#[tokio::test]
async fn bad_options_are_refused_at_construction() {
    for (db, t) in [
        (None, "a`b"),
        (None, "x; DROP TABLE users"),
        (Some("9db"), "ok"),
    ] {
        let mut b = MySqlStore::builder().table(t);
        if let Some(db) = db {
            b = b.database(db);
        }
        let err = b.connect_lazy("mysql://root@127.0.0.1:1/x").unwrap_err();
        assert!(matches!(err, BuildError::InvalidIdentifier { .. }), "{err}");
    }
    let err = MySqlStore::builder()
        .express(ExpressFormat::new().user_key(Some("user'); DROP TABLE x; --")))
        .connect_lazy("mysql://root@127.0.0.1:1/x")
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::InvalidIdentifier {
                what: "express user key",
                ..
            }
        ),
        "{err}"
    );
    let encrypted_express = StoreOptions::new()
        .codec(coatcheck_conformance::encryption::codec())
        .express(ExpressFormat::new());
    let err = MySqlStore::builder()
        .options(encrypted_express)
        .connect_lazy("mysql://root@127.0.0.1:1/x")
        .unwrap_err();
    assert!(matches!(err, BuildError::EncryptedExpress), "{err}");
    for err in [
        MySqlStore::builder()
            .cleanup_batch_size(0)
            .connect_lazy("mysql://root@127.0.0.1:1/x")
            .unwrap_err(),
        MySqlStore::builder()
            .max_connections(0)
            .connect_lazy("mysql://root@127.0.0.1:1/x")
            .unwrap_err(),
        MySqlStore::builder()
            .connect_lazy("postgres://nope")
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                BuildError::ZeroCleanupBatch
                    | BuildError::ZeroConnections
                    | BuildError::InvalidUrl(_)
            ),
            "{err}"
        );
    }
}

#[test]
fn connect_lazy_outside_a_runtime_is_an_error_not_a_panic() {
    let err = MySqlStore::builder()
        .connect_lazy("mysql://root@127.0.0.1:3306/test")
        .unwrap_err();
    assert!(matches!(err, BuildError::NoRuntime), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_migrations_of_a_fresh_table_all_succeed() {
    require_mysql!();
    let url = common::url().await;
    let name = harness::unique_name("cc_mig");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: name.clone(),
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = MySqlStore::builder()
            .table(&name)
            .connect_lazy(&url)
            .expect("valid config");
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    for t in tasks {
        t.await.expect("task").expect("migrate");
    }
}

// ---------------------------------------------------------------------------------------
// Found rows: sqlx sets CLIENT_FOUND_ROWS, so an UPDATE that matches a row but changes
// nothing still counts it. `touch` relies on it.

#[tokio::test]
async fn affected_rows_are_found_rows_so_an_unchanged_touch_still_counts() {
    require_mysql!();
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let store = scoped_with(MySqlStore::builder().clock(clock.clone())).await;
    let now = Timestamp::from_millis(1_700_000_000_000);
    let r = record_at(now, HOUR);
    store.create(&r).await.expect("create");
    // The same expiry, at the same instant as the create's last_seen: nothing changes.
    let t = table(&store.0.store);
    let done = sqlx::query(&format!(
        "UPDATE {t} SET expires_at = expires_at WHERE id = ?"
    ))
    .bind(r.id.as_str())
    .execute(store.0.store.pool())
    .await
    .expect("no-op update")
    .rows_affected();
    assert_eq!(
        done, 1,
        "the client flag CLIENT_FOUND_ROWS is not in effect"
    );
    assert!(store.touch(&r.id, r.expires_at).await.expect("touch"));
    assert!(store.touch(&r.id, r.expires_at).await.expect("touch again"));
}

// ---------------------------------------------------------------------------------------
// Expiry and keys

#[tokio::test]
async fn expiry_is_integer_milliseconds_whatever_the_time_zone_and_past_2038() {
    require_mysql!();
    let scoped = scoped_store().await;
    let url = common::url().await;
    let t = scoped.0.guard.table.clone();
    // A second store on the same table whose connections use another time zone.
    use std::str::FromStr as _;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
        .expect("url")
        .timezone(Some("+05:30".into()));
    let pool = sqlx::mysql::MySqlPoolOptions::new().connect_lazy_with(options);
    let other = MySqlStore::builder().table(&t).build(pool).expect("store");
    let now = Timestamp::now();
    let mut r = record_at(now, HOUR);
    r.expires_at = Timestamp::from_millis(4_102_444_800_123); // 2100-01-01T00:00:00.123Z
    scoped.create(&r).await.expect("create");
    let seen = other.load(&r.id).await.expect("load").expect("live");
    assert_eq!(seen.expires_at, r.expires_at);
    assert_eq!(seen.created_at, r.created_at);
    // One millisecond after expiry it is gone, for both.
    let late = ManualClock::new(Timestamp::from_millis(4_102_444_800_124));
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .connect_lazy(&url)
        .expect("pool");
    let later = MySqlStore::builder()
        .table(&t)
        .clock(late)
        .build(pool)
        .expect("store");
    assert_eq!(later.load(&r.id).await.expect("load"), None);
}

#[tokio::test]
async fn user_ids_match_byte_for_byte_and_overlong_ones_are_refused() {
    require_mysql!();
    let store = scoped_store().await;
    let now = Timestamp::now();
    let mut a = record_at(now, HOUR);
    a.user_id = Some("Alice".into());
    let mut b = record_at(now, HOUR);
    b.user_id = Some("alice ".into());
    store.create(&a).await.expect("create");
    store.create(&b).await.expect("create");
    // Neither a case-insensitive collation nor PAD SPACE comparison merges them.
    assert_eq!(store.list_for_user("Alice").await.expect("list").len(), 1);
    assert_eq!(store.list_for_user("alice").await.expect("list").len(), 0);
    assert_eq!(store.list_for_user("alice ").await.expect("list").len(), 1);

    let mut long = record_at(now, HOUR);
    long.user_id = Some("u".repeat(MAX_USER_ID_LEN + 1));
    assert!(matches!(
        store.create(&long).await,
        Err(StoreError::Encode(_))
    ));
    assert_eq!(store.load(&long.id).await.expect("load"), None);
    long.user_id = Some("é".repeat(MAX_USER_ID_LEN / 2));
    store
        .create(&long)
        .await
        .expect("exactly the longest user id");
}

#[tokio::test]
async fn corrupt_rows_are_decode_errors() {
    require_mysql!();
    let scoped = scoped_store().await;
    let store = &scoped.0.store;
    let t = table(store);
    let r = record_at(Timestamp::now(), HOUR);
    store.create(&r).await.expect("create");
    for garbage in [&b"\xff\x00garbage"[..], b"", b"\x01\xc1"] {
        sqlx::query(&format!("UPDATE {t} SET data = ? WHERE id = ?"))
            .bind(garbage)
            .bind(r.id.as_str())
            .execute(store.pool())
            .await
            .expect("corrupt");
        match store.load(&r.id).await {
            Err(StoreError::Decode(_)) => {}
            other => panic!("{garbage:?}: expected Decode, got {other:?}"),
        }
    }
    let bytes =
        coatcheck_core::Codec::encode(&coatcheck_core::NativeCodec, &r.data).expect("encode");
    for (column, value) in [
        ("version", "-5"),
        ("device_handle", "'not a handle!'"),
        ("user_id", "x'ff'"),
    ] {
        sqlx::query(&format!(
            "UPDATE {t} SET data = ?, version = 1, device_handle = NULL, user_id = NULL WHERE id = ?"
        ))
        .bind(&bytes)
        .bind(r.id.as_str())
        .execute(store.pool())
        .await
        .expect("repair");
        sqlx::query(&format!("UPDATE {t} SET {column} = {value} WHERE id = ?"))
            .bind(r.id.as_str())
            .execute(store.pool())
            .await
            .expect("corrupt");
        match store.load(&r.id).await {
            Err(StoreError::Decode(_)) => {}
            other => panic!("{column} = {value}: expected Decode, got {other:?}"),
        }
    }
    // The corrupt row can still be removed.
    assert!(store.delete(&r.id).await.expect("delete"));

    // A row another tool wrote under an id coatcheck never accepts is skipped by
    // list_for_user and still revoked by delete_for_user.
    let mut good = record_at(Timestamp::now(), HOUR);
    good.user_id = Some("mixed".into());
    store.create(&good).await.expect("create");
    sqlx::query(&format!(
        "INSERT INTO {t} (id, version, data, user_id, created_at, expires_at) \
         SELECT 'bad id!', version, data, user_id, created_at, expires_at FROM {t} WHERE id = ?"
    ))
    .bind(good.id.as_str())
    .execute(store.pool())
    .await
    .expect("insert foreign row");
    let listed = store.list_for_user("mixed").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        store.delete_for_user("mixed", None).await.expect("revoke"),
        2
    );
}

// ---------------------------------------------------------------------------------------
// Cleanup

#[tokio::test]
async fn delete_expired_works_in_batches_and_keeps_live_rows() {
    require_mysql!();
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let scoped = scoped_with(
        MySqlStore::builder()
            .clock(clock.clone())
            .cleanup_batch_size(7),
    )
    .await;
    let store = &scoped.0.store;
    let now = Timestamp::from_millis(1_000_000);
    for i in 0..53 {
        let ttl = if i < 50 {
            Duration::from_secs(10)
        } else {
            HOUR
        };
        store.create(&record_at(now, ttl)).await.expect("create");
    }
    clock.advance(Duration::from_secs(11));
    assert_eq!(store.delete_expired().await.expect("cleanup"), 50);
    assert_eq!(count(store).await, 3);
    assert_eq!(store.delete_expired().await.expect("cleanup"), 0);
}

/// express-mysql-session #106 and Spring Session #838: cleanup deadlocking with updates.
/// Here, live traffic (creates, saves, touches of sessions at the edge of expiry, logouts)
/// runs while the cleanup removes 20,000 expired rows in batches: no operation may fail,
/// every live session survives, every expired one goes. Durations are printed, not
/// asserted (the benchmark measures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_racing_live_traffic_fails_nothing() {
    require_mysql!();
    let scoped = scoped_with(MySqlStore::builder().cleanup_batch_size(500)).await;
    let store = scoped.0.store.clone();
    let t = table(&store);
    let now = Timestamp::now();
    // 20,000 expired rows, written in bulk.
    let bytes =
        coatcheck_core::Codec::encode(&coatcheck_core::NativeCodec, &record_at(now, HOUR).data)
            .expect("encode");
    for chunk in 0..20 {
        let mut sql =
            format!("INSERT INTO {t} (id, version, data, user_id, created_at, expires_at) VALUES ");
        for i in 0..1000 {
            if i > 0 {
                sql.push(',');
            }
            let user = (chunk * 1000 + i) % 50;
            sql.push_str(&format!(
                "('{}', 0, ?, 'u{user}', 0, {})",
                SessionId::generate().as_str(),
                now.as_millis() - 1 - i64::from(i)
            ));
        }
        let mut q = sqlx::query(&sql);
        for _ in 0..1000 {
            q = q.bind(&bytes);
        }
        q.execute(store.pool()).await.expect("bulk insert");
    }
    let traffic = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut live = Vec::new();
            let started = std::time::Instant::now();
            let mut ops = 0u32;
            while started.elapsed() < Duration::from_secs(3) || ops < 200 {
                let mut r = record_at(Timestamp::now(), HOUR);
                r.user_id = Some(format!("u{}", ops % 50));
                store.create(&r).await.expect("create during cleanup");
                r.data.insert("n".into(), json!(ops));
                r.version = store.save(&r).await.expect("save during cleanup");
                assert!(store.touch(&r.id, r.expires_at).await.expect("touch"));
                if ops.is_multiple_of(10) {
                    store
                        .delete_for_user(&format!("u{}", ops % 50), Some(&r.id))
                        .await
                        .expect("logout others during cleanup");
                    live.retain(|(u, _): &(String, SessionId)| *u != format!("u{}", ops % 50));
                }
                live.push((format!("u{}", ops % 50), r.id.clone()));
                ops += 1;
            }
            (live, ops)
        })
    };
    let started = std::time::Instant::now();
    let mut removed = 0;
    while started.elapsed() < Duration::from_secs(2) || removed < 20_000 {
        removed += store
            .delete_expired()
            .await
            .expect("cleanup during traffic");
        if removed >= 20_000 {
            break;
        }
    }
    let cleanup = started.elapsed();
    let (live, ops) = traffic.await.expect("traffic");
    eprintln!("cleanup of {removed} rows in {cleanup:?} beside {ops} live request cycles");
    assert_eq!(removed, 20_000);
    for (_, id) in &live {
        assert!(
            store.load(id).await.expect("load").is_some(),
            "a live session went"
        );
    }
}

/// Defect: the first write after the server closed an idle pooled connection failed
/// (`Backend(Io(…))`: a `wait_timeout` shorter than the pool's idle timeout, no error packet
/// from MariaDB), because a write lost to an I/O error is not retried (it may have run). A
/// connection idle for a second or more is now pinged before use and replaced if dead, so the
/// write is sent on a live one.
#[tokio::test]
async fn the_first_write_after_the_server_closed_an_idle_connection_succeeds() {
    require_mysql!();
    let url = common::url().await;
    let relay = common::Relay::start(&url).await;
    let table = harness::unique_name("cc_idle");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: table.clone(),
    };
    let store = MySqlStore::builder()
        .table(&table)
        .max_connections(2)
        .connect_lazy(&relay.url(&url))
        .expect("config");
    store.migrate().await.expect("migrate");
    let mut record = record_at(Timestamp::now(), HOUR);
    store.create(&record).await.expect("create");
    record = store.load(&record.id).await.expect("load").expect("live");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    relay.cut();
    record.data.insert("views".into(), json!(2));
    store
        .save(&record)
        .await
        .expect("the first write after the close");
    let loaded = store.load(&record.id).await.expect("load").expect("live");
    assert_eq!(loaded.data.get("views"), Some(&json!(2)));
}

/// A table of the session table's name made by something else is refused at `migrate()`.
#[tokio::test]
async fn a_table_of_the_wrong_shape_is_refused_at_migrate() {
    require_mysql!();
    let url = common::url().await;
    let table = harness::unique_name("cc_shape");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: table.clone(),
    };
    common::admin(
        &url,
        format!("CREATE TABLE `{table}` (sid VARCHAR(64) PRIMARY KEY)"),
    )
    .expect("foreign table");
    let store = MySqlStore::builder()
        .table(&table)
        .connect_lazy(&url)
        .expect("config");
    assert!(matches!(
        store.migrate().await,
        Err(coatcheck_mysql::MigrateError::WrongShape { .. })
    ));
}

/// A database the user cannot write: with SELECT only, reads work, every write and a
/// migration that would create a table fail with typed errors (the server's "command
/// denied"), nothing is lost and nothing panics.
#[tokio::test]
async fn a_user_who_cannot_write_gets_errors_and_loses_nothing() {
    require_mysql!();
    let url = common::url().await;
    let scoped = scoped_store().await;
    let store = &scoped.0.store;
    let r = record_at(Timestamp::now(), HOUR);
    store.create(&r).await.expect("create");
    let user = harness::unique_name("cc_ro");
    let (_, host) = url.rsplit_once('@').expect("a user in MYSQL_URL");
    let database = host
        .rsplit_once('/')
        .map_or("test", |(_, db)| db)
        .to_owned();
    common::admin(
        &url,
        format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; \
             CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'; \
             GRANT SELECT ON `{database}`.* TO '{user}'@'%'; \
             GRANT SELECT ON `{database}`.* TO '{user}'@'localhost'"
        ),
    )
    .expect("a read-only user");
    struct DropUser(String, String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            let _ = common::admin(
                &self.0,
                format!(
                    "DROP USER IF EXISTS '{u}'@'%', '{u}'@'localhost'",
                    u = self.1
                ),
            );
        }
    }
    let _drop = DropUser(url.clone(), user.clone());
    let ro = MySqlStore::builder()
        .table(&scoped.0.guard.table)
        .connect_lazy(&format!("mysql://{user}:pw@{host}"))
        .expect("config");
    assert_eq!(ro.load(&r.id).await.expect("reads work"), Some(r.clone()));
    let denied = |e: &StoreError| matches!(e, StoreError::Backend(_));
    let e = ro
        .create(&record_at(Timestamp::now(), HOUR))
        .await
        .unwrap_err();
    assert!(denied(&e), "{e:?}");
    let mut changed = r.clone();
    changed.data.insert("x".into(), json!(2));
    let e = ro.save(&changed).await.unwrap_err();
    assert!(denied(&e), "{e:?}");
    let e = ro.delete(&r.id).await.unwrap_err();
    assert!(denied(&e), "{e:?}");
    let other = MySqlStore::builder()
        .table(format!("{}_new", scoped.0.guard.table))
        .connect_lazy(&format!("mysql://{user}:pw@{host}"))
        .expect("config");
    assert!(matches!(
        other.migrate().await,
        Err(coatcheck_mysql::MigrateError::Database(_))
    ));
    assert_eq!(store.load(&r.id).await.expect("load"), Some(r));
}
