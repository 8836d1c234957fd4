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

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coatcheck::SessionStore;
use coatcheck_conformance::{harness, Backend};
use express_shared::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

const NEW: &str = "the new secret";
const OLD: &str = "the old secret";

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/express-app")
}

/// Whether node and the app's dependencies are there; a visible skip otherwise.
fn have_node() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let deps = app_dir().join("node_modules/express-session").is_dir();
    if node && deps {
        return true;
    }
    let msg = format!(
        "skipped: express interop needs node and `npm ci` in {} (node: {node}, node_modules: {deps})",
        app_dir().display()
    );
    let required = std::env::var("COATCHECK_REQUIRE_BACKENDS")
        .is_ok_and(|v| v.split(',').any(|b| b.trim() == "node"));
    if required {
        panic!("{msg}, but COATCHECK_REQUIRE_BACKENDS requires node");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

/// The Express app, killed on drop.
struct Node {
    child: Child,
    base: String,
}

impl Node {
    fn start(config: &Config, secrets: &[&str]) -> Node {
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(app_dir())
            .env("PORT", "0")
            .env("STORE", &config.store)
            .env("SESSION_SECRETS", secrets.join(","))
            .env("REDIS_URL", &config.redis_url)
            .env("REDIS_PREFIX", &config.redis_prefix)
            .env("DATABASE_URL", &config.database_url)
            .env("PG_TABLE", &config.pg_table)
            .env("MONGODB_URL", &config.mongodb_url)
            .env("MONGO_DB", &config.mongo_db)
            .env("MONGO_COLLECTION", &config.mongo_collection)
            .env("MYSQL_URL", &config.mysql_url)
            .env("MYSQL_TABLE", &config.mysql_table)
            .env("SQLITE_FILE", &config.sqlite_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("piped stdout");
        // The app prints `listening <port>` once it serves (its store is ready by then).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().to_owned());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the Express app did not start within 60 s");
        Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Rust app (the example's router) on a loopback port.
async fn serve_rust(store: Arc<dyn SessionStore>, config: &Config, secrets: &[&str]) -> String {
    let mut config = config.clone();
    config.secrets = secrets.iter().map(|s| s.to_string()).collect();
    let app = express_shared::router(express_shared::layer(store, &config).expect("layer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

struct Reply {
    status: StatusCode,
    /// `connect.sid=...` from Set-Cookie, if one was set.
    cookie: Option<String>,
    body: Value,
}

async fn call(http: &reqwest::Client, method: &str, url: &str, cookie: Option<&str>) -> Reply {
    let mut req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    if let Some(c) = cookie {
        req = req.header(reqwest::header::COOKIE, c);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status();
    let cookie = res
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("connect.sid=") && !c.starts_with("connect.sid=;"))
        .map(|c| c.split(';').next().unwrap_or(c).to_owned());
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {url}: not JSON ({status}): {text}"));
    Reply {
        status,
        cookie,
        body,
    }
}

async fn run(config: Config) {
    // The Rust store first: for Postgres it creates the table the way connect-pg-simple does.
    let store = express_shared::store(&config).await.expect("store");
    let rust = serve_rust(store.clone(), &config, &[NEW, OLD]).await;
    let rust_before_rotation = serve_rust(store.clone(), &config, &[OLD]).await;
    let node_app = Node::start(&config, &[NEW, OLD]); // killed when this test ends
    let node = node_app.base.clone();
    let http = reqwest::Client::new();
    let url = |base: &str, path: &str| format!("{base}{path}");

    // 1. Log in on Node; Rust reads the session with the same cookie.
    let r = call(&http, "POST", &url(&node, "/login?user=alice"), None).await;
    assert_eq!(r.status, StatusCode::OK, "node login: {}", r.body);
    let alice = r.cookie.expect("Node sets connect.sid");
    let r = call(&http, "GET", &url(&rust, "/me"), Some(&alice)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "rust reads node's login: {}",
        r.body
    );
    assert_eq!(r.body["userId"], json!("alice"));
    assert_eq!(r.body["loginSide"], json!("node"));

    // 2. Rust modifies it; Node reads the change; Node modifies; Rust reads that.
    for expected in 1..=2 {
        let r = call(&http, "POST", &url(&rust, "/counter"), Some(&alice)).await;
        assert_eq!(r.body["counter"], json!(expected), "rust counter");
    }
    let r = call(
        &http,
        "POST",
        &url(&rust, "/note?text=from%20rust%20%E2%9C%93"),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&http, "GET", &url(&node, "/me"), Some(&alice)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "node reads rust's change: {}",
        r.body
    );
    assert_eq!(r.body["counter"], json!(2));
    assert_eq!(r.body["note"], json!("from rust ✓"));
    assert_eq!(r.body["userId"], json!("alice"));
    let r = call(&http, "POST", &url(&node, "/counter"), Some(&alice)).await;
    assert_eq!(r.body["counter"], json!(3));
    let r = call(&http, "GET", &url(&rust, "/me"), Some(&alice)).await;
    assert_eq!(r.body["counter"], json!(3), "rust reads node's change");
    let r = call(&http, "GET", &url(&node, "/session"), Some(&alice)).await;
    assert_eq!(
        r.body["data"],
        json!({"userId": "alice", "loginSide": "node", "counter": 3, "note": "from rust ✓"}),
        "node sees exactly these keys, in this order"
    );

    // 3. Log in on Rust; Node reads it.
    let r = call(&http, "POST", &url(&rust, "/login?user=bob"), None).await;
    assert_eq!(r.status, StatusCode::OK, "rust login: {}", r.body);
    let bob = r.cookie.expect("Rust sets connect.sid");
    assert!(
        bob.starts_with("connect.sid=s%3A"),
        "express-session's format: {bob}"
    );
    let r = call(&http, "GET", &url(&node, "/me"), Some(&bob)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "node reads rust's login: {}",
        r.body
    );
    assert_eq!(r.body["userId"], json!("bob"));
    assert_eq!(r.body["loginSide"], json!("rust"));
    let r = call(&http, "POST", &url(&node, "/counter"), Some(&bob)).await;
    assert_eq!(r.body["counter"], json!(1));
    let r = call(&http, "GET", &url(&rust, "/me"), Some(&bob)).await;
    assert_eq!(r.body["counter"], json!(1));

    // 4. Destroy on one side: gone on the other, both ways.
    let r = call(&http, "POST", &url(&node, "/logout"), Some(&bob)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&http, "GET", &url(&rust, "/me"), Some(&bob)).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "rust after node logout: {}",
        r.body
    );
    let r = call(&http, "GET", &url(&node, "/me"), Some(&bob)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(&http, "POST", &url(&rust, "/logout"), Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&http, "GET", &url(&node, "/me"), Some(&alice)).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "node after rust logout: {}",
        r.body
    );
    let r = call(&http, "GET", &url(&rust, "/me"), Some(&alice)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // 5. A cookie signed with the rotated (old) secret is accepted by both; one signed with a
    //    secret neither knows is accepted by neither.
    let r = call(
        &http,
        "POST",
        &url(&rust_before_rotation, "/login?user=carol"),
        None,
    )
    .await;
    let carol = r.cookie.expect("cookie signed with the old secret");
    for (side, base) in [("node", &node), ("rust", &rust)] {
        let r = call(&http, "GET", &url(base, "/me"), Some(&carol)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{side} accepts the old secret: {}",
            r.body
        );
        assert_eq!(r.body["userId"], json!("carol"));
    }
    let sid = carol
        .strip_prefix("connect.sid=s%3A")
        .and_then(|v| v.split('.').next())
        .expect("sid");
    let forged = coatcheck::KeyRing::new_allowing_weak(["not a secret of theirs"])
        .expect("ring")
        .sign_cookie_value(&coatcheck::SessionId::parse(sid).expect("id"));
    let forged = format!("connect.sid={forged}");
    for (side, base) in [("node", &node), ("rust", &rust)] {
        let r = call(&http, "GET", &url(base, "/me"), Some(&forged)).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{side} refuses a foreign signature"
        );
    }
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
    run(config).await;
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
    run(config).await;
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
    run(config).await;
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
    run(config).await;
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
    run(config).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}
