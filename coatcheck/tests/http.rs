//! HTTP-level tests: the real layer, the real axum router, the real memory store (wrapped
//! only to count calls and, for the failure test, to switch the store off).

mod common;

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
use coatcheck_conformance::kit::{Call, Reply, StoreWrapper, TestClient, Wrapped};
use common::send;
use futures_util::future::BoxFuture;
use http::{header, Request, StatusCode};

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

/// `name=value` of our cookie, for the next request's Cookie header.
fn cookie_of(r: &Reply) -> String {
    let c = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("sid="))
        .expect("a Set-Cookie for sid");
    c.split(';').next().unwrap().to_owned()
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
    let r = send(&app.router, "POST", "/set/a/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.set_cookies().len(), 1);
    let set_cookies = r.set_cookies();
    let c = set_cookies[0];
    let value = cookie_of(&r);
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
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let custom = app_with(|b| {
        b.name("__Host-sess")
            .same_site(coatcheck::SameSite::Strict)
            .partitioned(true)
            .browser_session(true)
    });
    let r = send(&custom.router, "POST", "/set/a/1", None).await;
    let mut attrs: Vec<&str> = r.set_cookies()[0].split("; ").skip(1).collect();
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
    assert!(r.set_cookies()[0].starts_with("__Host-sess=s%3A"));
    // The whole header stays far below the 4096-byte limit browsers enforce.
    assert!(r.set_cookies()[0].len() < 300);
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
        let req = Request::post("/set/a/1").header("x-forwarded-proto", "https");
        let res = TestClient::new(app.router.clone())
            .send(req, Body::empty())
            .await;
        let c = res.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        assert_eq!(c.contains("; Secure"), expect_secure, "trust={trust}: {c}");
    }
}

