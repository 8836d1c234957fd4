//! Device details through the middleware: what a login records, the handle across
//! rotations, listing with `current`, revoking one device, `last_seen` moving with the
//! touch, and the per-user session limit (refuse, evict, concurrent logins, a refused
//! login changing nothing).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::memory::MemoryStore;
use coatcheck::{
    Clock, ConfigError, IpCapture, KeyRing, LimitPolicy, ManualClock, Secure, Session,
    SessionError, SessionLayer, SessionLayerBuilder, Timestamp, UserSession, ROLES_KEY,
};
use coatcheck_conformance::kit::{Reply, TestClient};
use http::header::USER_AGENT;
use http::{Request, StatusCode};

const SECRET: &str = "devices test secret, long enough: 0123456789";

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    let role = format!("{user}-role");
    session.login_with(user, [(ROLES_KEY, vec![role])]).await?;
    Ok("ok")
}

async fn regenerate(session: Session) -> Result<&'static str, SessionError> {
    session.regenerate().await?;
    Ok("ok")
}

async fn devices(session: Session) -> Result<Json<Vec<UserSession>>, SessionError> {
    Ok(Json(session.list_user_sessions().await?))
}

async fn revoke(session: Session, Path(h): Path<String>) -> Result<String, SessionError> {
    Ok(session.revoke_device(&h).await?.to_string())
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    let roles: Option<Vec<String>> = session.get(ROLES_KEY).await?;
    Ok(format!(
        "{}:{}",
        session.user_id().await?.unwrap_or_default(),
        roles.unwrap_or_default().join(",")
    ))
}

struct App {
    router: Router,
    clock: ManualClock,
}

fn app_with(f: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder) -> App {
    let clock = ManualClock::new(Timestamp::now());
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let builder = SessionLayer::builder(store, keys)
        .clock(clock.clone())
        .secure(Secure::Never)
        .trust_proxy(true)
        .idle_timeout(Duration::from_secs(3600))
        .touch_after(Duration::from_secs(60));
    let layer = f(builder).build().expect("valid config");
    let router = Router::new()
        .route("/login/{user}", post(login))
        .route("/regenerate", post(regenerate))
        .route("/devices", get(devices))
        .route("/revoke/{h}", post(revoke))
        .route("/whoami", get(whoami))
        .layer(layer);
    App { router, clock }
}

/// A browser: its cookies (the kit's jar), its user agent and address.
struct Device {
    client: TestClient,
    agent: &'static str,
    ip: &'static str,
}

impl Device {
    fn new(app: &App, agent: &'static str, ip: &'static str) -> Self {
        Device {
            client: TestClient::new(app.router.clone()),
            agent,
            ip,
        }
    }

    /// `name=value` of the session cookie the browser holds.
    fn cookie(&self) -> Option<String> {
        self.client.jar.header()
    }

    async fn send(&mut self, method: &str, uri: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(USER_AGENT, self.agent)
            .header("x-forwarded-for", self.ip);
        self.client.send(req, Body::empty()).await
    }

    async fn devices(&mut self) -> Vec<serde_json::Value> {
        let r = self.send("GET", "/devices").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        serde_json::from_slice(&r.body).expect("json")
    }
}

fn handle(list: &[serde_json::Value], current: bool) -> String {
    list.iter()
        .find(|d| d["current"] == current)
        .and_then(|d| d["handle"].as_str())
        .expect("a device")
        .to_owned()
}

