//! HTTP-level tests: the real layer, the real axum router, the real memory store (wrapped
//! only to count calls and, for the failure test, to switch the store off).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::store::Capabilities;
use coatcheck::{
    KeyRing, ManualClock, Secure, Session, SessionError, SessionId, SessionLayer, SessionStore,
    StoreError, Timestamp,
};
use coatcheck_conformance::kit::{Call, StoreWrapper, Wrapped};
use futures_util::future::BoxFuture;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "test secret, long enough: 0123456789abcdef";
const OLD_SECRET: &str = "the previous secret, also long enough: 0123";

/// The memory store, counting calls per method, and able to fail like a dead backend.
#[derive(Debug, Clone, Default)]
struct Counting {
    inner: MemoryStore,
    loads: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    touches: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    /// Report `no_creation_time`, as a store in express-compatible mode does.
    no_creation_time: bool,
}

impl Counting {
    fn with(inner: MemoryStore) -> Wrapped<Self> {
        Wrapped(Counting {
            inner,
            ..Default::default()
        })
    }
    fn calls(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
            + self.writes.load(Ordering::SeqCst)
            + self.touches.load(Ordering::SeqCst)
    }
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::backend(std::io::Error::other(
                "connection refused",
            )))
        } else {
            Ok(())
        }
    }
}

impl StoreWrapper for Counting {
    fn inner(&self) -> &dyn SessionStore {
        &self.inner
    }
    fn around<'a, T: Send + 'a>(
        &'a self,
        what: Call,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let counter = match what {
            Call::Load | Call::LoadListed => Some(&self.loads),
            Call::Touch => Some(&self.touches),
            Call::Create
            | Call::Save
            | Call::Delete
            | Call::DeleteVersion
            | Call::DeleteForUser => Some(&self.writes),
            _ => None,
        };
        Box::pin(async move {
            self.check()?;
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::SeqCst);
            }
            call.await
        })
    }
    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .with_no_creation_time(self.no_creation_time)
    }
}

async fn get_key(session: Session, Path(key): Path<String>) -> Result<String, SessionError> {
    Ok(session
        .get_value(&key)
        .await?
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into()))
}

async fn set_key(
    session: Session,
    Path((key, value)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    session.insert(&key, value).await?;
    Ok("ok")
}

async fn incr(session: Session) -> Result<String, SessionError> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

async fn logout_all(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_everywhere().await?.to_string())
}

async fn logout_others(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_other_devices().await?.to_string())
}

async fn regenerate(session: Session) -> Result<&'static str, SessionError> {
    session.regenerate().await?;
    Ok("ok")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .user_id()
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn sessions(session: Session) -> Result<String, SessionError> {
    Ok(session.list_user_sessions().await?.len().to_string())
}

/// Swallows every session error and answers 200 (`let _ = …`): the layer must still fail.
async fn swallow_read(session: Session) -> &'static str {
    let _ = session.get_value("a").await;
    "served as if nothing happened"
}

/// Swallows the failed read, then writes.
async fn swallow_then_write(session: Session) -> &'static str {
    let _ = session.get_value("a").await;
    let _ = session.insert("a", "overwritten").await;
    let _ = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await;
    "served as if nothing happened"
}

async fn slow_set(session: Session) -> Result<&'static str, SessionError> {
    session.get_value("x").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.insert("late", "write").await?;
    Ok("ok")
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/none", get(|| async { "no session here" }))
        .route("/get/{key}", get(get_key))
        .route("/set/{key}/{value}", post(set_key))
        .route("/incr", post(incr))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/logout-others", post(logout_others))
        .route("/whoami", get(whoami))
        .route("/regenerate", post(regenerate))
        .route("/sessions", get(sessions))
        .route("/slow-set", post(slow_set))
        .route("/swallow-read", get(swallow_read))
        .route("/swallow-write", post(swallow_then_write))
        .layer(layer)
}

struct App {
    router: Router,
    store: Wrapped<Counting>,
    clock: ManualClock,
}

