//! The lifecycle defects the history checker found (or that a review found and a schedule
//! shows), each pinned as one deterministic schedule: a handler pauses between loading its
//! session and writing it (a `Barrier` the test holds), another request runs in between.
//! Each test fails on the code before its fix.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    Clock, ConfigError, KeyRing, ManualClock, Secure, Session, SessionError, SessionLayer,
    SessionStore, Timestamp,
};
use coatcheck_conformance::kit::{Reply, TestClient};
use common::send;
use http::header::COOKIE;
use http::{HeaderValue, Request, StatusCode};
use tokio::sync::Barrier;

const SECRET: &str = "lifecycle test secret, long enough: 0123456789";

/// Two waits: "loaded" (the test knows the handler has read its session) and "go on".
async fn pause(gate: &Barrier) {
    gate.wait().await;
    gate.wait().await;
}

type Gate = State<Arc<Barrier>>;

async fn paused_login(
    State(gate): Gate,
    session: Session,
    Path(user): Path<String>,
) -> Result<&'static str, SessionError> {
    session.get_value("x").await?;
    pause(&gate).await;
    session.login(user).await?;
    Ok("ok")
}

async fn paused_regenerate(
    State(gate): Gate,
    session: Session,
) -> Result<&'static str, SessionError> {
    session.get_value("x").await?;
    pause(&gate).await;
    session.regenerate().await?;
    Ok("ok")
}

async fn paused_incr(State(gate): Gate, session: Session) -> Result<String, SessionError> {
    session.get_value("n").await?;
    pause(&gate).await;
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn incr(session: Session) -> Result<String, SessionError> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn get_n(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("n").await?.unwrap_or(0).to_string())
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn logout_all(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_everywhere().await?.to_string())
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .user_id()
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn set_expiry(session: Session, Path(secs): Path<u64>) -> Result<&'static str, SessionError> {
    session.set_expiry_in(Duration::from_secs(secs)).await?;
    Ok("ok")
}

async fn put(session: Session) -> Result<&'static str, SessionError> {
    let n = session.get::<u64>("w").await?.unwrap_or(0);
    session.insert("w", n + 1).await?;
    Ok("ok")
}

struct App {
    router: Router,
    store: MemoryStore,
    clock: ManualClock,
}

fn app_with(
    f: impl FnOnce(coatcheck::SessionLayerBuilder) -> coatcheck::SessionLayerBuilder,
) -> (App, Arc<Barrier>) {
    let clock = ManualClock::new(Timestamp::now());
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = f(SessionLayer::builder(store.clone(), keys).clock(clock.clone()))
        .build()
        .expect("valid config");
    let gate = Arc::new(Barrier::new(2));
    let router = Router::new()
        .route("/paused-login/{user}", post(paused_login))
        .route("/paused-regenerate", post(paused_regenerate))
        .route("/paused-incr", post(paused_incr))
        .route("/incr", post(incr))
        .route("/n", get(get_n))
        .route("/login/{user}", post(login))
        .route("/logout-all", post(logout_all))
        .route("/whoami", get(whoami))
        .route("/set-expiry/{secs}", post(set_expiry))
        .route("/put", post(put))
        .with_state(gate.clone())
        .layer(layer);
    (
        App {
            router,
            store,
            clock,
        },
        gate,
    )
}

fn app() -> (App, Arc<Barrier>) {
    app_with(|b| b)
}

/// `sid=value` the reply set, for the next request.
fn cookie_of(r: &Reply) -> String {
    common::set_pair(r).expect("a Set-Cookie").to_owned()
}

/// The `Expires` the browser keeps, as a timestamp.
fn expires(r: &Reply) -> Timestamp {
    let c = cookie::Cookie::parse(r.set_cookie().expect("a Set-Cookie")).expect("a cookie");
    let t = c.expires_datetime().expect("a persistent cookie");
    Timestamp::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The sessions the store holds once the rotations' marks (a minute's life) are gone.