#[tokio::test]
async fn a_handler_that_never_touches_the_session_costs_no_store_call() {
    let app = app();
    let r = send(&app.router, "POST", "/set/a/1", None).await;
    let before = app.store.calls();
    let r2 = send(&app.router, "GET", "/none", Some(&cookie_of(&r))).await;
    let r3 = send(&app.router, "GET", "/none", None).await;
    assert_eq!(app.store.calls(), before);
    assert!(r2.set_cookies().is_empty() && r3.set_cookies().is_empty());
    // Reading an anonymous session creates nothing and sets no cookie.
    let r4 = send(&app.router, "GET", "/get/a", None).await;
    assert_eq!(r4.text(), "none");
    assert!(r4.set_cookies().is_empty());
    assert_eq!(app.store.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tampered_truncated_unsigned_and_unknown_cookies_give_a_fresh_session() {
    let app = app();
    let r = send(&app.router, "POST", "/set/secret/42", None).await;
    let good = cookie_of(&r);
    assert_eq!(
        send(&app.router, "GET", "/get/secret", Some(&good))
            .await
            .text(),
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
        let r = send(&app.router, "GET", "/get/secret", Some(&bad)).await;
        assert_eq!(r.status, StatusCode::OK, "{bad}");
        assert_eq!(r.text(), "none", "old data visible through {bad}");
        assert!(r.set_cookies().is_empty(), "no cookie for a read: {bad}");
        // Writing through it gets a new id, never the presented one.
        let w = send(&app.router, "POST", "/set/x/1", Some(&bad)).await;
        assert_ne!(id_of(&cookie_of(&w)), id);
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
    let r = send(&app.router, "POST", "/login/victim", Some(&cookie)).await;
    let issued = id_of(&cookie_of(&r));
    assert_ne!(issued, planted);
    assert!(app.store.inner.load(&planted).await.unwrap().is_none());
    let r = send(&app.router, "POST", "/set/a/1", Some(&cookie)).await;
    assert_ne!(id_of(&cookie_of(&r)), planted);
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
    let c = cookie_of(&send(&old.router, "POST", "/set/a/1", None).await);
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
    let r = send(&new.router, "GET", "/get/a", Some(&c)).await;
    assert_eq!(r.text(), "\"1\"");
    let resigned = cookie_of(&r);
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

/// The old id of a rotation is dead: nothing, or only the rotation's mark (no data, no
/// user, no device: holding the old id gains nothing).
fn retired(record: Option<coatcheck::store::Record>) -> bool {
    record.is_none_or(|r| {
        coatcheck::core::keys::is_rotation_mark(&r.data)
            && r.data.len() == 1
            && r.user_id.is_none()
            && r.device.is_none()
    })
}

#[tokio::test]
async fn login_issues_a_new_id_and_the_old_one_is_dead() {
    let app = app();
    let before = cookie_of(&send(&app.router, "POST", "/set/cart/3", None).await);
    let old_id = id_of(&before);
    let r = send(&app.router, "POST", "/login/alice", Some(&before)).await;
    let after = cookie_of(&r);
    let new_id = id_of(&after);
    assert_ne!(new_id, old_id);
    assert!(retired(app.store.inner.load(&old_id).await.unwrap()));
    // Same data, now with a user; the old cookie finds nothing.
    assert_eq!(
        send(&app.router, "GET", "/get/cart", Some(&after))
            .await
            .text(),
        "\"3\""
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&after))
            .await
            .text(),
        "alice"
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&before))
            .await
            .text(),
        "anonymous"
    );
    let stored = app.store.inner.load(&new_id).await.unwrap().unwrap();
    assert_eq!(stored.user_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn logout_clears_the_cookie_and_kills_the_id() {
    let app = app();
    let c = cookie_of(&send(&app.router, "POST", "/login/bob", None).await);
    let r = send(&app.router, "POST", "/logout", Some(&c)).await;
    assert_eq!(r.set_cookies().len(), 1);
    assert!(
        r.set_cookies()[0].starts_with("sid=;"),
        "{}",
        r.set_cookies()[0]
    );
    assert!(r.set_cookies()[0].contains("Max-Age=0"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(retired(app.store.inner.load(&id_of(&c)).await.unwrap()));
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&c)).await.text(),
        "anonymous"
    );
}

#[tokio::test]
async fn logout_everywhere_kills_every_device_and_others_keeps_this_one() {
    let app = app();
    let laptop = cookie_of(&send(&app.router, "POST", "/login/carol", None).await);
    let phone = cookie_of(&send(&app.router, "POST", "/login/carol", None).await);
    let tablet = cookie_of(&send(&app.router, "POST", "/login/carol", None).await);
    let other_user = cookie_of(&send(&app.router, "POST", "/login/dave", None).await);
    assert_eq!(
        send(&app.router, "GET", "/sessions", Some(&laptop))
            .await
            .text(),
        "3"
    );
    assert_eq!(
        send(&app.router, "POST", "/logout-others", Some(&laptop))
            .await
            .text(),
        "2"
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&phone))
            .await
            .text(),
        "anonymous"
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&laptop))
            .await
            .text(),
        "carol"
    );
    let phone2 = cookie_of(&send(&app.router, "POST", "/login/carol", None).await);
    let r = send(&app.router, "POST", "/logout-all", Some(&phone2)).await;
    assert_eq!(r.text(), "2");
    assert!(r.set_cookies()[0].contains("Max-Age=0"));
    for c in [&laptop, &phone, &tablet, &phone2] {
        assert_eq!(
            send(&app.router, "GET", "/whoami", Some(c)).await.text(),
            "anonymous"
        );
    }
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&other_user))
            .await
            .text(),
        "dave"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_setting_different_keys_keep_all_fifty() {
    let app = Arc::new(app());
    let c = cookie_of(&send(&app.router, "POST", "/set/start/0", None).await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            let c = c.clone();
            tokio::spawn(async move {
                send(&app.router, "POST", &format!("/set/k{i}/v{i}"), Some(&c))
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
    let c = cookie_of(&send(&app.router, "POST", "/set/start/0", None).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            let c = c.clone();
            tokio::spawn(async move { send(&app.router, "POST", "/incr", Some(&c)).await.status })
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
    let c = cookie_of(&send(&app.router, "POST", "/login/erin", None).await);
    let id = id_of(&c);
    let slow = {
        let app = app.clone();
        let c = c.clone();
        tokio::spawn(async move { send(&app.router, "POST", "/slow-set", Some(&c)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = cookie_of(&send(&app.router, "POST", "/login/erin", None).await);
    assert_eq!(
        send(&app.router, "POST", "/logout-all", Some(&other))
            .await
            .text(),
        "2"
    );
    let r = slow.await.unwrap();
    // Revoked while it ran: its write is not kept (409, never a silent 200), and it sends
    // no cookie at all — the browser may hold a newer one by the time this answer arrives
    // (a clear here used to sign out a login made meanwhile); the next request with the
    // dead cookie finds nothing. (It asserted a clear before the end of a request became
    // one state machine.)
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.set_cookies().is_empty(),
        "a request ended by another one leaves the cookie alone: {:?}",
        r.set_cookies()
    );
    assert!(
        app.store.inner.load(&id).await.unwrap().is_none(),
        "resurrected"
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&c)).await.text(),
        "anonymous"
    );
}

#[tokio::test]
async fn idle_timeout_is_enforced_on_the_server() {
    let app = app_with(|b| b.idle_timeout(Duration::from_secs(600)));
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
        "\"1\""
    );
    // That read rolled the expiry forward (touch): 10 more minutes from here.
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
        "\"1\""
    );
    app.clock.advance(Duration::from_secs(600));
    // The cookie is still valid and signed; the server refuses the session.
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
        "none"
    );
}

#[tokio::test]
async fn absolute_timeout_is_counted_from_creation_and_not_extended() {
    let app = app_with(|b| {
        b.idle_timeout(Duration::from_secs(600))
            .absolute_timeout(Duration::from_secs(1000))
            .touch_after(Duration::ZERO)
    });
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    for _ in 0..4 {
        app.clock.advance(Duration::from_secs(240));
        assert_eq!(
            send(&app.router, "POST", "/incr", Some(&c)).await.status,
            StatusCode::OK
        );
        assert_eq!(
            send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
            "\"1\""
        );
    }
    // 960 s after creation: still there, but expiry is capped at 1000 s.
    let stored = app.store.inner.load(&id_of(&c)).await.unwrap().unwrap();
    assert_eq!(
        stored.expires_at,
        stored.created_at + Duration::from_secs(1000)
    );
    app.clock.advance(Duration::from_secs(40));
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
        "none"
    );
    // Login keeps created_at: regenerating does not reset the absolute lifetime.
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    app.clock.advance(Duration::from_secs(500));
    assert_eq!(
        send(&app.router, "POST", "/incr", Some(&c)).await.status,
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(400));
    let c2 = cookie_of(&send(&app.router, "POST", "/login/frank", Some(&c)).await);
    assert_ne!(id_of(&c2), id_of(&c));
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&c2)).await.text(),
        "frank"
    );
    app.clock.advance(Duration::from_secs(101));
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&c2)).await.text(),
        "anonymous"
    );
}

