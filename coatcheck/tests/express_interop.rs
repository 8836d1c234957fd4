//! Sessions shared with a real Express app, for each store in express-compatible mode.
//!
//! The Node side is `tests/express-app/` (express, express-session, connect-redis,
//! connect-pg-simple, connect-mongo, pinned by its `package-lock.json`; `npm ci` there). The
//! Rust side is the `express_shared` example itself. Both run as real HTTP servers on
//! loopback ports, on the same store namespace, with the same secret list; every step asserts
//! what each side answers.
//!
//! Needs `node` and `tests/express-app/node_modules`; without them each test prints a
//! `skipped:` line, which is a failure when `COATCHECK_REQUIRE_BACKENDS` names `node`.

#[path = "../examples/express_shared.rs"]
#[allow(dead_code)]
mod express_shared;

#[path = "interop/scenario.rs"]
mod scenario;

use std::sync::Arc;

use coatcheck::SessionStore;
use coatcheck_conformance::{harness, Backend};
use express_shared::Config;
use scenario::have_node;

/// The Rust app (the example's router) on a loopback port.
async fn serve_rust(
    store: Arc<dyn SessionStore>,
    mut config: Config,
    secrets: Vec<String>,
) -> String {
    config.secrets = secrets;
    let app = express_shared::router(express_shared::layer(store, &config).expect("layer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

fn base_config(store: &str) -> Config {
    let mut c = Config::from_env();
    c.store = store.to_owned();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_redis() {
    if !have_node() || !harness::require(Some(Backend::Redis)).await {
        return;
    }
    let mut config = base_config("redis");
    config.redis_url = harness::url(Backend::Redis).await.expect("url");
    config.redis_prefix = format!("{}:", harness::unique_name("interop"));
    scenario::run(config, serve_rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_postgres() {
    if !have_node() || !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let mut config = base_config("postgres");
    config.database_url = harness::url(Backend::Postgres).await.expect("url");
    config.pg_table = harness::unique_name("interop").replace('-', "_");
    let table = config.pg_table.clone();
    let url = config.database_url.clone();
    scenario::run(config, serve_rust).await;
    // The table name passed validation as an identifier; drop what both apps wrote.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .expect("drop the test table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_mongo() {
    if !have_node() || !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    let mut config = base_config("mongo");
    config.mongodb_url = harness::url(Backend::Mongo).await.expect("url");
    config.mongo_collection = harness::unique_name("interop");
    scenario::run(config, serve_rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_mysql() {
    if !have_node() || !harness::require(Some(Backend::Mysql)).await {
        return;
    }
    let mut config = base_config("mysql");
    config.mysql_url = harness::url(Backend::Mysql).await.expect("url");
    config.mysql_table = harness::unique_name("interop").replace('-', "_");
    let table = config.mysql_table.clone();
    let url = config.mysql_url.clone();
    scenario::run(config, serve_rust).await;
    // The table name passed validation as an identifier; drop what both apps wrote.
    let pool = sqlx::MySqlPool::connect(&url).await.expect("connect");
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
        .execute(&pool)
        .await
        .expect("drop the test table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_sqlite() {
    if !have_node() {
        return;
    }
    let mut config = base_config("sqlite");
    let file = std::env::temp_dir().join(format!("{}.db", harness::unique_name("interop")));
    config.sqlite_file = file.display().to_string();
    scenario::run(config, serve_rust).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}