fn app_with(
    f: impl FnOnce(coatcheck::SessionLayerBuilder) -> coatcheck::SessionLayerBuilder,
) -> App {
    let clock = ManualClock::new(Timestamp::now());
    let store = Counting::with(MemoryStore::builder().clock(clock.clone()).build());
    let keys = KeyRing::new([SECRET]).unwrap();
    let layer = f(SessionLayer::builder(store.clone(), keys).clock(clock.clone()))
        .build()
        .unwrap();
    App {
        router: router(layer),
        store,
        clock,
    }
}

fn app() -> App {
    app_with(|b| b)
}

struct Reply {
    status: StatusCode,
    set_cookie: Vec<String>,
    cache_control: Option<String>,
    body: String,
}

impl Reply {
    /// `name=value` of our cookie, for the next request's Cookie header.
    fn cookie(&self) -> String {
        let c = self
            .set_cookie
            .iter()
            .find(|c| c.starts_with("sid="))
            .expect("a Set-Cookie for sid");
        c.split(';').next().unwrap().to_owned()
    }
}

async fn send(app: &App, method: &str, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let res: Response<Body> = app
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let cache_control = res
        .headers()
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply {
        status,
        set_cookie,
        cache_control,
        body,
    }
}

fn id_of(cookie: &str) -> SessionId {
    let value = cookie.split_once('=').unwrap().1;
    KeyRing::new([SECRET])
        .unwrap()
        .verify_cookie_value(value)
        .expect("our cookie verifies")
        .id
}

#[tokio::test]
async fn set_cookie_has_exact_attributes_and_no_store() {
    let app = app();
    let r = send(&app, "POST", "/set/a/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.set_cookie.len(), 1);
    let c = &r.set_cookie[0];
    let value = r.cookie();
    assert!(value.starts_with("sid=s%3A"), "{c}");
    let mut attrs: Vec<&str> = c.split("; ").skip(1).collect();
    let expires = attrs
        .iter()
        .position(|a| a.starts_with("Expires="))
        .map(|i| attrs.remove(i))
        .expect("Expires");
    attrs.sort();
    assert_eq!(attrs, ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]);
    // Expires is the idle timeout (24 h by default) from now.
    let exp = expires.trim_start_matches("Expires=");
    assert!(exp.ends_with(" GMT"), "{exp}");
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));

    let custom = app_with(|b| {
        b.name("__Host-sess")
            .same_site(coatcheck::SameSite::Strict)
            .partitioned(true)
            .browser_session(true)
    });
    let r = send(&custom, "POST", "/set/a/1", None).await;
    let mut attrs: Vec<&str> = r.set_cookie[0].split("; ").skip(1).collect();
    attrs.sort();
    assert_eq!(
        attrs,
        [
            "HttpOnly",
            "Partitioned",
            "Path=/",
            "SameSite=Strict",
            "Secure"
        ]
    );
    assert!(r.set_cookie[0].starts_with("__Host-sess=s%3A"));
    // The whole header stays far below the 4096-byte limit browsers enforce.
    assert!(r.set_cookie[0].len() < 300);
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let keys = || KeyRing::new([SECRET]).unwrap();
    let b = || SessionLayer::builder(MemoryStore::new(), keys());
    assert!(b().name("__Host-x").path("/app").build().is_err());
    assert!(b().name("__Host-x").domain("example.com").build().is_err());
    assert!(b().name("__Host-x").secure(Secure::Auto).build().is_err());
    assert!(b()
        .name("__Secure-x")
        .secure(Secure::Never)
        .build()
        .is_err());
    assert!(b()
        .same_site(coatcheck::SameSite::None)
        .secure(Secure::Never)
        .build()
        .is_err());
    assert!(b().name("bad name;").build().is_err());
    assert!(b().path("/x;Domain=evil").build().is_err());
    assert!(b().idle_timeout(Duration::ZERO).build().is_err());
    assert!(b().store_timeout(Some(Duration::ZERO)).build().is_err());
    assert!(b().store_timeout(None).build().is_ok());
    assert!(b().build().is_ok());
}