#[tokio::test]
async fn touch_after_bounds_store_writes() {
    let app = app_with(|b| {
        b.idle_timeout(Duration::from_secs(3600))
            .touch_after(Duration::from_secs(60))
    });
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    let before = app.store.touches.load(Ordering::SeqCst);
    // 100 reads over 99 seconds: only one touch is due (after 60 s).
    for _ in 0..100 {
        assert_eq!(
            send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
            "\"1\""
        );
        app.clock.advance(Duration::from_secs(1));
    }
    // The touch that re-sends a persistent cookie is a compare-and-set save (it must know
    // the id was not rotated meanwhile): one store write in all, either way.
    let touches = app.store.touches.load(Ordering::SeqCst) - before;
    let writes = app.store.writes.load(Ordering::SeqCst) - 1;
    assert_eq!(touches + writes, 1, "the create and one touch");
}

#[tokio::test]
async fn a_failing_store_gives_5xx_and_no_set_cookie() {
    let app = app();
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
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
        let r = send(&app.router, m, uri, cookie).await;
        assert!(r.status.is_server_error(), "{m} {uri}: {}", r.status);
        assert!(
            r.set_cookies().is_empty(),
            "{m} {uri}: {:?}",
            r.set_cookies()
        );
        assert!(!r.text().contains("refused"), "backend details leaked");
    }
    app.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&c)).await.text(),
        "\"1\"",
        "nothing lost"
    );
}

