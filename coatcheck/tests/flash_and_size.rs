//! Flash messages (shown once, even to two tabs at the same moment; kept across login)
//! and the size limit on session data (a write over it is refused and changes nothing).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    FlashLevel, KeyRing, LimitPolicy, Secure, Session, SessionError, SessionLayer, SessionStore,
    DEFAULT_MAX_DATA_BYTES,
};
use common::Jar;
use http::StatusCode;
use tokio::sync::Barrier;

const SECRET: &str = "flash test secret, long enough: 0123456789abcdef";

#[derive(Clone)]
struct St {
    barrier: Arc<Barrier>,
}

async fn flash(session: Session, Path(text): Path<String>) -> Result<&'static str, SessionError> {
    session.flash(FlashLevel::Success, text).await?;
    Ok("ok")
}

async fn show(session: Session) -> Result<String, SessionError> {
    let shown: Vec<String> = session
        .take_flash()
        .await?
        .into_iter()
        .map(|f| format!("{:?}:{}", f.level, f.text))
        .collect();
    Ok(shown.join(","))
}

/// Loads, waits for the other tab, then takes: both saw the same messages waiting.
async fn racing_show(State(st): State<St>, session: Session) -> Result<String, SessionError> {
    session.get::<String>("reg").await?;
    st.barrier.wait().await;
    show(session).await
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

async fn put(session: Session, Path(len): Path<usize>) -> Result<&'static str, SessionError> {
    session.insert("reg", "x".repeat(len)).await?;
    Ok("ok")
}

/// `update` commits at once: the refusal reaches the handler.
async fn grow(session: Session, Path(len): Path<usize>) -> Result<String, SessionError> {
    match session
        .update("reg", move |_: Option<String>| "y".repeat(len))
        .await
    {
        Ok(_) => Ok("grown".into()),
        Err(SessionError::DataTooLarge { size, limit }) => {
            assert!(size > limit && limit == 1000, "{size} > {limit}");
            Ok(format!("refused {size} > {limit}"))
        }
        Err(e) => Err(e),
    }
}

/// Writes `len` bytes and signs in as `user` in one request (an oversized login).
async fn put_login(
    session: Session,
    Path((len, user)): Path<(usize, String)>,
) -> Result<&'static str, SessionError> {
    session.insert("reg", "z".repeat(len)).await?;
    session.login(user).await?;
    Ok("ok")
}

async fn regenerate(session: Session) -> Result<&'static str, SessionError> {
    session.regenerate().await?;
    Ok("ok")
}

async fn new_password(session: Session) -> Result<&'static str, SessionError> {
    // The lookup answers "v1" for everyone: the re-stamp is that, under a new id.
    session.credentials_changed("v1").await?;
    Ok("ok")
}

async fn token(session: Session) -> Result<String, SessionError> {
    session.csrf_token().await
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

async fn reg_len(session: Session) -> Result<String, SessionError> {
    Ok(session
        .get::<String>("reg")
        .await?
        .map_or("none".into(), |r| r.len().to_string()))
}

fn app(store: Arc<dyn SessionStore>, limit: Option<usize>) -> Router {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let layer = SessionLayer::builder_shared(store, keys)
        .secure(Secure::Never)
        .max_data_bytes(limit)
        .build()
        .expect("config");
    routes(layer)
}

/// The app with every feature whose writes a size limit must not break: remember-me (a
/// touch is then a compare-and-set save), a touch on every read, and the session cap with
/// `Evict` (a login of another user deletes the old record first).
fn strict_app(store: Arc<dyn SessionStore>, limit: Option<usize>) -> Router {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let layer = SessionLayer::builder_shared(store, keys)
        .secure(Secure::Never)
        .max_data_bytes(limit)
        .remember_me(Duration::from_secs(86_400), None)
        .touch_after(Duration::ZERO)
        .max_sessions_per_user(2, LimitPolicy::EvictLeastRecentlySeen)
        .credential_check(|_user: String| async {
            Ok::<_, std::convert::Infallible>(Some(b"v1".to_vec()))
        })
        .build()
        .expect("config");
    routes(layer)
}

fn routes(layer: SessionLayer) -> Router {
    Router::new()
        .route("/flash/{text}", post(flash))
        .route("/show", get(show))
        .route("/racing_show", get(racing_show))
        .route("/login/{user}", post(login))
        .route("/put/{len}", post(put))
        .route("/grow/{len}", post(grow))
        .route("/put_login/{len}/{user}", post(put_login))
        .route("/reg", get(reg_len))
        .route("/regenerate", post(regenerate))
        .route("/password", post(new_password))
        .route("/token", get(token))
        .route("/logout", post(logout))
        .merge(
            Router::new()
                .route("/form", post(put_form))
                .route_layer(coatcheck::CsrfLayer::new()),
        )
        .with_state(St {
            barrier: Arc::new(Barrier::new(2)),
        })
        .layer(layer)
}

/// Behind `CsrfLayer`: shrinks the register to one byte.
async fn put_form(session: Session) -> Result<&'static str, SessionError> {
    session.insert("reg", "s").await?;
    Ok("ok")
}