async fn sessions(app: &App) -> usize {
    app.clock.advance(Duration::from_secs(61));
    app.store.delete_expired().await.expect("sweep");
    app.store.len()
}

/// Starts `uri` with `cookie` in the background and returns once its handler has loaded
/// the session and is paused.
async fn start_paused(
    router: &Router,
    gate: &Barrier,
    uri: &'static str,
    cookie: &str,
) -> tokio::task::JoinHandle<Reply> {
    let (router, cookie) = (router.clone(), cookie.to_owned());
    let task = tokio::spawn(async move { send(&router, "POST", uri, Some(&cookie)).await });
    gate.wait().await;
    task
}

/// Defect 1: a login in flight while "log out everywhere" ran brought the session back
/// under a new id. It must fail closed: 409, cookie cleared, nothing of the user left.
#[tokio::test]
async fn login_racing_logout_everywhere_fails_closed() {
    let (app, gate) = app();
    let a = cookie_of(&send(&app.router, "POST", "/login/alice", None).await);
    let b = cookie_of(&send(&app.router, "POST", "/login/alice", None).await);
    let paused = start_paused(&app.router, &gate, "/paused-login/alice", &a).await;
    assert_eq!(
        send(&app.router, "POST", "/logout-all", Some(&b))
            .await
            .text(),
        "2"
    );
    gate.wait().await;
    let r = paused.await.expect("no panic");
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    // Revoked while it ran: no cookie at all (the browser may hold a newer one by now; a
    // clear here signed it out). It asserted a clear before issue 41.
    assert!(r.set_cookie().is_none(), "the cookie is left alone: {r:?}");
    assert!(app
        .store
        .list_for_user("alice")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(app.store.len(), 0, "no session was created");
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&a)).await.text(),
        "anonymous"
    );
}

/// Defect 2: a regenerate built on a stale record deleted a newer acknowledged write.
#[tokio::test]
async fn regenerate_keeps_a_write_acknowledged_meanwhile() {
    let (app, gate) = app();
    let c = cookie_of(&send(&app.router, "POST", "/incr", None).await);
    let paused = start_paused(&app.router, &gate, "/paused-regenerate", &c).await;
    assert_eq!(
        send(&app.router, "POST", "/incr", Some(&c)).await.text(),
        "2"
    );
    gate.wait().await;
    let r = paused.await.expect("no panic");
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let fresh = cookie_of(&r);
    assert_ne!(fresh, c);
    assert_eq!(
        send(&app.router, "GET", "/n", Some(&fresh)).await.text(),
        "2"
    );
    assert_eq!(
        send(&app.router, "GET", "/n", Some(&c)).await.text(),
        "0",
        "the old id is dead"
    );
    assert_eq!(sessions(&app).await, 1);
}

/// Two logins racing on one session left an orphan (a second live copy no cookie named).
#[tokio::test]
async fn two_racing_logins_leave_one_session() {
    let (app, gate) = app();
    let c = cookie_of(&send(&app.router, "POST", "/login/bob", None).await);
    let paused = start_paused(&app.router, &gate, "/paused-login/bob", &c).await;
    let winner = cookie_of(&send(&app.router, "POST", "/login/bob", Some(&c)).await);
    gate.wait().await;
    let r = paused.await.expect("no panic");
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert_eq!(sessions(&app).await, 1, "exactly one session");
    assert_eq!(app.store.list_for_user("bob").await.expect("list").len(), 1);
    assert_eq!(
        send(&app.router, "GET", "/whoami", Some(&winner))
            .await
            .text(),
        "bob"
    );
}

/// Defect 4: `update` answered a value computed on a stale view (re-run at the end of the
/// request, after the answer was made).
#[tokio::test]
async fn update_answers_the_committed_value() {
    let (app, gate) = app();
    let c = cookie_of(&send(&app.router, "POST", "/put", None).await);
    let paused = start_paused(&app.router, &gate, "/paused-incr", &c).await;
    assert_eq!(
        send(&app.router, "POST", "/incr", Some(&c)).await.text(),
        "1"
    );
    gate.wait().await;
    let r = paused.await.expect("no panic");
    assert_eq!(
        r.text(),
        "2",
        "the value stored, not the one computed first"
    );
    assert_eq!(send(&app.router, "GET", "/n", Some(&c)).await.text(), "2");
}

