//! The cross-check against the real Express app (`tests/express-app/`), written once for
//! every Rust framework: the Rust side is whatever `serve` starts (the axum example's
//! router in `tests/express_interop.rs`, the actix-web adapter in
//! `actix/tests/express_interop.rs`). Included by `#[path]`, next to the
//! `express_shared` example it takes its configuration and store from.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coatcheck::SessionStore;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::express_shared::{self, Config};

pub const NEW: &str = "the new secret";
pub const OLD: &str = "the old secret";

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../coatcheck/tests/express-app")
}

/// Whether node and the app's dependencies are there; a visible skip otherwise.
pub fn have_node() -> bool {
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

/// The whole cross-check against the Express app, the Rust side served by `serve` (the
/// store, the configuration, the secrets → the base URL of an app on a loopback port).
#[allow(dead_code)]
pub async fn run<S, F>(config: Config, serve: S)
where
    S: Fn(Arc<dyn SessionStore>, Config, Vec<String>) -> F,
    F: std::future::Future<Output = String>,
{
    // The Rust store first: for Postgres it creates the table the way connect-pg-simple does.
    let store = express_shared::store(&config).await.expect("store");
    let secrets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let rust = serve(store.clone(), config.clone(), secrets(&[NEW, OLD])).await;
    let rust_before_rotation = serve(store.clone(), config.clone(), secrets(&[OLD])).await;
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