#[tokio::test]
async fn oversized_and_duplicated_cookie_headers_do_not_panic() {
    let app = app();
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    let huge = format!("sid={}", "A".repeat(64 * 1024));
    let r = send(&app.router, "GET", "/get/a", Some(&huge)).await;
    assert_eq!(r.text(), "none");
    let many = (0..2000)
        .map(|i| format!("c{i}=v"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&many)).await.text(),
        "none"
    );
    // Duplicates: a junk one first, the valid one later; and two headers.
    let dup = format!("sid=junk; sid=; sid; {c}");
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&dup)).await.text(),
        "\"1\""
    );
    let mut browser = TestClient::new(app.router.clone());
    let req = Request::get("/get/a")
        .header(header::COOKIE, "sid=s%3Anope.nope")
        .header(header::COOKIE, c.as_str());
    let res = browser.send(req, Body::empty()).await;
    assert_eq!(res.status, StatusCode::OK);
    let req = Request::get("/get/a").header(
        header::COOKIE,
        http::HeaderValue::from_bytes(b"sid=\xc3\x28; \xff").unwrap(),
    );
    assert_eq!(
        browser.send(req, Body::empty()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn save_uninitialized_stores_empty_sessions_only_when_asked() {
    let off = app();
    assert!(send(&off.router, "GET", "/get/a", None)
        .await
        .set_cookies()
        .is_empty());
    assert!(off.store.inner.is_empty());
    let on = app_with(|b| b.save_uninitialized(true));
    let r = send(&on.router, "GET", "/get/a", None).await;
    assert_eq!(r.set_cookies().len(), 1);
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
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    assert!(id_of(&c).as_str().starts_with("custom-"));
}

#[tokio::test]
async fn missing_layer_is_a_500_not_a_panic() {
    let router = Router::new().route("/", get(|_s: Session| async { "x" }));
    let res = TestClient::new(router).get("/").await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
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
    let c = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    app.clock.advance(Duration::from_secs(1));
    let r = send(&app.router, "POST", "/set/a/2", Some(&c)).await;
    assert_eq!(
        r.set_cookies().len(),
        1,
        "expiry moved 1 s: the cookie follows"
    );
    assert_eq!(cookie_of(&r), c, "same id, same signature");
    app.clock.advance(Duration::from_secs(1));
    let r = send(&app.router, "GET", "/get/a", Some(&c)).await;
    assert!(
        r.set_cookies().is_empty(),
        "a read within touch_after sends nothing"
    );
    assert_eq!(r.text(), "\"2\"");
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
    let r = send(&app.router, "POST", "/set/counter/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r
        .set_cookies()
        .iter()
        .find(|c| c.starts_with("connect.sid=s%3A"))
        .expect("express-session's cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let writes = app.store.writes.load(Ordering::SeqCst);
    for key in ["cookie", "id", "save", "regenerate", "resetMaxAge"] {
        let r = send(&app.router, "POST", &format!("/set/{key}/x"), Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{key}");
        assert!(r.set_cookies().is_empty());
    }
    assert_eq!(
        app.store.writes.load(Ordering::SeqCst),
        writes,
        "nothing written"
    );
    let r = send(&app.router, "GET", "/get/counter", Some(&cookie)).await;
    assert_eq!(r.text(), "\"1\"", "the session is intact");
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
    let a = cookie_of(&send(&app.router, "POST", "/set/cart/3", None).await);
    let b = cookie_of(&send(&app.router, "POST", "/regenerate", Some(&a)).await);
    assert_ne!(id_of(&a), id_of(&b));
    assert!(retired(app.store.inner.load(&id_of(&a)).await.unwrap()));
    assert_eq!(
        send(&app.router, "GET", "/get/cart", Some(&b)).await.text(),
        "\"3\""
    );
    assert_eq!(
        send(&app.router, "GET", "/get/cart", Some(&a)).await.text(),
        "none"
    );
    let c = cookie_of(&send(&app.router, "POST", "/login/alice", Some(&b)).await);
    assert_ne!(id_of(&b), id_of(&c));
    assert!(retired(app.store.inner.load(&id_of(&b)).await.unwrap()));
    // Re-authentication on an authenticated session rotates again.
    let d = cookie_of(&send(&app.router, "POST", "/login/bob", Some(&c)).await);
    assert_ne!(id_of(&c), id_of(&d));
    assert!(retired(app.store.inner.load(&id_of(&c)).await.unwrap()));
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&d)).await.text(),
        "bob"
    );
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&c)).await.text(),
        "anonymous"
    );
}