#[tokio::test]
async fn a_login_records_the_device_and_the_list_marks_this_one() {
    let app = app_with(|b| b);
    let mut firefox = Device::new(
        &app,
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        "198.51.100.7",
    );
    let mut phone = Device::new(&app, "Mozilla/5.0 (iPhone) Safari/604.1", "203.0.113.9");
    firefox.send("POST", "/login/ada").await;
    phone.send("POST", "/login/ada").await;
    let list = firefox.devices().await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["current"], true, "this device first");
    assert_eq!(list[0]["user_agent"], firefox.agent);
    assert_eq!(list[0]["ip"], "198.51.100.7");
    assert_eq!(list[1]["user_agent"], phone.agent);
    // The JSON names devices by handle, never by session id.
    let body = serde_json::to_string(&list).expect("json");
    for d in [&firefox, &phone] {
        let cookie = d.cookie();
        let id_part = cookie
            .as_deref()
            .and_then(|c| c.split('=').nth(1))
            .expect("cookie");
        let id = id_part
            .trim_start_matches("s%3A")
            .split('.')
            .next()
            .expect("id");
        assert!(!body.contains(id), "a session id leaked into the list");
    }
    assert_ne!(handle(&list, true), handle(&list, false));
}

#[tokio::test]
async fn the_handle_survives_regenerate_and_a_login_as_the_same_user_but_not_another() {
    let app = app_with(|b| b);
    let mut d = Device::new(&app, "curl/8", "192.0.2.1");
    d.send("POST", "/login/ada").await;
    let h = handle(&d.devices().await, true);
    let before = d.cookie();
    d.send("POST", "/regenerate").await;
    assert_ne!(d.cookie(), before, "regenerate rotates the id");
    assert_eq!(handle(&d.devices().await, true), h);
    d.send("POST", "/login/ada").await;
    assert_eq!(handle(&d.devices().await, true), h);
    d.send("POST", "/login/bob").await;
    assert_ne!(handle(&d.devices().await, true), h);
}

#[tokio::test]
async fn revoking_a_device_signs_it_out_and_another_users_handle_does_nothing() {
    let app = app_with(|b| b);
    let mut laptop = Device::new(&app, "laptop", "192.0.2.1");
    let mut phone = Device::new(&app, "phone", "192.0.2.2");
    let mut mallory = Device::new(&app, "mallory", "192.0.2.66");
    laptop.send("POST", "/login/ada").await;
    phone.send("POST", "/login/ada").await;
    mallory.send("POST", "/login/mallory").await;
    let phone_handle = handle(&laptop.devices().await, false);

    // Another user cannot revoke ada's device by its handle.
    let r = mallory
        .send("POST", &format!("/revoke/{phone_handle}"))
        .await;
    assert_eq!(r.text(), "false");
    assert_eq!(phone.send("GET", "/whoami").await.text(), "ada:ada-role");
    // Anonymous: nothing.
    let mut anon = Device::new(&app, "anon", "192.0.2.3");
    assert_eq!(
        anon.send("POST", &format!("/revoke/{phone_handle}"))
            .await
            .text(),
        "false"
    );

    let r = laptop
        .send("POST", &format!("/revoke/{phone_handle}"))
        .await;
    assert_eq!(r.text(), "true");
    let r = phone.send("GET", "/whoami").await;
    assert_eq!(r.text(), ":", "the revoked device is signed out");
    assert_eq!(laptop.devices().await.len(), 1);
    assert_eq!(
        laptop
            .send("POST", &format!("/revoke/{phone_handle}"))
            .await
            .text(),
        "false"
    );
    assert_eq!(
        laptop.send("POST", "/revoke/not%20a%20handle").await.text(),
        "false"
    );
}

#[tokio::test]
async fn last_seen_moves_with_the_touch_at_most_once_per_touch_after() {
    let app = app_with(|b| b);
    let mut d = Device::new(&app, "curl/8", "192.0.2.1");
    d.send("POST", "/login/ada").await;
    let seen = |l: &[serde_json::Value]| l[0]["last_seen"].as_i64().expect("ms");
    let first = seen(&d.devices().await);
    app.clock.advance(Duration::from_secs(30));
    d.send("GET", "/whoami").await;
    assert_eq!(
        seen(&d.devices().await),
        first,
        "no write before touch_after"
    );
    app.clock.advance(Duration::from_secs(61));
    d.send("GET", "/whoami").await;
    assert_eq!(seen(&d.devices().await), app.clock.now().as_millis());
}