#[tokio::test]
async fn secure_auto_trusts_forwarded_proto_only_when_told() {
    for (trust, expect_secure) in [(false, false), (true, true)] {
        let app = app_with(|b| b.secure(Secure::Auto).trust_proxy(trust));
        let req = Request::post("/set/a/1")
            .header("x-forwarded-proto", "https")
            .body(Body::empty())
            .unwrap();
        let res = app.router.clone().oneshot(req).await.unwrap();
        let c = res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(c.contains("; Secure"), expect_secure, "trust={trust}: {c}");
    }
}

#[tokio::test]
async fn a_handler_that_never_touches_the_session_costs_no_store_call() {
    let app = app();
    let r = send(&app, "POST", "/set/a/1", None).await;
    let before = app.store.calls();
    let r2 = send(&app, "GET", "/none", Some(&r.cookie())).await;
    let r3 = send(&app, "GET", "/none", None).await;
    assert_eq!(app.store.calls(), before);
    assert!(r2.set_cookie.is_empty() && r3.set_cookie.is_empty());
    // Reading an anonymous session creates nothing and sets no cookie.
    let r4 = send(&app, "GET", "/get/a", None).await;
    assert_eq!(r4.body, "none");
    assert!(r4.set_cookie.is_empty());
    assert_eq!(app.store.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tampered_truncated_unsigned_and_unknown_cookies_give_a_fresh_session() {
    let app = app();
    let r = send(&app, "POST", "/set/secret/42", None).await;
    let good = r.cookie();
    assert_eq!(
        send(&app, "GET", "/get/secret", Some(&good)).await.body,
        "\"42\""
    );
    let id = id_of(&good);
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len();
    tampered[n - 3] = if tampered[n - 3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let truncated = good[..good.len() - 4].to_owned();
    let unsigned = format!("sid={}", id.as_str());
    let unsigned_prefixed = format!("sid=s%3A{}", id.as_str());
    let other_key = format!(
        "sid={}",
        KeyRing::new(["some other secret entirely, 32+ bytes"])
            .unwrap()
            .sign_cookie_value(&id)
    );
    let unknown = format!(
        "sid={}",
        KeyRing::new([SECRET])
            .unwrap()
            .sign_cookie_value(&SessionId::generate())
    );
    for bad in [
        tampered,
        truncated,
        unsigned,
        unsigned_prefixed,
        other_key,
        unknown,
    ] {
        let r = send(&app, "GET", "/get/secret", Some(&bad)).await;
        assert_eq!(r.status, StatusCode::OK, "{bad}");
        assert_eq!(r.body, "none", "old data visible through {bad}");
        assert!(r.set_cookie.is_empty(), "no cookie for a read: {bad}");
        // Writing through it gets a new id, never the presented one.
        let w = send(&app, "POST", "/set/x/1", Some(&bad)).await;
        assert_ne!(id_of(&w.cookie()), id);
    }
}

#[tokio::test]
async fn an_attacker_chosen_id_is_never_adopted() {
    let app = app();
    // The attacker knows an id and even a valid signature (say, from their own old session
    // that has since expired), and plants it in the victim's browser.
    let planted = SessionId::generate();
    let cookie = format!(
        "sid={}",
        KeyRing::new([SECRET]).unwrap().sign_cookie_value(&planted)
    );
    let r = send(&app, "POST", "/login/victim", Some(&cookie)).await;
    let issued = id_of(&r.cookie());
    assert_ne!(issued, planted);
    assert!(app.store.inner.load(&planted).await.unwrap().is_none());
    let r = send(&app, "POST", "/set/a/1", Some(&cookie)).await;
    assert_ne!(id_of(&r.cookie()), planted);
    assert!(app.store.inner.load(&planted).await.unwrap().is_none());
}

#[tokio::test]
async fn rotated_secret_is_accepted_and_resigned_with_the_first() {
    let clock = ManualClock::new(Timestamp::now());
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let old = App {
        router: router(
            SessionLayer::builder(store.clone(), KeyRing::new([OLD_SECRET]).unwrap())
                .clock(clock.clone())
                .build()
                .unwrap(),
        ),
        store: Counting::with(store.clone()),
        clock: clock.clone(),
    };
    let c = send(&old, "POST", "/set/a/1", None).await.cookie();
    let new = App {
        router: router(
            SessionLayer::builder(store.clone(), KeyRing::new([SECRET, OLD_SECRET]).unwrap())
                .clock(clock.clone())
                .build()
                .unwrap(),
        ),
        store: Counting::with(store),
        clock,
    };
    let r = send(&new, "GET", "/get/a", Some(&c)).await;
    assert_eq!(r.body, "\"1\"");
    let resigned = r.cookie();
    assert_ne!(resigned, c);
    assert_eq!(id_of(&resigned), {
        let v = c.split_once('=').unwrap().1;
        KeyRing::new([OLD_SECRET])
            .unwrap()
            .verify_cookie_value(v)
            .unwrap()
            .id
    });
    // Signed with the first secret now.
    assert_eq!(
        KeyRing::new([SECRET])
            .unwrap()
            .verify_cookie_value(resigned.split_once('=').unwrap().1)
            .map(|v| v.key_index),
        Some(0)
    );
}

#[tokio::test]
async fn login_issues_a_new_id_and_the_old_one_is_dead() {
    let app = app();
    let before = send(&app, "POST", "/set/cart/3", None).await.cookie();
    let old_id = id_of(&before);
    let r = send(&app, "POST", "/login/alice", Some(&before)).await;
    let after = r.cookie();
    let new_id = id_of(&after);
    assert_ne!(new_id, old_id);
    assert!(app.store.inner.load(&old_id).await.unwrap().is_none());
    // Same data, now with a user; the old cookie finds nothing.
    assert_eq!(
        send(&app, "GET", "/get/cart", Some(&after)).await.body,
        "\"3\""
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&after)).await.body,
        "alice"
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&before)).await.body,
        "anonymous"
    );
    let stored = app.store.inner.load(&new_id).await.unwrap().unwrap();
    assert_eq!(stored.user_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn logout_clears_the_cookie_and_kills_the_id() {
    let app = app();
    let c = send(&app, "POST", "/login/bob", None).await.cookie();
    let r = send(&app, "POST", "/logout", Some(&c)).await;
    assert_eq!(r.set_cookie.len(), 1);
    assert!(r.set_cookie[0].starts_with("sid=;"), "{}", r.set_cookie[0]);
    assert!(r.set_cookie[0].contains("Max-Age=0"));
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    assert!(app.store.inner.load(&id_of(&c)).await.unwrap().is_none());
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&c)).await.body,
        "anonymous"
    );
}