fn memory_app(limit: Option<usize>) -> Router {
    app(Arc::new(MemoryStore::new()), limit)
}

#[tokio::test]
async fn a_flash_is_shown_once_and_survives_a_login() {
    let app = memory_app(Some(DEFAULT_MAX_DATA_BYTES));
    let mut jar = Jar::default();
    jar.send(&app, "/flash/welcome").await;
    jar.send(&app, "/flash/again").await;
    jar.send(&app, "/login/ada").await;
    let (status, shown) = jar.get(&app, "/show").await;
    assert_eq!(
        (status, shown.as_str()),
        (StatusCode::OK, "Success:welcome,Success:again")
    );
    let (_, shown) = jar.get(&app, "/show").await;
    assert_eq!(shown, "", "shown once");
}

#[tokio::test]
async fn old_messages_give_way_past_the_cap() {
    let app = memory_app(None);
    let mut jar = Jar::default();
    for i in 0..(coatcheck::MAX_PENDING_FLASHES + 3) {
        jar.send(&app, &format!("/flash/m{i}")).await;
    }
    let (_, shown) = jar.get(&app, "/show").await;
    let shown: Vec<&str> = shown.split(',').collect();
    assert_eq!(shown.len(), coatcheck::MAX_PENDING_FLASHES);
    assert_eq!(shown[0], "Success:m3");
}

/// Two tabs take at the same moment, both having seen the messages waiting: one shows
/// them, the other shows none (a take written at the end of the request would be replayed
/// onto the other's write and show them twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_taking_at_once_show_a_message_once() {
    for _ in 0..20 {
        let app = memory_app(None);
        let mut jar = Jar::default();
        jar.send(&app, "/flash/once").await;
        let (mut a, mut b) = (jar.clone(), jar.clone());
        let (app_a, app_b) = (app.clone(), app.clone());
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.get(&app_a, "/racing_show").await }),
            tokio::spawn(async move { b.get(&app_b, "/racing_show").await }),
        );
        let ((sa, ta), (sb, tb)) = (ra.expect("tab a"), rb.expect("tab b"));
        assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
        let mut shown = [ta, tb];
        shown.sort();
        assert_eq!(shown, [String::new(), "Success:once".to_string()]);
    }
}

#[tokio::test]
async fn a_write_over_the_limit_is_refused_and_the_stored_session_is_unchanged() {
    let app = memory_app(Some(1000));
    let mut jar = Jar::default();
    let (status, _) = jar.send(&app, "/put/100").await;
    assert_eq!(status, StatusCode::OK);
    let cookie = jar.cookie.clone();
    // At the end of the request: the response becomes the failure.
    let (status, _) = jar.send(&app, "/put/5000").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // An error page says what failed (it said "session store unavailable").
    let failure = jar.failure.clone().expect("the layer's failure is marked");
    assert_eq!(failure.message, "session data too large");
    assert_eq!(jar.cookie, cookie);
    assert_eq!(jar.get(&app, "/reg").await.1, "100");
    // In `update`: the handler gets the typed error, and the request still fails closed
    // (its view of the session holds what was never stored).
    let (status, _) = jar.send(&app, "/grow/5000").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        jar.failure.as_ref().map(|f| f.message),
        Some("session data too large"),
        "a handler that caught the error still answers why"
    );
    assert_eq!(jar.cookie, cookie);
    assert_eq!(jar.get(&app, "/reg").await.1, "100");
    // A new session over the limit is not created at all.
    let mut fresh = Jar::default();
    let (status, _) = fresh.send(&app, "/put/5000").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(fresh.cookie.is_none());
    // No limit: anything goes.
    let open = memory_app(None);
    let (status, _) = Jar::default().send(&open, "/put/200000").await;
    assert_eq!(status, StatusCode::OK);
}