#[tokio::test]
async fn addresses_can_be_truncated_or_not_kept_and_user_agents_not_kept() {
    for (mode, ua, expected_ip) in [
        (
            IpCapture::Truncated,
            true,
            serde_json::json!("198.51.100.0"),
        ),
        (IpCapture::Off, false, serde_json::Value::Null),
    ] {
        let app = app_with(|b| b.capture_ip(mode).capture_user_agent(ua));
        let mut d = Device::new(&app, "curl/8", "198.51.100.7");
        d.send("POST", "/login/ada").await;
        let list = d.devices().await;
        assert_eq!(list[0]["ip"], expected_ip);
        assert_eq!(list[0]["user_agent"].is_null(), !ua);
    }
}

#[tokio::test]
async fn the_limit_refuses_a_login_and_the_refused_login_changes_nothing() {
    let app = app_with(|b| b.max_sessions_per_user(2, LimitPolicy::Refuse));
    let mut a = Device::new(&app, "a", "192.0.2.1");
    let mut b = Device::new(&app, "b", "192.0.2.2");
    a.send("POST", "/login/ada").await;
    b.send("POST", "/login/ada").await;
    // c is signed in as bob, then tries ada's login: refused, still bob, bob's roles only.
    let mut c = Device::new(&app, "c", "192.0.2.3");
    c.send("POST", "/login/bob").await;
    let bob = c.cookie();
    let r = c.send("POST", "/login/ada").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(c.cookie(), bob, "the cookie is not touched");
    assert_eq!(c.send("GET", "/whoami").await.text(), "bob:bob-role");
    // A first request's login (no session yet) is refused the same way.
    let mut fresh = Device::new(&app, "d", "192.0.2.4");
    let r = fresh.send("POST", "/login/ada").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.set_cookie().is_none(), "nothing stored, no cookie");
    // Rotating a session of a user at the limit is not a new device.
    assert_eq!(a.send("POST", "/regenerate").await.status, StatusCode::OK);
    assert_eq!(a.devices().await.len(), 2);
}

#[tokio::test]
async fn the_limit_evicts_the_least_recently_seen_device() {
    let app = app_with(|b| b.max_sessions_per_user(2, LimitPolicy::EvictLeastRecentlySeen));
    let mut old = Device::new(&app, "old", "192.0.2.1");
    let mut recent = Device::new(&app, "recent", "192.0.2.2");
    old.send("POST", "/login/ada").await;
    app.clock.advance(Duration::from_secs(120));
    recent.send("POST", "/login/ada").await;
    app.clock.advance(Duration::from_secs(120));
    let mut new = Device::new(&app, "new", "192.0.2.3");
    assert_eq!(new.send("POST", "/login/ada").await.status, StatusCode::OK);
    assert_eq!(old.send("GET", "/whoami").await.text(), ":");
    assert_eq!(recent.send("GET", "/whoami").await.text(), "ada:ada-role");
    let agents: Vec<_> = new
        .devices()
        .await
        .iter()
        .map(|d| d["user_agent"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(agents, ["new", "recent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_never_pass_the_limit() {
    let app = Arc::new(app_with(|b| {
        b.max_sessions_per_user(3, LimitPolicy::Refuse)
    }));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut d = Device::new(&app, "x", "192.0.2.1");
                d.send("POST", "/login/ada").await.status
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 3);
}

#[tokio::test]
async fn a_limit_on_a_store_without_the_capability_is_a_config_error() {
    #[derive(Debug)]
    struct NoLimit(MemoryStore);
    impl coatcheck_conformance::kit::StoreWrapper for NoLimit {
        fn inner(&self) -> &dyn coatcheck::SessionStore {
            &self.0
        }
        fn capabilities(&self) -> coatcheck::store::Capabilities {
            coatcheck::store::Capabilities::new().with_user_index(true)
        }
    }
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let err = SessionLayer::builder(
        coatcheck_conformance::kit::Wrapped(NoLimit(MemoryStore::new())),
        keys,
    )
    .max_sessions_per_user(2, LimitPolicy::Refuse)
    .build()
    .expect_err("refused");
    assert_eq!(err, ConfigError::SessionLimitUnsupported);
}
