//! The login example's pages, in a real browser and over plain requests.
//!
//! `devices_page_in_chromium` serves the example's router (`examples/login/app.rs`) on
//! loopback ports — without a cap, with at most 2 devices and `Refuse`, with at most 2 and
//! `EvictLeastRecentlySeen` — and runs `tests/browser/devices.mjs`, which drives Debian's
//! headless Chromium through playwright-core: two devices sign in through the form, the
//! first sees both and signs the second out from the page, the caps refuse or evict. It
//! saves a screenshot of the devices page at `<target dir>/browser/devices.png`.
//!
//! Needs `node`, `npm ci` in `tests/browser` and `/usr/bin/chromium` (Debian's `chromium`
//! package); without them it prints a `skipped: browser:` line, which is a failure when
//! `COATCHECK_REQUIRE_BACKENDS` names `browser`. The other tests here need nothing.

#[path = "../examples/login/app.rs"]
mod app;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{LimitPolicy, SessionStore, Timestamp};
use coatcheck_conformance::kit::{Reply, TestClient};
use http::{header, Method, Request, StatusCode};

const CHROMIUM: &str = "/usr/bin/chromium";

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn options(session_limit: Option<(u32, LimitPolicy)>) -> app::Options {
    app::Options {
        secret: "the browser test's secret, thirty-two bytes or more".into(),
        session_limit,
    }
}