/// A session that was already over the limit (stored before it, or before it was lowered)
/// keeps working: reads, whose touch is a save with remember-me, and writes that do not
/// grow it; only growing it is refused. Failed before: every request of such a session,
/// reads included, answered 500.
#[tokio::test]
async fn a_session_already_over_the_limit_keeps_working_and_may_only_shrink() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let open = strict_app(store.clone(), None);
    let limited = strict_app(store, Some(1000));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&open, "/put/5000").await.0, StatusCode::OK);
    let (status, len) = jar.get(&limited, "/reg").await;
    assert_eq!((status, len.as_str()), (StatusCode::OK, "5000"));
    assert_eq!(jar.send(&limited, "/put/4000").await.0, StatusCode::OK);
    assert_eq!(jar.get(&limited, "/reg").await.1, "4000");
    assert_eq!(
        jar.send(&limited, "/put/6000").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(jar.get(&limited, "/reg").await.1, "4000");
}

/// A login that evicts other devices deletes the old record before creating the new one:
/// an oversized one must fail before deleting anything. Failed before: the browser was
/// signed out and its session gone.
#[tokio::test]
async fn an_oversized_login_that_may_evict_deletes_nothing() {
    let app = strict_app(Arc::new(MemoryStore::new()), Some(1000));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/put/100").await.0, StatusCode::OK);
    let cookie = jar.cookie.clone();
    let (status, _) = jar.send(&app, "/put_login/5000/bob").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(jar.cookie, cookie);
    assert_eq!(
        jar.get(&app, "/reg").await.1,
        "100",
        "the session is still there"
    );
}

/// A session already over the limit (stored before the limit existed) signs in, rotates,
/// re-stamps its credentials, gets a CSRF token whose form is served, and signs out: none
/// of these grows the application's data, and the session's own keys (the CSRF secret, the
/// credential stamp) do not count. Before: the login, `regenerate` and
/// `credentials_changed` answered 500 "session data too large", and so did `csrf_token` —
/// every form, sign-out included, then 403 until the session expired.
#[tokio::test]
async fn a_session_over_the_limit_signs_in_rotates_gets_a_token_and_signs_out() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let open = strict_app(store.clone(), None);
    let limited = strict_app(store, Some(1000));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&open, "/put/5000").await.0, StatusCode::OK);
    let (status, token) = jar.get(&limited, "/token").await;
    assert_eq!(status, StatusCode::OK, "a CSRF token: {token}");
    for step in ["/login/ada", "/regenerate", "/password"] {
        let before = jar.cookie.clone();
        let (status, body) = jar.send(&limited, step).await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
        assert_ne!(jar.cookie, before, "{step} rotates the id");
        assert_eq!(
            jar.get(&limited, "/reg").await.1,
            "5000",
            "{step} keeps the data"
        );
    }
    // The token of the new id, in a form: served, and the session shrinks.
    let (status, token) = jar.get(&limited, "/token").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = jar
        .call(
            &limited,
            http::Request::post("/form").header(coatcheck::csrf::CSRF_HEADER, token),
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(jar.get(&limited, "/reg").await.1, "1");
    assert_eq!(
        jar.send(&limited, "/put/5000").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(jar.send(&limited, "/logout").await.0, StatusCode::OK);
    assert!(jar.cookie.is_none(), "signed out");
}