/// Many concurrent increments answer distinct values, 1..=n.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_answer_distinct_committed_values() {
    let (app, _) = app();
    let c = cookie_of(&send(&app.router, "POST", "/put", None).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (router, c) = (app.router.clone(), c.clone());
            tokio::spawn(async move { send(&router, "POST", "/incr", Some(&c)).await })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        let r = t.await.expect("no panic");
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        seen.push(r.text().parse::<u64>().expect("a number"));
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
}

/// Defect 3: `set_expiry` on an existing session sent no `Set-Cookie`.
#[tokio::test]
async fn set_expiry_reaches_the_browser() {
    let (app, _) = app();
    let c = cookie_of(&send(&app.router, "POST", "/incr", None).await);
    let r = send(&app.router, "POST", "/set-expiry/2592000", Some(&c)).await;
    assert_eq!(cookie_of(&r), c);
    let in_30_days = app.clock.now() + Duration::from_secs(2_592_000);
    assert!(expires(&r).as_millis().abs_diff(in_30_days.as_millis()) < 2_000);
}

/// Defect 3: a user writing more often than `touch_after` never got a fresh `Expires`; the
/// browser dropped the cookie of a live session (idle 600 s, a write every 30 s).
#[tokio::test]
async fn a_frequent_writer_keeps_a_live_cookie() {
    let (app, _) = app_with(|b| b.idle_timeout(Duration::from_secs(600)));
    let first = send(&app.router, "POST", "/put", None).await;
    let c = cookie_of(&first);
    let mut browser_expires = expires(&first);
    for step in 0..24 {
        app.clock.advance(Duration::from_secs(30));
        assert!(
            app.clock.now() < browser_expires,
            "the browser dropped the cookie after {} s",
            (step + 1) * 30
        );
        let r = send(&app.router, "POST", "/put", Some(&c)).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.set_cookie().is_some() {
            browser_expires = expires(&r);
        }
    }
}

/// Defect 5: one cookie with non-ASCII bytes anywhere in the header hid the session.
#[tokio::test]
async fn a_non_ascii_neighbour_cookie_does_not_hide_the_session() {
    let (app, _) = app();
    let c = cookie_of(&send(&app.router, "POST", "/login/carol", None).await);
    for header in [
        format!("pref=caf\u{e9}; {c}"),
        format!("{c}; pref=caf\u{e9}"),
        format!("a=1; pref=\u{1F36A}; {c}; b=2"),
    ] {
        let value = HeaderValue::from_bytes(header.as_bytes()).expect("opaque bytes");
        let req = Request::get("/whoami").header(COOKIE, value);
        let r = TestClient::new(app.router.clone())
            .send(req, Body::empty())
            .await;
        assert_eq!(r.text(), "carol", "{header:?}");
    }
}