/// Whether node, playwright-core and Chromium are there; a visible skip otherwise.
fn have_browser() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let deps = script_dir().join("node_modules/playwright-core").is_dir();
    let chromium = Path::new(CHROMIUM).is_file();
    if node && deps && chromium {
        return true;
    }
    let mut missing = Vec::new();
    if !node {
        missing.push("node".to_owned());
    }
    if !deps {
        missing.push(format!("`npm ci` in {}", script_dir().display()));
    }
    if !chromium {
        missing.push(format!(
            "{CHROMIUM} (apt-get install chromium chromium-driver)"
        ));
    }
    let msg = format!("skipped: browser: missing {}", missing.join(", "));
    let required = std::env::var("COATCHECK_REQUIRE_BACKENDS")
        .is_ok_and(|v| v.split(',').any(|b| b.trim() == "browser"));
    if required {
        panic!("{msg}, but COATCHECK_REQUIRE_BACKENDS requires browser");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

/// The example's app on a loopback port, with peer addresses (as `main.rs` serves it).
async fn serve(session_limit: Option<(u32, LimitPolicy)>) -> String {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let router = app::app(store, options(session_limit)).expect("the app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    format!("http://{addr}")
}

/// Another site (`localhost`, where the app is on `127.0.0.1`: another site to the
/// browser) whose page holds a form that posts to the app's `/logout-others`.
async fn serve_attacker(target: &str) -> String {
    let page = format!(
        r#"<!doctype html><title>Win a prize</title>
<form id="forged" method="post" action="{target}/logout-others">
  <input type="hidden" name="csrf_token" value="guessed">
  <button id="forge" type="submit">Claim your prize</button>
</form>"#
    );
    let router = Router::new().route(
        "/",
        axum::routing::get(move || std::future::ready(axum::response::Html(page.clone()))),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_page_in_chromium() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let base = serve(None).await;
    let refuse = serve(Some((2, LimitPolicy::Refuse))).await;
    let evict = serve(Some((2, LimitPolicy::EvictLeastRecentlySeen))).await;
    // `<target dir>/browser/devices.png`, next to the tmp dir cargo gives integration tests.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("browser");
    std::fs::create_dir_all(&shots).expect("create the screenshot dir");
    let screenshot = shots.join("devices.png");
    let _ = std::fs::remove_file(&screenshot);

    let attacker = serve_attacker(&base).await;
    let mut child = Command::new("node")
        .arg("devices.mjs")
        .args([&base, &refuse, &evict])
        .arg(&screenshot)
        .arg(&attacker)
        .current_dir(script_dir())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .spawn()
        .expect("start node");
    // The servers run on this runtime's workers; wait for node off them.
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("the waiting thread");
    let status = status.expect("the browser script did not finish within 90 s");
    assert!(status.success(), "the browser script failed: {status}");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!(
        "browser: passed in {:.1} s, screenshot {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
}

/// One device talking to the router directly: its cookies, kept across requests (the
/// kit's jar).
struct Device {
    client: TestClient,
    user_agent: &'static str,
}

impl Device {
    fn new(app: &Router, user_agent: &'static str) -> Device {
        Device {
            client: TestClient::new(app.clone()),
            user_agent,
        }
    }

    async fn send(&mut self, method: Method, uri: &str, body: Option<(&str, String)>) -> Reply {
        self.send_with(method, uri, body, &[]).await
    }

    /// A request as a script of the page sends it: a post carries the session's CSRF token
    /// (from `GET /csrf`) in `x-csrf-token`.
    async fn send_with(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<(&str, String)>,
        extra: &[(&str, &str)],
    ) -> Reply {
        if method == Method::GET {
            return self.raw(method, uri, body, extra).await;
        }
        let token = self.raw(Method::GET, "/csrf", None, &[]).await.json()["csrf_token"]
            .as_str()
            .expect("a CSRF token")
            .to_owned();
        let mut extra = extra.to_vec();
        extra.push(("x-csrf-token", &token));
        self.raw(method, uri, body, &extra).await
    }

    /// The request as given.
    async fn raw(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<(&str, String)>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "example.test")
            .header(header::USER_AGENT, self.user_agent);
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        match body {
            Some((content_type, body)) => {
                let req = req.header(header::CONTENT_TYPE, content_type);
                self.client.send(req, Body::from(body)).await
            }
            None => self.client.send(req, Body::empty()).await,
        }
    }

    async fn json_login(&mut self, user: &str, password: &str) -> Reply {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        self.send(Method::POST, "/login", Some(("application/json", body)))
            .await
    }

    async fn form_login(&mut self, user: &str, password: &str) -> Reply {
        let body = format!("username={user}&password={password}");
        let form = "application/x-www-form-urlencoded";
        self.send(Method::POST, "/login", Some((form, body))).await
    }
}

fn router(session_limit: Option<(u32, LimitPolicy)>) -> Router {
    app::app(Arc::new(MemoryStore::new()), options(session_limit)).expect("the app")
}

#[tokio::test]
async fn the_json_routes_and_the_form_share_the_login() {
    let app = router(None);
    let mut api = Device::new(&app, "curl/8.5.0");
    assert_eq!(api.send(Method::GET, "/sessions", None).await.status, 401);
    let r = api.send(Method::POST, "/sessions/AAAA/revoke", None).await;
    assert_eq!(r.status, 401);
    let r = api.json_login("alice", "nope").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::UNAUTHORIZED, "invalid credentials")
    );
    let r = api.json_login("alice", "wonderland").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "logged in"));

    let mut browser = Device::new(
        &app,
        "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
    );
    let r = browser.send(Method::GET, "/", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .text()
        .contains(r#"<form id="login-form" method="post" action="/login">"#));
    let r = browser.form_login("alice", "nope").await;
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("Wrong username or password."),
        "{}",
        r.text()
    );
    let r = browser.form_login("alice", "wonderland").await;
    assert_eq!(
        (r.status, r.header("location")),
        (StatusCode::SEE_OTHER, Some("/devices"))
    );
    let r = browser.send(Method::GET, "/", None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (StatusCode::SEE_OTHER, Some("/devices"))
    );

    // The API caller sees both devices, itself first; the JSON has what the page shows.
    let list = api.send(Method::GET, "/sessions", None).await.json();
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["user_agent"], "curl/8.5.0");
    assert_eq!(list[1]["current"], false);
    for s in list {
        assert!(s["handle"].is_string() && s["created_at"].is_i64() && s["last_seen"].is_i64());
    }
    let browser_handle = list[1]["handle"].as_str().expect("a handle").to_owned();

    // bob cannot revoke alice's device; a made-up handle revokes nothing.
    let mut bob = Device::new(&app, "curl/8.5.0");
    assert_eq!(bob.json_login("bob", "builder").await.status, 200);
    let uri = format!("/sessions/{browser_handle}/revoke");
    let r = bob.send(Method::POST, &uri, None).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, serde_json::json!({ "revoked": false }))
    );
    let r = api
        .send(Method::POST, "/sessions/not-a-handle/revoke", None)
        .await;
    assert_eq!(r.json(), serde_json::json!({ "revoked": false }));
    assert_eq!(
        browser.send(Method::GET, "/devices", None).await.status,
        200
    );

    // A post from another origin is refused before it reaches the session, and so is one
    // without the token.
    let r = api
        .send_with(Method::POST, &uri, None, &[("origin", "http://evil.test")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api.raw(Method::POST, &uri, None, &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::FORBIDDEN, "CSRF token missing")
    );
    let r = api
        .send_with(
            Method::POST,
            &uri,
            None,
            &[("origin", "http://example.test")],
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({ "revoked": true }));
    let r = browser.send(Method::GET, "/devices", None).await;
    assert_eq!(
        (r.status, r.header("location")),
        (StatusCode::SEE_OTHER, Some("/"))
    );

    // logout-others as JSON; logout as a form post goes back to the form.
    assert_eq!(browser.form_login("alice", "wonderland").await.status, 303);
    let r = api.send(Method::POST, "/logout-others", None).await;
    assert_eq!(r.json(), serde_json::json!({ "signed_out": 1 }));
    let form = Some(("application/x-www-form-urlencoded", String::new()));
    let r = api.send(Method::POST, "/logout", form).await;
    assert_eq!(
        (r.status, r.header("location")),
        (StatusCode::SEE_OTHER, Some("/"))
    );
    assert_eq!(api.send(Method::GET, "/me", None).await.status, 401);
}

