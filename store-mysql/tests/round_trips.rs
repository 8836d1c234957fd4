//! One statement per operation on the success path, counted by the server: the global
//! `Com_stmt_execute` counter around each call, on a one-connection pool whose statements
//! are already prepared (so `Com_stmt_prepare` stays still). The only test of its binary:
//! cargo runs test binaries one after the other, so no other test moves the counters.

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{Device, Record, SessionId, SessionStore, Timestamp};
use coatcheck_mysql::MySqlStore;
use sqlx::mysql::MySqlPoolOptions;

const HOUR: Duration = Duration::from_secs(3600);

async fn counters(admin: &sqlx::MySqlPool) -> (i64, i64) {
    use sqlx::Row as _;
    // The text protocol (raw_sql): the admin's own query is no prepared statement.
    let rows: Vec<(String, String)> = sqlx::raw_sql(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_stmt_execute', 'Com_stmt_prepare')",
    )
    .fetch_all(admin)
    .await
    .expect("status")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse().ok())
            .expect("counter")
    };
    (get("Com_stmt_execute"), get("Com_stmt_prepare"))
}

fn record(user: &str) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.user_id = Some(user.into());
    r.device = Some(Device::new().with_user_agent(Some("test")));
    r
}

#[tokio::test]
async fn one_statement_per_operation() {
    if !harness::require(Some(Backend::Mysql)).await {
        return;
    }
    let url = common::url().await;
    let table = harness::unique_name("cc_rt");
    let _guard = common::TableGuard {
        url: url.clone(),
        table: table.clone(),
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("pool");
    let store = MySqlStore::builder()
        .table(&table)
        .build(pool)
        .expect("store");
    store.migrate().await.expect("migrate");
    // The admin connection runs text queries only (no prepared statements of its own).
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("admin");

    // Warm the statement cache of the one connection: every operation once.
    let mut warm = record("w");
    store.create(&warm).await.expect("create");
    store.load(&warm.id).await.expect("load");
    warm.version = store.save(&warm).await.expect("save");
    store.touch(&warm.id, warm.expires_at).await.expect("touch");
    store.list_for_user("w").await.expect("list");
    let handle = warm
        .device
        .as_ref()
        .expect("device")
        .handle
        .as_str()
        .to_owned();
    store.delete_device("w", &handle).await.expect("device");
    store.create(&warm).await.expect("create");
    store
        .delete_version(&warm.id, warm.version)
        .await
        .expect("delete_version");
    store.delete(&warm.id).await.expect("delete");
    store
        .delete_for_user("w", None)
        .await
        .expect("delete_for_user");
    let _ = store.save(&warm).await; // the probe
    counters(&admin).await;

    let mut r = record("u");
    let mut measured = Vec::new();
    macro_rules! count {
        ($what:expr, $expected:expr, $op:expr) => {{
            let before = counters(&admin).await;
            let out = $op;
            let after = counters(&admin).await;
            measured.push(($what, after.0 - before.0, after.1 - before.1, $expected));
            out
        }};
    }
    count!("create", 1, store.create(&r).await.expect("create"));
    count!("load", 1, store.load(&r.id).await.expect("load"));
    r.version = count!("save", 1, store.save(&r).await.expect("save"));
    count!(
        "touch",
        1,
        store.touch(&r.id, r.expires_at).await.expect("touch")
    );
    count!(
        "list_for_user",
        1,
        store.list_for_user("u").await.expect("list")
    );
    let mut stale = r.clone();
    stale.version = 0;
    count!(
        "save (conflict)",
        2,
        store.save(&stale).await.expect_err("conflict")
    );
    count!(
        "delete_version",
        1,
        store.delete_version(&r.id, r.version).await.expect("dv")
    );
    store.create(&r).await.expect("create");
    let handle = r
        .device
        .as_ref()
        .expect("device")
        .handle
        .as_str()
        .to_owned();
    count!(
        "delete_device",
        1,
        store.delete_device("u", &handle).await.expect("dd")
    );
    store.create(&r).await.expect("create");
    count!(
        "delete_for_user",
        1,
        store.delete_for_user("u", None).await.expect("dfu")
    );
    store.create(&r).await.expect("create");
    count!("delete", 1, store.delete(&r.id).await.expect("delete"));

    // Express mode (express-mysql-session's table): the same, its compare-and-set on the
    // JSON's hash computed by the server in the one UPDATE.
    let express_table = format!("{table}_ems");
    let _express_guard = common::TableGuard {
        url: url.clone(),
        table: express_table.clone(),
    };
    let express = MySqlStore::builder()
        .table(&express_table)
        .express(coatcheck_core::ExpressFormat::new())
        .build(
            MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("pool"),
        )
        .expect("store");
    express.migrate().await.expect("migrate");
    let plain = |user: &str| {
        let now = Timestamp::now();
        let mut r = Record::new(SessionId::generate(), now, now + HOUR);
        r.user_id = Some(user.into());
        r
    };
    let mut warm = plain("w");
    express.create(&warm).await.expect("create");
    warm = express.load(&warm.id).await.expect("load").expect("live");
    warm.version = express.save(&warm).await.expect("save");
    express
        .touch(&warm.id, warm.expires_at)
        .await
        .expect("touch");
    express.list_for_user("w").await.expect("list");
    express
        .delete_version(&warm.id, warm.version)
        .await
        .expect("dv");
    express.delete_for_user("w", None).await.expect("dfu");
    express.delete(&warm.id).await.expect("delete");
    let mut e = plain("e");
    count!(
        "express create",
        1,
        express.create(&e).await.expect("create")
    );
    e = count!(
        "express load",
        1,
        express.load(&e.id).await.expect("load").expect("live")
    );
    e.data.insert("n".into(), serde_json::json!(1));
    e.version = count!("express save", 1, express.save(&e).await.expect("save"));
    count!(
        "express touch",
        1,
        express.touch(&e.id, e.expires_at).await.expect("touch")
    );
    count!(
        "express list_for_user",
        1,
        express.list_for_user("e").await.expect("list")
    );
    count!(
        "express delete_version",
        1,
        express.delete_version(&e.id, e.version).await.expect("dv")
    );
    express.create(&e).await.expect("create");
    count!(
        "express delete_for_user",
        1,
        express.delete_for_user("e", None).await.expect("dfu")
    );
    express.create(&e).await.expect("create");
    count!(
        "express delete",
        1,
        express.delete(&e.id).await.expect("delete")
    );

    for (what, executed, prepared, _) in &measured {
        eprintln!("{what}: {executed} statement(s), {prepared} prepared");
    }
    for (what, executed, prepared, expected) in measured {
        assert_eq!((executed, prepared), (expected, 0), "{what}");
    }
}