/// A once-valid cookie whose session expired is not adopted: a write gets a fresh id and the
/// old id gets no record.
#[tokio::test]
async fn an_expired_cookie_is_not_adopted_and_a_write_gets_a_fresh_id() {
    let app = app_with(|b| b.idle_timeout(Duration::from_secs(60)));
    let old = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&old)).await.text(),
        "none"
    );
    let r = send(&app.router, "POST", "/set/b/2", Some(&old)).await;
    let fresh = cookie_of(&r);
    assert_ne!(id_of(&fresh), id_of(&old));
    assert!(app.store.inner.load(&id_of(&old)).await.unwrap().is_none());
    assert_eq!(
        send(&app.router, "GET", "/get/a", Some(&fresh))
            .await
            .text(),
        "none"
    );
}

/// ASVS 3.3.4 / 14.2.1: the id travels in the cookie only. A valid signed value in the query
/// string is ignored, and no response carries the id anywhere but `Set-Cookie`.
#[tokio::test]
async fn the_id_is_never_taken_from_or_put_in_the_url_or_body() {
    let app = app();
    let r = send(&app.router, "POST", "/login/alice", None).await;
    let cookie = cookie_of(&r);
    let id = id_of(&cookie);
    assert!(!r.text().contains(id.as_str()));
    let value = cookie.split_once('=').unwrap().1.to_owned();
    for query in [
        format!("sid={value}"),
        format!("connect.sid={value}"),
        format!("id={}", id.as_str()),
    ] {
        let r = send(&app.router, "GET", &format!("/whoami?{query}"), None).await;
        assert_eq!(r.text(), "anonymous", "{query}");
        assert!(r.set_cookies().is_empty());
    }
    let res = send(&app.router, "POST", "/set/k/v", Some(&cookie)).await;
    for (name, v) in &res.headers {
        if name != header::SET_COOKIE {
            assert!(!v.to_str().unwrap_or("").contains(id.as_str()), "{name}");
        }
    }
    assert!(!res.text().contains(id.as_str()));
}

/// Ids carry no user data: the cookie value is `s:` + 32 random base64url characters + MAC,
/// whatever the user or the data.
#[tokio::test]
async fn ids_carry_no_user_data() {
    let app = app();
    let c = cookie_of(&send(&app.router, "POST", "/set/cart/secret-cart-value", None).await);
    let c = cookie_of(&send(&app.router, "POST", "/login/alice-7781", Some(&c)).await);
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
    let a = cookie_of(&send(&app.router, "POST", "/set/a/1", None).await);
    let b = cookie_of(&send(&app.router, "POST", "/login/alice", Some(&a)).await);
    send(&app.router, "POST", "/incr", Some(&b)).await;
    app.store.down.store(true, Ordering::SeqCst);
    let r = send(&app.router, "POST", "/incr", Some(&b)).await;
    assert!(r.status.is_server_error());
    app.store.down.store(false, Ordering::SeqCst);
    send(&app.router, "POST", "/logout", Some(&b)).await;
    send(&app.router, "GET", "/get/a", Some(&format!("{b}x"))).await;
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