#[tokio::test]
async fn logout_everywhere_kills_every_device_and_others_keeps_this_one() {
    let app = app();
    let laptop = send(&app, "POST", "/login/carol", None).await.cookie();
    let phone = send(&app, "POST", "/login/carol", None).await.cookie();
    let tablet = send(&app, "POST", "/login/carol", None).await.cookie();
    let other_user = send(&app, "POST", "/login/dave", None).await.cookie();
    assert_eq!(
        send(&app, "GET", "/sessions", Some(&laptop)).await.body,
        "3"
    );
    assert_eq!(
        send(&app, "POST", "/logout-others", Some(&laptop))
            .await
            .body,
        "2"
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&phone)).await.body,
        "anonymous"
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&laptop)).await.body,
        "carol"
    );
    let phone2 = send(&app, "POST", "/login/carol", None).await.cookie();
    let r = send(&app, "POST", "/logout-all", Some(&phone2)).await;
    assert_eq!(r.body, "2");
    assert!(r.set_cookie[0].contains("Max-Age=0"));
    for c in [&laptop, &phone, &tablet, &phone2] {
        assert_eq!(
            send(&app, "GET", "/whoami", Some(c)).await.body,
            "anonymous"
        );
    }
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&other_user)).await.body,
        "dave"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_setting_different_keys_keep_all_fifty() {
    let app = Arc::new(app());
    let c = send(&app, "POST", "/set/start/0", None).await.cookie();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            let c = c.clone();
            tokio::spawn(async move {
                send(&app, "POST", &format!("/set/k{i}/v{i}"), Some(&c))
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let stored = app.store.inner.load(&id_of(&c)).await.unwrap().unwrap();
    for i in 0..50 {
        assert_eq!(
            stored.data[&format!("k{i}")],
            format!("v{i}"),
            "key k{i} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_update_increments_end_at_exactly_fifty() {
    let app = Arc::new(app());
    let c = send(&app, "POST", "/set/start/0", None).await.cookie();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            let c = c.clone();
            tokio::spawn(async move { send(&app, "POST", "/incr", Some(&c)).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let stored = app.store.inner.load(&id_of(&c)).await.unwrap().unwrap();
    assert_eq!(stored.data["n"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_session_is_revoked_does_not_bring_it_back() {
    let app = Arc::new(app());
    let c = send(&app, "POST", "/login/erin", None).await.cookie();
    let id = id_of(&c);
    let slow = {
        let app = app.clone();
        let c = c.clone();
        tokio::spawn(async move { send(&app, "POST", "/slow-set", Some(&c)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = send(&app, "POST", "/login/erin", None).await.cookie();
    assert_eq!(
        send(&app, "POST", "/logout-all", Some(&other)).await.body,
        "2"
    );
    let r = slow.await.unwrap();
    assert!(
        r.set_cookie.iter().any(|c| c.contains("Max-Age=0")),
        "the revoked session's cookie is cleared: {:?}",
        r.set_cookie
    );
    assert!(
        app.store.inner.load(&id).await.unwrap().is_none(),
        "resurrected"
    );
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&c)).await.body,
        "anonymous"
    );
}

#[tokio::test]
async fn idle_timeout_is_enforced_on_the_server() {
    let app = app_with(|b| b.idle_timeout(Duration::from_secs(600)));
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "\"1\"");
    // That read rolled the expiry forward (touch): 10 more minutes from here.
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "\"1\"");
    app.clock.advance(Duration::from_secs(600));
    // The cookie is still valid and signed; the server refuses the session.
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "none");
}

#[tokio::test]
async fn absolute_timeout_is_counted_from_creation_and_not_extended() {
    let app = app_with(|b| {
        b.idle_timeout(Duration::from_secs(600))
            .absolute_timeout(Duration::from_secs(1000))
            .touch_after(Duration::ZERO)
    });
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    for _ in 0..4 {
        app.clock.advance(Duration::from_secs(240));
        assert_eq!(
            send(&app, "POST", "/incr", Some(&c)).await.status,
            StatusCode::OK
        );
        assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "\"1\"");
    }
    // 960 s after creation: still there, but expiry is capped at 1000 s.
    let stored = app.store.inner.load(&id_of(&c)).await.unwrap().unwrap();
    assert_eq!(
        stored.expires_at,
        stored.created_at + Duration::from_secs(1000)
    );
    app.clock.advance(Duration::from_secs(40));
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "none");
    // Login keeps created_at: regenerating does not reset the absolute lifetime.
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    app.clock.advance(Duration::from_secs(500));
    assert_eq!(
        send(&app, "POST", "/incr", Some(&c)).await.status,
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(400));
    let c2 = send(&app, "POST", "/login/frank", Some(&c)).await.cookie();
    assert_ne!(id_of(&c2), id_of(&c));
    assert_eq!(send(&app, "GET", "/whoami", Some(&c2)).await.body, "frank");
    app.clock.advance(Duration::from_secs(101));
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&c2)).await.body,
        "anonymous"
    );
}

#[tokio::test]
async fn touch_after_bounds_store_writes() {
    let app = app_with(|b| {
        b.idle_timeout(Duration::from_secs(3600))
            .touch_after(Duration::from_secs(60))
    });
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    let before = app.store.touches.load(Ordering::SeqCst);
    // 100 reads over 99 seconds: only one touch is due (after 60 s).
    for _ in 0..100 {
        assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "\"1\"");
        app.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(app.store.touches.load(Ordering::SeqCst) - before, 1);
    assert_eq!(
        app.store.writes.load(Ordering::SeqCst),
        1,
        "only the create"
    );
}

#[tokio::test]
async fn a_failing_store_gives_5xx_and_no_set_cookie() {
    let app = app();
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    app.store.down.store(true, Ordering::SeqCst);
    for (m, uri, cookie) in [
        ("GET", "/get/a", Some(c.as_str())),
        ("POST", "/set/a/2", Some(c.as_str())),
        ("POST", "/set/a/2", None),
        ("POST", "/incr", Some(c.as_str())),
        ("POST", "/login/x", Some(c.as_str())),
        ("POST", "/logout", Some(c.as_str())),
        // Handlers that swallow the error: the layer fails closed all the same.
        ("GET", "/swallow-read", Some(c.as_str())),
        ("POST", "/swallow-write", Some(c.as_str())),
        ("POST", "/swallow-write", None),
    ] {
        let r = send(&app, m, uri, cookie).await;
        assert!(r.status.is_server_error(), "{m} {uri}: {}", r.status);
        assert!(r.set_cookie.is_empty(), "{m} {uri}: {:?}", r.set_cookie);
        assert!(!r.body.contains("refused"), "backend details leaked");
    }
    app.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&app, "GET", "/get/a", Some(&c)).await.body,
        "\"1\"",
        "nothing lost"
    );
}