#[tokio::test]
async fn the_devices_page_escapes_what_the_client_sent() {
    let app = router(None);
    let mut d = Device::new(&app, "<script>alert(1)</script>");
    assert_eq!(d.form_login("bob", "builder").await.status, 303);
    let page = d.send(Method::GET, "/devices", None).await.text();
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{page}"
    );
}

#[tokio::test]
async fn a_refused_login_leaves_the_session_as_it_was() {
    let app = router(Some((1, LimitPolicy::Refuse)));
    let mut laptop = Device::new(&app, "laptop");
    assert_eq!(laptop.json_login("alice", "wonderland").await.status, 200);
    // bob is signed in on the phone, then tries alice's account: alice is at her cap.
    let mut phone = Device::new(&app, "phone");
    assert_eq!(phone.json_login("bob", "builder").await.status, 200);
    let r = phone.form_login("alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text().contains(app::TOO_MANY_DEVICES), "{}", r.text());
    let r = phone.json_login("alice", "wonderland").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Still bob, with bob's roles only: alice's did not stay behind.
    let me = phone.send(Method::GET, "/me", None).await.json();
    assert_eq!(
        me,
        serde_json::json!({ "user_id": "bob", "roles": ["user"] })
    );
    assert_eq!(phone.send(Method::GET, "/admin", None).await.status, 403);
}

#[test]
fn devices_are_described_and_times_are_relative() {
    assert_eq!(
        app::describe(Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36"
        )),
        "Chrome on Linux"
    );
    assert_eq!(app::describe(None), "Unknown device");
    assert_eq!(app::describe(Some("")), "Unknown device");
    let now = Timestamp::from_millis(10_000_000_000);
    let ago = |secs: i64| app::ago(now, Timestamp::from_millis(10_000_000_000 - secs * 1000));
    assert_eq!(ago(-5), "just now");
    assert_eq!(ago(10), "just now");
    assert_eq!(ago(60), "1 minute ago");
    assert_eq!(ago(3 * 60 + 10), "3 minutes ago");
    assert_eq!(ago(3_600), "1 hour ago");
    assert_eq!(ago(5 * 3_600), "5 hours ago");
    assert_eq!(ago(3 * 86_400), "3 days ago");
}