/// Defect 8: `touch_after >= idle_timeout` silently turned rolling expiry off.
#[test]
fn touch_after_not_below_idle_timeout_is_a_config_error() {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let err = SessionLayer::builder(MemoryStore::new(), keys)
        .idle_timeout(Duration::from_secs(600))
        .touch_after(Duration::from_secs(600))
        .build()
        .expect_err("refused");
    assert!(
        matches!(err, ConfigError::TouchAfterNotBelowIdle { .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("must be shorter than the idle timeout"));
}

/// Browsers match `__Host-` / `__Secure-` case-insensitively; so does the check.
#[test]
fn cookie_prefixes_are_checked_case_insensitively() {
    for name in ["__host-sid", "__HOST-sid", "__secure-sid", "__SeCuRe-sid"] {
        let keys = KeyRing::new([SECRET]).expect("long secret");
        let built = SessionLayer::builder(MemoryStore::new(), keys)
            .name(name)
            .secure(Secure::Never)
            .build();
        assert!(built.is_err(), "{name} without Secure was accepted");
    }
}

async fn insert_user(session: Session, Path(v): Path<String>) -> Result<String, SessionError> {
    // A number stays a number, as Node writes it.
    match v.parse::<u64>() {
        Ok(n) => session.insert("userId", n).await?,
        Err(_) => session.insert("userId", v).await?,
    }
    Ok(session.user_id().await?.unwrap_or_default())
}

async fn remove_user(session: Session) -> Result<String, SessionError> {
    session.remove("userId").await?;
    Ok(session
        .user_id()
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn get_user_key(session: Session) -> Result<String, SessionError> {
    Ok(session
        .get_value("userId")
        .await?
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into()))
}

/// Defect 6: in express mode the principal is the data under `userId`, both ways: writing
/// it logs in (and indexes), removing it logs out, `login()` writes it, and Node's integer
/// ids stay integers.
#[tokio::test]
async fn express_mode_principal_is_the_user_id_key_both_ways() {
    let store = MemoryStore::new();
    let keys = KeyRing::new_allowing_weak(["keyboard cat"]).expect("secret");
    let layer = SessionLayer::builder(store.clone(), keys)
        .express_compatible()
        .secure(Secure::Never)
        .build()
        .expect("valid config");
    let router = Router::new()
        .route("/insert-user/{v}", post(insert_user))
        .route("/remove-user", post(remove_user))
        .route("/user-key", get(get_user_key))
        .route("/login/{user}", post(login))
        .route("/whoami", get(whoami))
        .layer(layer);
    // insert("userId") without login: logged in, indexed.
    let r = send(&router, "POST", "/insert-user/42", None).await;
    assert_eq!(r.text(), "42");
    let c = cookie_of(&r);
    assert_eq!(send(&router, "GET", "/whoami", Some(&c)).await.text(), "42");
    assert_eq!(store.list_for_user("42").await.expect("list").len(), 1);
    assert_eq!(
        send(&router, "GET", "/user-key", Some(&c)).await.text(),
        "42",
        "an integer"
    );
    // changed from Rust: the new value, as written.
    send(&router, "POST", "/insert-user/7", Some(&c)).await;
    assert_eq!(send(&router, "GET", "/whoami", Some(&c)).await.text(), "7");
    assert_eq!(
        send(&router, "GET", "/user-key", Some(&c)).await.text(),
        "7"
    );
    assert!(store.list_for_user("42").await.expect("list").is_empty());
    // login writes the key.
    let c = cookie_of(&send(&router, "POST", "/login/ann", Some(&c)).await);
    assert_eq!(
        send(&router, "GET", "/user-key", Some(&c)).await.text(),
        "\"ann\""
    );
    // remove("userId") is a logout.
    assert_eq!(
        send(&router, "POST", "/remove-user", Some(&c)).await.text(),
        "anonymous"
    );
    assert_eq!(
        send(&router, "GET", "/whoami", Some(&c)).await.text(),
        "anonymous"
    );
    assert!(store.list_for_user("ann").await.expect("list").is_empty());
}

/// Conflicts exhausted: a `503` with a short body and `Retry-After`, not an empty answer.
#[tokio::test]
async fn exhausted_conflicts_answer_503_with_retry_after() {
    let (app, gate) = app_with(|b| b.max_save_retries(0));
    let c = cookie_of(&send(&app.router, "POST", "/put", None).await);
    let (router, cookie) = (app.router.clone(), c.clone());
    let paused = tokio::spawn(async move {
        let req = Request::post("/paused-incr").header(COOKIE, cookie);
        TestClient::new(router).send(req, Body::empty()).await
    });
    gate.wait().await;
    assert_eq!(
        send(&app.router, "POST", "/incr", Some(&c)).await.text(),
        "1"
    );
    gate.wait().await;
    let res = paused.await.expect("no panic");
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers
            .get(http::header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(&res.body[..], b"session store busy, retry");
}