#[tokio::test]
async fn oversized_and_duplicated_cookie_headers_do_not_panic() {
    let app = app();
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    let huge = format!("sid={}", "A".repeat(64 * 1024));
    let r = send(&app, "GET", "/get/a", Some(&huge)).await;
    assert_eq!(r.body, "none");
    let many = (0..2000)
        .map(|i| format!("c{i}=v"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(send(&app, "GET", "/get/a", Some(&many)).await.body, "none");
    // Duplicates: a junk one first, the valid one later; and two headers.
    let dup = format!("sid=junk; sid=; sid; {c}");
    assert_eq!(send(&app, "GET", "/get/a", Some(&dup)).await.body, "\"1\"");
    let req = Request::get("/get/a")
        .header(header::COOKIE, "sid=s%3Anope.nope")
        .header(header::COOKIE, c.as_str())
        .body(Body::empty())
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let req = Request::get("/get/a")
        .header(
            header::COOKIE,
            http::HeaderValue::from_bytes(b"sid=\xc3\x28; \xff").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn save_uninitialized_stores_empty_sessions_only_when_asked() {
    let off = app();
    assert!(send(&off, "GET", "/get/a", None)
        .await
        .set_cookie
        .is_empty());
    assert!(off.store.inner.is_empty());
    let on = app_with(|b| b.save_uninitialized(true));
    let r = send(&on, "GET", "/get/a", None).await;
    assert_eq!(r.set_cookie.len(), 1);
    assert_eq!(on.store.inner.len(), 1);
}

#[tokio::test]
async fn custom_id_generator_is_used() {
    let app = app_with(|b| {
        b.id_generator(|| {
            SessionId::parse(&format!("custom-{}", "x".repeat(20)))
                .unwrap_or_else(|_| SessionId::generate())
        })
    });
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    assert!(id_of(&c).as_str().starts_with("custom-"));
}

#[tokio::test]
async fn missing_layer_is_a_500_not_a_panic() {
    let router = Router::new().route("/", get(|_s: Session| async { "x" }));
    let res = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A write moves the server's expiry, and the persistent cookie's `Expires` follows it at
/// once: the old rule (re-send only when expiry moved by `touch_after`) never re-sent it to a
/// user writing more often than that, so the browser dropped a live session.
#[tokio::test]
async fn rolling_cookie_follows_every_write() {
    let app = app_with(|b| {
        b.idle_timeout(Duration::from_secs(3600))
            .touch_after(Duration::from_secs(60))
    });
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    app.clock.advance(Duration::from_secs(1));
    let r = send(&app, "POST", "/set/a/2", Some(&c)).await;
    assert_eq!(
        r.set_cookie.len(),
        1,
        "expiry moved 1 s: the cookie follows"
    );
    assert_eq!(r.cookie(), c, "same id, same signature");
    app.clock.advance(Duration::from_secs(1));
    let r = send(&app, "GET", "/get/a", Some(&c)).await;
    assert!(
        r.set_cookie.is_empty(),
        "a read within touch_after sends nothing"
    );
    assert_eq!(r.body, "\"2\"");
}

#[tokio::test]
async fn express_preset_uses_connect_sid_and_refuses_reserved_keys() {
    let clock = ManualClock::new(Timestamp::now());
    let store = Counting::with(MemoryStore::builder().clock(clock.clone()).build());
    let keys = KeyRing::new_allowing_weak(["keyboard cat"]).unwrap();
    let layer = SessionLayer::builder(store.clone(), keys)
        .express_compatible()
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(layer.config().name, "connect.sid");
    let app = App {
        router: router(layer),
        store,
        clock,
    };
    let r = send(&app, "POST", "/set/counter/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r
        .set_cookie
        .iter()
        .find(|c| c.starts_with("connect.sid=s%3A"))
        .expect("express-session's cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let writes = app.store.writes.load(Ordering::SeqCst);
    for key in ["cookie", "id", "save", "regenerate", "resetMaxAge"] {
        let r = send(&app, "POST", &format!("/set/{key}/x"), Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{key}");
        assert!(r.set_cookie.is_empty());
    }
    assert_eq!(
        app.store.writes.load(Ordering::SeqCst),
        writes,
        "nothing written"
    );
    let r = send(&app, "GET", "/get/counter", Some(&cookie)).await;
    assert_eq!(r.body, "\"1\"", "the session is intact");
}

/// A store that keeps no creation time (express-compatible mode) cannot enforce an absolute
/// timeout: building such a layer is an error, not a silently ignored setting.
#[tokio::test]
async fn absolute_timeout_is_refused_on_a_store_without_creation_time() {
    let no_creation_time = Wrapped(Counting {
        no_creation_time: true,
        ..Counting::default()
    });
    let keys = KeyRing::new([SECRET]).unwrap();
    let err = SessionLayer::builder(no_creation_time.clone(), keys.clone())
        .absolute_timeout(Duration::from_secs(3600))
        .build()
        .unwrap_err();
    assert_eq!(err, coatcheck::ConfigError::AbsoluteTimeoutUnsupported);
    assert!(SessionLayer::builder(no_creation_time, keys)
        .build()
        .is_ok());
}

/// ASVS 7.2.4: `regenerate()` and every (re-)authentication issue a new id; the old one is
/// dead at once, the data carries over.
#[tokio::test]
async fn regenerate_and_relogin_issue_new_ids_and_kill_the_old_one() {
    let app = app();
    let a = send(&app, "POST", "/set/cart/3", None).await.cookie();
    let b = send(&app, "POST", "/regenerate", Some(&a)).await.cookie();
    assert_ne!(id_of(&a), id_of(&b));
    assert!(app.store.inner.load(&id_of(&a)).await.unwrap().is_none());
    assert_eq!(send(&app, "GET", "/get/cart", Some(&b)).await.body, "\"3\"");
    assert_eq!(send(&app, "GET", "/get/cart", Some(&a)).await.body, "none");
    let c = send(&app, "POST", "/login/alice", Some(&b)).await.cookie();
    assert_ne!(id_of(&b), id_of(&c));
    assert!(app.store.inner.load(&id_of(&b)).await.unwrap().is_none());
    // Re-authentication on an authenticated session rotates again.
    let d = send(&app, "POST", "/login/bob", Some(&c)).await.cookie();
    assert_ne!(id_of(&c), id_of(&d));
    assert!(app.store.inner.load(&id_of(&c)).await.unwrap().is_none());
    assert_eq!(send(&app, "GET", "/whoami", Some(&d)).await.body, "bob");
    assert_eq!(
        send(&app, "GET", "/whoami", Some(&c)).await.body,
        "anonymous"
    );
}

/// A once-valid cookie whose session expired is not adopted: a write gets a fresh id and the
/// old id gets no record.
#[tokio::test]
async fn an_expired_cookie_is_not_adopted_and_a_write_gets_a_fresh_id() {
    let app = app_with(|b| b.idle_timeout(Duration::from_secs(60)));
    let old = send(&app, "POST", "/set/a/1", None).await.cookie();
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(send(&app, "GET", "/get/a", Some(&old)).await.body, "none");
    let r = send(&app, "POST", "/set/b/2", Some(&old)).await;
    let fresh = r.cookie();
    assert_ne!(id_of(&fresh), id_of(&old));
    assert!(app.store.inner.load(&id_of(&old)).await.unwrap().is_none());
    assert_eq!(send(&app, "GET", "/get/a", Some(&fresh)).await.body, "none");
}

/// ASVS 3.3.4 / 14.2.1: the id travels in the cookie only. A valid signed value in the query
/// string is ignored, and no response carries the id anywhere but `Set-Cookie`.
#[tokio::test]
async fn the_id_is_never_taken_from_or_put_in_the_url_or_body() {
    let app = app();
    let r = send(&app, "POST", "/login/alice", None).await;
    let cookie = r.cookie();
    let id = id_of(&cookie);
    assert!(!r.body.contains(id.as_str()));
    let value = cookie.split_once('=').unwrap().1.to_owned();
    for query in [
        format!("sid={value}"),
        format!("connect.sid={value}"),
        format!("id={}", id.as_str()),
    ] {
        let r = send(&app, "GET", &format!("/whoami?{query}"), None).await;
        assert_eq!(r.body, "anonymous", "{query}");
        assert!(r.set_cookie.is_empty());
    }
    let res = app
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/set/k/v")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    for (name, v) in res.headers() {
        if name != header::SET_COOKIE {
            assert!(!v.to_str().unwrap_or("").contains(id.as_str()), "{name}");
        }
    }
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(id.as_str()));
}

/// Ids carry no user data: the cookie value is `s:` + 32 random base64url characters + MAC,
/// whatever the user or the data.
#[tokio::test]
async fn ids_carry_no_user_data() {
    let app = app();
    let c = send(&app, "POST", "/set/cart/secret-cart-value", None)
        .await
        .cookie();
    let c = send(&app, "POST", "/login/alice-7781", Some(&c))
        .await
        .cookie();
    let id = id_of(&c);
    assert_eq!(id.as_str().len(), 32);
    for needle in ["alice", "7781", "secret", "cart"] {
        assert!(!c.contains(needle), "{needle} in {c}");
    }
}

/// A `MakeWriter` into a shared buffer, to read what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// ASVS: ids are never logged raw. Every log line, at TRACE, of a whole session life (create,
/// conflict-free saves, login, logout, a store failure, a bad cookie) is searched for the raw
/// ids and cookie values.
#[tokio::test]
async fn ids_and_cookie_values_are_never_logged() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app();
    let mut secrets = Vec::new();
    let a = send(&app, "POST", "/set/a/1", None).await.cookie();
    let b = send(&app, "POST", "/login/alice", Some(&a)).await.cookie();
    send(&app, "POST", "/incr", Some(&b)).await;
    app.store.down.store(true, Ordering::SeqCst);
    let r = send(&app, "POST", "/incr", Some(&b)).await;
    assert!(r.status.is_server_error());
    app.store.down.store(false, Ordering::SeqCst);
    send(&app, "POST", "/logout", Some(&b)).await;
    send(&app, "GET", "/get/a", Some(&format!("{b}x"))).await;
    for c in [&a, &b] {
        secrets.push(id_of(c).as_str().to_owned());
        secrets.push(c.split_once('=').unwrap().1.to_owned());
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.is_empty(), "something was logged");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{s} appears in the logs");
    }
}
