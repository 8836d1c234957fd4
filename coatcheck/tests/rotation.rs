//! A rotated session is not a revoked one: what the browser sees when a login or a
//! `regenerate` on one request overlaps other requests of the same browser (a
//! double-clicked "Sign in", a second tab). Each schedule is pinned with a `Barrier`: a
//! handler pauses after loading its session, the login runs, the handler goes on. Each
//! test failed on the code before the end of a request became one state machine: the
//! stale answer cleared the new cookie, or set the dead one, and the user was signed out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    FlashLevel, KeyRing, ManualClock, Secure, Session, SessionError, SessionLayer, SessionStore,
    Timestamp,
};
use coatcheck_conformance::kit::Reply;
use common::send;
use http::StatusCode;
use tokio::sync::Barrier;

const SECRET: &str = "rotation test secret, long enough: 0123456789";

type Gate = State<Arc<Barrier>>;

/// Two waits: "loaded" (the test knows the handler has read its session) and "go on".
async fn pause(gate: &Barrier) {
    gate.wait().await;
    gate.wait().await;
}

/// The second submit of a sign-in form: it read the session before the first one rotated it.
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

/// A write at the end of the request (a form saved on the other tab).
async fn paused_put(State(gate): Gate, session: Session) -> Result<&'static str, SessionError> {
    session.get_value("x").await?;
    pause(&gate).await;
    session.insert("x", "late").await?;
    Ok("ok")
}

/// A page that only reads (its end-of-request touch races the login).
async fn paused_read(State(gate): Gate, session: Session) -> Result<String, SessionError> {
    let x = session.get::<String>("x").await?;
    pause(&gate).await;
    Ok(x.unwrap_or_default())
}

/// Commits early (`update`), then the handler goes on while the login runs.
async fn commit_then_pause(State(gate): Gate, session: Session) -> Result<String, SessionError> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    pause(&gate).await;
    Ok(n.to_string())
}

/// Leaves a flash message for the next page.
async fn paused_flash(State(gate): Gate, session: Session) -> Result<&'static str, SessionError> {
    session.get_value("x").await?;
    pause(&gate).await;
    session.flash(FlashLevel::Info, "saved").await?;
    Ok("ok")
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .user_id()
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn put(session: Session) -> Result<&'static str, SessionError> {
    session.insert("x", "v").await?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

struct App {
    router: Router,
    store: MemoryStore,
    clock: ManualClock,
    gate: Arc<Barrier>,
}

fn app_with(
    f: impl FnOnce(coatcheck::SessionLayerBuilder) -> coatcheck::SessionLayerBuilder,
) -> App {
    let clock = ManualClock::new(Timestamp::now());
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = f(SessionLayer::builder(store.clone(), keys)
        .clock(clock.clone())
        .secure(Secure::Never))
    .build()
    .expect("valid config");
    let gate = Arc::new(Barrier::new(2));
    let router = Router::new()
        .route("/paused-login/{user}", post(paused_login))
        .route("/paused-put", post(paused_put))
        .route("/paused-read", get(paused_read))
        .route("/commit-then-pause", post(commit_then_pause))
        .route("/paused-flash", post(paused_flash))
        .route("/login/{user}", post(login))
        .route("/whoami", get(whoami))
        .route("/put", post(put))
        .route("/logout", post(logout))
        .with_state(gate.clone())
        .layer(layer);
    App {
        router,
        store,
        clock,
        gate,
    }
}

fn cookie_of(r: &Reply) -> String {
    common::set_pair(r).expect("a Set-Cookie").to_owned()
}

impl App {
    /// A session with data, and its cookie.
    async fn session(&self) -> String {
        cookie_of(&send(&self.router, "POST", "/put", None).await)
    }

    /// Starts `method uri` with `cookie` and returns once its handler is paused.
    async fn start_paused(
        &self,
        method: &'static str,
        uri: &'static str,
        cookie: &str,
    ) -> tokio::task::JoinHandle<Reply> {
        let (router, cookie) = (self.router.clone(), cookie.to_owned());
        let task = tokio::spawn(async move { send(&router, method, uri, Some(&cookie)).await });
        self.gate.wait().await;
        task
    }

    /// Lets the paused handler go on and returns its reply.
    async fn resume(&self, task: tokio::task::JoinHandle<Reply>) -> Reply {
        self.gate.wait().await;
        task.await.expect("the request ran")
    }

    /// Signs in with `cookie` on another tab: the browser's new cookie.
    async fn sign_in(&self, cookie: &str) -> String {
        let r = send(&self.router, "POST", "/login/ada", Some(cookie)).await;
        assert_eq!(r.status, StatusCode::OK);
        cookie_of(&r)
    }

    async fn who(&self, cookie: &str) -> String {
        send(&self.router, "GET", "/whoami", Some(cookie))
            .await
            .text()
    }
}

/// The stale answer must leave the browser's cookie alone: no `Set-Cookie` at all.
fn leaves_the_cookie(r: &Reply) {
    assert!(
        r.set_cookie().is_none(),
        "a stale answer touched the cookie: {:?}",
        r.set_cookies()
    );
}

/// Defect 5: a double-submitted sign-in form. The second submit answers 409 and leaves
/// the first submit's cookie; the user stays signed in. Before: it cleared the cookie.
#[tokio::test]
async fn a_double_submitted_sign_in_keeps_the_user_signed_in() {
    let app = app_with(|b| b);
    let c = app.session().await;
    let second = app.start_paused("POST", "/paused-login/ada", &c).await;
    let new = app.sign_in(&c).await;
    let r = app.resume(second).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    leaves_the_cookie(&r);
    assert_eq!(app.who(&new).await, "ada");
}

/// Defect 6: a request of another tab, in flight across the login, writes (or touches) at
/// its end. Its write is not kept (409), and it sends no cookie. Before: it cleared it.
#[tokio::test]
async fn a_write_in_flight_across_a_login_leaves_the_new_cookie() {
    let app = app_with(|b| b);
    let c = app.session().await;
    let tab = app.start_paused("POST", "/paused-put", &c).await;
    let new = app.sign_in(&c).await;
    let r = app.resume(tab).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "never a silent 200");
    leaves_the_cookie(&r);
    assert_eq!(app.who(&new).await, "ada");
}

/// Defect 6, the touch: a page that only read answers 200 and sends no cookie, whether
/// its touch is a blind touch (a browser-session cookie) or a compare-and-set save (a
/// persistent one, which re-sends the cookie).
#[tokio::test]
async fn a_read_in_flight_across_a_login_leaves_the_new_cookie() {
    for browser_session in [false, true] {
        let app = app_with(|b| {
            b.touch_after(Duration::ZERO)
                .browser_session(browser_session)
        });
        let c = app.session().await;
        let tab = app.start_paused("GET", "/paused-read", &c).await;
        app.clock.advance(Duration::from_secs(1));
        let new = app.sign_in(&c).await;
        let r = app.resume(tab).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "browser_session {browser_session}"
        );
        leaves_the_cookie(&r);
        assert_eq!(app.who(&new).await, "ada");
    }
}

/// Defect 7: a request that committed early (`update`) and ends after a login on another
/// tab. Its commit stands (carried into the new session), and it must not send the dead
/// id's cookie. Before: it re-sent the request's own cookie value as it came.
#[tokio::test]
async fn an_early_commit_ending_after_a_login_does_not_resend_the_dead_cookie() {
    // Within the touch cadence (no cookie is due) and past it (the id is checked first).
    for wait in [Duration::ZERO, Duration::from_secs(120)] {
        let app = app_with(|b| b.touch_after(Duration::from_secs(60)));
        let c = app.session().await;
        app.clock.advance(wait);
        let tab = app.start_paused("POST", "/commit-then-pause", &c).await;
        let new = app.sign_in(&c).await;
        let r = app.resume(tab).await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "1"));
        leaves_the_cookie(&r);
        assert_eq!(app.who(&new).await, "ada");
    }
}

/// An early commit with no login meanwhile still re-sends a persistent cookie, at the
/// touch cadence, so its `Expires` follows a user who only ever `update`s.
#[tokio::test]
async fn an_early_commit_resends_the_live_cookie_at_the_touch_cadence() {
    let app = app_with(|b| b.touch_after(Duration::from_secs(60)));
    let c = app.session().await;
    app.clock.advance(Duration::from_secs(120));
    let tab = app.start_paused("POST", "/commit-then-pause", &c).await;
    let r = app.resume(tab).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(cookie_of(&r), c, "the same cookie, its Expires moved");
}

/// Defect 8: a flash left by a request in flight across a login is not kept, and the
/// request says so (409) instead of a 200 whose message never shows.
#[tokio::test]
async fn a_flash_in_flight_across_a_login_is_refused_not_lost() {
    let app = app_with(|b| b);
    let c = app.session().await;
    let tab = app.start_paused("POST", "/paused-flash", &c).await;
    let new = app.sign_in(&c).await;
    let r = app.resume(tab).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    leaves_the_cookie(&r);
    assert_eq!(app.who(&new).await, "ada");
}

/// Holding the old id gains nothing: it reads no session, cannot write, sign in or sign
/// out through it (409, the cookie left alone), and the store keeps under it only the
/// rotation's mark (no data, no user, no pointer to the new id). Once the mark's time is
/// over, the old cookie is an unknown id like any other: a write starts a fresh session.
#[tokio::test]
async fn the_old_id_of_a_rotation_gains_nothing() {
    let app = app_with(|b| b);
    let old = app.session().await;
    let old_id = common::id_of(&old, SECRET);
    let new = app.sign_in(&old).await;
    assert_eq!(app.who(&old).await, "anonymous");
    for uri in ["/put", "/login/eve", "/logout"] {
        let r = send(&app.router, "POST", uri, Some(&old)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{uri}");
        leaves_the_cookie(&r);
    }
    assert_eq!(app.who(&new).await, "ada", "the new session is untouched");
    let mark = app
        .store
        .load(&old_id)
        .await
        .expect("load")
        .expect("the mark");
    assert_eq!(mark.data.len(), 1, "only the mark: {:?}", mark.data);
    assert!(coatcheck::core::keys::is_rotation_mark(&mark.data));
    assert_eq!((mark.user_id, mark.device), (None, None));
    assert!(app.store.list_for_user("ada").await.expect("list").len() == 1);
    // The mark lives a minute.
    app.clock.advance(Duration::from_secs(61));
    let r = send(&app.router, "POST", "/put", Some(&old)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(cookie_of(&r), old, "a fresh session");
}
