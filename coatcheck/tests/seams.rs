//! Features at their seams (issue 25): each test turns two features on at once, or one
//! feature against the request lifecycle, and failed on the code before its fix.
//!
//! - credential check × session cap: stale sessions neither count nor are listed;
//! - a login stamped with the credentials the application verified, and re-stamping the
//!   current session after the user changed their own password;
//! - a credential lookup that hangs is bounded like a store call;
//! - `CredentialsChanged` once per session, however many requests found it stale;
//! - remember-me unticked while another request of the same session was reading it;
//! - a double-submitted sign-in under `Evict`: one eviction for one new device;
//! - data encryption: a key rotation and a plaintext migration finish for active sessions.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    KeyRing, LimitPolicy, ManualClock, RevokeScope, Secure, Session, SessionError, SessionEvent,
    SessionLayer, SessionLayerBuilder, SessionStore, StoreError, Timestamp,
};
use coatcheck_conformance::kit::{Call, StoreWrapper, Wrapped};
use common::Jar;
use futures_util::future::BoxFuture;
use http::StatusCode;
use tokio::sync::Notify;

const SECRET: &str = "seams test secret, long enough: 0123456789";
const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The application's user table: user -> password hash.
#[derive(Clone, Default)]
struct Users(Arc<RwLock<HashMap<String, String>>>);

impl Users {
    fn set(&self, user: &str, hash: &str) {
        self.0
            .write()
            .expect("lock")
            .insert(user.into(), hash.into());
    }
    fn get(&self, user: &str) -> Option<String> {
        self.0.read().expect("lock").get(user).cloned()
    }
}

fn checked(builder: SessionLayerBuilder, users: &Users) -> SessionLayerBuilder {
    let users = users.clone();
    builder.credential_check(move |user: String| {
        let users = users.clone();
        async move { Ok::<_, std::convert::Infallible>(users.get(&user).map(String::into_bytes)) }
    })
}

type Events = Arc<Mutex<Vec<SessionEvent>>>;

fn builder(store: Arc<dyn SessionStore>, events: &Events) -> SessionLayerBuilder {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let sink = events.clone();
    SessionLayer::builder_shared(store, keys)
        .secure(Secure::Never)
        .on_event(move |e| sink.lock().expect("lock").push(e))
}

async fn events_after(events: &Events, settle: Duration) -> Vec<SessionEvent> {
    tokio::time::sleep(settle).await;
    events.lock().expect("lock").clone()
}

#[derive(Clone)]
struct App {
    users: Users,
    /// `/slow`: told once the session is read, then waits to be let go.
    read: Arc<Notify>,
    go: Arc<Notify>,
}

async fn login(session: Session, Path(user): Path<String>) -> Result<String, SessionError> {
    session.login(user).await?;
    Ok("ok".into())
}
async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session.user_id().await?.unwrap_or_default())
}
async fn put(session: Session) -> Result<String, SessionError> {
    session.insert("k", 1).await?;
    Ok("ok".into())
}
async fn devices(session: Session) -> Result<String, SessionError> {
    Ok(session.list_user_sessions().await?.len().to_string())
}
/// Verifies the password against the hash it reads, then a password reset lands (made
/// here, between the check and the login), then logs in with what it verified.
async fn login_racing_a_reset(
    State(app): State<App>,
    session: Session,
    Path(user): Path<String>,
) -> Result<String, SessionError> {
    let verified = app.users.get(&user).unwrap_or_default();
    app.users.set(&user, "hash after the reset");
    session.login_verified(user, verified).await?;
    Ok("ok".into())
}
async fn change_password(State(app): State<App>, session: Session) -> Result<String, SessionError> {
    let user = session.user_id().await?.unwrap_or_default();
    app.users.set(&user, "the user's new hash");
    session.credentials_changed("the user's new hash").await?;
    Ok("ok".into())
}
async fn remember(session: Session, Path(yes): Path<bool>) -> Result<String, SessionError> {
    session.remember_me(yes).await?;
    Ok("ok".into())
}
/// Reads the session, says so, and finishes only when let go.
async fn slow(State(app): State<App>, session: Session) -> Result<String, SessionError> {
    let user = session.user_id().await?.unwrap_or_default();
    app.read.notify_one();
    app.go.notified().await;
    Ok(user)
}
async fn state(session: Session) -> Result<String, SessionError> {
    let expires = session.expires_at().await?.map(|t| t.as_millis() / 1000);
    Ok(format!(
        "{} {}",
        session.is_remembered().await?,
        expires.unwrap_or(0)
    ))
}

fn router(layer: SessionLayer, app: App) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/whoami", post(whoami))
        .route("/put", post(put))
        .route("/devices", post(devices))
        .route("/login_racing_a_reset/{user}", post(login_racing_a_reset))
        .route("/change_password", post(change_password))
        .route("/remember/{yes}", post(remember))
        .route("/slow", post(slow))
        .route("/state", post(state))
        .with_state(app)
        .layer(layer)
}

fn app(users: &Users) -> App {
    App {
        users: users.clone(),
        read: Arc::default(),
        go: Arc::default(),
    }
}

/// Sessions the credential check treats as signed out do not count against the cap
/// (Refuse: the owner's login after a password reset used to be refused, 409, until they
/// idled out) and are not listed or kept (Evict: they were listed and counted).
#[tokio::test]
async fn signed_out_sessions_neither_count_against_the_cap_nor_are_listed() {
    for policy in [LimitPolicy::Refuse, LimitPolicy::EvictLeastRecentlySeen] {
        let users = Users::default();
        users.set("ada", "old hash");
        let events = Events::default();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let layer = checked(builder(store.clone(), &events), &users)
            .max_sessions_per_user(2, policy)
            .build()
            .expect("valid config");
        let app = router(layer, app(&users));
        let (mut laptop, mut phone, mut new) = (Jar::default(), Jar::default(), Jar::default());
        for jar in [&mut laptop, &mut phone] {
            assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
        }
        // A password reset elsewhere: both devices are signed out already.
        users.set("ada", "new hash");
        let (status, body) = new.send(&app, "/login/ada").await;
        assert_eq!(status, StatusCode::OK, "{policy:?}: {body}");
        assert_eq!(new.send(&app, "/devices").await.1, "1", "{policy:?}");
        assert_eq!(store.list_for_user("ada").await.expect("list").len(), 1);
        assert_eq!(laptop.send(&app, "/whoami").await.1, "");
        let pruned: Vec<u64> = events_after(&events, Duration::from_millis(100))
            .await
            .into_iter()
            .filter_map(|e| match e {
                SessionEvent::Revoked {
                    scope: RevokeScope::StaleCredentials,
                    count,
                    ..
                } => Some(count),
                _ => None,
            })
            .collect();
        assert_eq!(
            pruned,
            vec![2],
            "{policy:?}: both stale sessions, in one event"
        );
    }
}

/// A reset landing between the handler's password check and the login: stamped with what
/// was verified, the session fails its next check (with `login`'s own lookup it was stamped
/// with the new credentials and survived the reset).
#[tokio::test]
async fn a_login_is_stamped_with_the_credentials_that_were_verified() {
    let users = Users::default();
    users.set("ada", "old hash");
    let events = Events::default();
    let layer = checked(builder(Arc::new(MemoryStore::new()), &events), &users)
        .build()
        .expect("valid config");
    let app = router(layer, app(&users));
    let mut jar = Jar::default();
    let (status, _) = jar.send(&app, "/login_racing_a_reset/ada").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        jar.send(&app, "/whoami").await.1,
        "",
        "signed out by the reset"
    );
}

/// The user changes their own password: this session stays signed in (re-stamped, under a
/// new id), every other one is signed out.
#[tokio::test]
async fn changing_ones_own_password_keeps_this_session_and_ends_the_others() {
    let users = Users::default();
    users.set("ada", "old hash");
    let events = Events::default();
    let layer = checked(builder(Arc::new(MemoryStore::new()), &events), &users)
        .build()
        .expect("valid config");
    let app = router(layer, app(&users));
    let (mut laptop, mut phone) = (Jar::default(), Jar::default());
    for jar in [&mut laptop, &mut phone] {
        assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    }
    let before = laptop.cookie.clone();
    assert_eq!(
        laptop.send(&app, "/change_password").await.0,
        StatusCode::OK
    );
    assert_ne!(laptop.cookie, before, "a new id");
    assert_eq!(laptop.send(&app, "/whoami").await.1, "ada");
    assert_eq!(phone.send(&app, "/whoami").await.1, "");
}

/// A user database that hangs fails the request like a store that hangs (`503` after the
/// layer's `store_timeout`), instead of hanging every signed-in request.
#[tokio::test]
async fn a_hung_credential_lookup_is_bounded_by_the_store_timeout() {
    let users = Users::default();
    users.set("ada", "hash");
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (lookup_users, lookup_hang) = (users.clone(), hang.clone());
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never)
        .store_timeout(Some(Duration::from_millis(200)))
        .credential_check(move |user: String| {
            let (users, hang) = (lookup_users.clone(), lookup_hang.clone());
            async move {
                if hang.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(users.get(&user).map(String::into_bytes))
            }
        })
        .build()
        .expect("valid config");
    let app = router(layer, app(&users));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = tokio::time::timeout(Duration::from_secs(3), jar.send(&app, "/whoami")).await;
    let (status, _) = answered.expect("the request hung with the lookup");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    hang.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        jar.send(&app, "/whoami").await.1,
        "ada",
        "nothing was ended"
    );
}

/// Two requests that find the same stale stamp: one `CredentialsChanged` (the one whose
/// delete removed the session), not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_changed_is_sent_once_per_session() {
    let users = Users::default();
    users.set("ada", "old hash");
    let events = Events::default();
    let store = Arc::new(Slowed::new(MemoryStore::new()));
    store.delay_deletes(Duration::from_millis(150));
    let layer = checked(builder(store.clone(), &events), &users)
        .build()
        .expect("valid config");
    let app = router(layer, app(&users));
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    users.set("ada", "new hash");
    let (mut a, mut b) = (jar.clone(), jar.clone());
    let (ra, rb) = tokio::join!(a.send(&app, "/whoami"), b.send(&app, "/whoami"));
    assert_eq!((ra.1.as_str(), rb.1.as_str()), ("", ""));
    let changed = events_after(&events, Duration::from_millis(100))
        .await
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::CredentialsChanged { .. }))
        .count();
    assert_eq!(changed, 1);
}

/// Remember-me unticked while another request of the same session is reading it: the
/// reader's end-of-request touch used to write its stale 30-day expiry back (and send a
/// persistent cookie). The session keeps the unticked policy's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unticking_remember_me_is_not_undone_by_an_overlapping_read() {
    let clock = ManualClock::new(Timestamp::now());
    let users = Users::default();
    let events = Events::default();
    let store: Arc<dyn SessionStore> =
        Arc::new(MemoryStore::builder().clock(clock.clone()).build());
    let layer = builder(store, &events)
        .clock(clock.clone())
        .browser_session(true)
        .idle_timeout(30 * MIN)
        .remember_me(30 * DAY, None)
        .build()
        .expect("valid config");
    let app_state = app(&users);
    let app = router(layer, app_state.clone());
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    assert_eq!(jar.send(&app, "/remember/true").await.0, StatusCode::OK);
    clock.advance(2 * DAY);
    let mut reader = jar.clone();
    let slow_app = app.clone();
    let reading = tokio::spawn(async move {
        let r = reader.send(&slow_app, "/slow").await;
        (r, reader)
    });
    app_state.read.notified().await;
    assert_eq!(jar.send(&app, "/remember/false").await.0, StatusCode::OK);
    app_state.go.notify_one();
    let ((status, user), reader) = reading.await.expect("reader");
    assert_eq!((status, user.as_str()), (StatusCode::OK, "ada"));
    if let Some(set) = &reader.last_set {
        assert!(
            !set.contains("Expires="),
            "a persistent cookie came back: {set}"
        );
    }
    let (_, state) = jar.send(&app, "/state").await;
    let now = coatcheck::Clock::now(&clock).as_millis() / 1000;
    let mut parts = state.split(' ');
    assert_eq!(parts.next(), Some("false"));
    let expires: i64 = parts.next().and_then(|s| s.parse().ok()).expect("expiry");
    assert!(
        expires <= now + 30 * 60,
        "expires {}s from now: the 30-day expiry came back",
        expires - now
    );
}

/// A double-submitted sign-in form under `max_sessions_per_user(2, Evict)`: both requests
/// carry the same session; one login succeeds, the other is refused (`409`, the session
/// was rotated away) and must not have evicted anything: one new device, one device signed
/// out (both used to be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_submitted_login_evicts_once() {
    let users = Users::default();
    let events = Events::default();
    let store = Arc::new(Slowed::new(MemoryStore::new()));
    let layer = builder(store.clone(), &events)
        .max_sessions_per_user(2, LimitPolicy::EvictLeastRecentlySeen)
        .build()
        .expect("valid config");
    let app = router(layer, app(&users));
    let (mut laptop, mut phone, mut form) = (Jar::default(), Jar::default(), Jar::default());
    for jar in [&mut laptop, &mut phone] {
        assert_eq!(jar.send(&app, "/login/ada").await.0, StatusCode::OK);
    }
    assert_eq!(form.send(&app, "/put").await.0, StatusCode::OK);
    store.delay_rotations(Duration::from_millis(150));
    let (mut first, mut second) = (form.clone(), form.clone());
    let (a, b) = tokio::join!(
        first.send(&app, "/login/ada"),
        second.send(&app, "/login/ada")
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let signed_in = [
        laptop.send(&app, "/whoami").await.1,
        phone.send(&app, "/whoami").await.1,
    ];
    assert_eq!(
        signed_in.iter().filter(|u| *u == "ada").count(),
        1,
        "one device evicted for one new one: {signed_in:?}"
    );
    assert_eq!(store.list_for_user("ada").await.expect("list").len(), 2);
    let evicted: Vec<u64> = events_after(&events, Duration::from_millis(100))
        .await
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Revoked {
                scope: RevokeScope::Evicted,
                count,
                ..
            } => Some(count),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, vec![1], "the eviction is an event");
}

/// A store that sleeps before some calls, so that two requests overlap where a test needs.
#[derive(Debug)]
struct Slowed<S> {
    inner: S,
    deletes: Mutex<Duration>,
    rotations: Mutex<Duration>,
}

impl<S: SessionStore> Slowed<S> {
    fn new(inner: S) -> Wrapped<Self> {
        Wrapped(Slowed {
            inner,
            deletes: Mutex::default(),
            rotations: Mutex::default(),
        })
    }
    fn delay_deletes(&self, d: Duration) {
        *self.deletes.lock().expect("lock") = d;
    }
    /// Before `delete_version` and `create_limited`: the two steps of a limited login.
    fn delay_rotations(&self, d: Duration) {
        *self.rotations.lock().expect("lock") = d;
    }
    async fn wait(&self, which: &Mutex<Duration>) {
        let d = *which.lock().expect("lock");
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

impl<S: SessionStore> StoreWrapper for Slowed<S> {
    fn inner(&self) -> &dyn SessionStore {
        &self.inner
    }
    fn around<'a, T: Send + 'a>(
        &'a self,
        what: Call,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            match what {
                Call::Delete => self.wait(&self.deletes).await,
                Call::DeleteVersion | Call::CreateLimited => self.wait(&self.rotations).await,
                _ => {}
            }
            call.await
        })
    }
}

/// Data encryption at rest against the request lifecycle: a request that only reads a
/// session used to touch it, keeping the stored bytes, so an active user's record stayed
/// in the clear (or under the old key) for good, and the documented next step —
/// `read_plaintext(false)`, or dropping the old key — answered every request of that user
/// with `500`. Now the first request after the switch writes the record under the current
/// key.
#[cfg(feature = "redis")]
mod encryption {
    use super::*;
    use coatcheck::redis::RedisStore;
    use coatcheck::{Codec, DataKeys, EncryptedCodec, NativeCodec};
    use coatcheck_conformance::{harness, Backend};

    async fn app_over(url: &str, prefix: &str, codec: impl Codec) -> Router {
        let store = RedisStore::builder()
            .prefix(prefix)
            .codec(codec)
            .connect(url)
            .await
            .expect("connect to Redis");
        let layer = builder(Arc::new(store), &Events::default())
            .build()
            .expect("valid config");
        router(layer, app(&Users::default()))
    }

    fn ring(keys: &[[u8; 32]]) -> DataKeys {
        DataKeys::new(keys.iter().copied()).expect("distinct keys")
    }

    #[tokio::test]
    async fn a_key_rotation_and_a_plaintext_migration_finish_for_active_sessions() {
        if !harness::require(Some(Backend::Redis)).await {
            return;
        }
        let url = harness::url(Backend::Redis).await.expect("checked");
        let (old, new) = ([1u8; 32], [2u8; 32]);

        // Key rotation: [old] -> [new, old] (a read-only request) -> [new].
        let prefix = format!("{}:", harness::unique_name("cc-seams-rot"));
        let mut jar = Jar::default();
        let before = app_over(&url, &prefix, EncryptedCodec::new(ring(&[old]))).await;
        assert_eq!(jar.send(&before, "/login/ada").await.0, StatusCode::OK);
        let rotating = app_over(&url, &prefix, EncryptedCodec::new(ring(&[new, old]))).await;
        assert_eq!(jar.send(&rotating, "/whoami").await.1, "ada");
        let after = app_over(&url, &prefix, EncryptedCodec::new(ring(&[new]))).await;
        let (status, body) = jar.send(&after, "/whoami").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ada"),
            "old key dropped"
        );

        // Migration: plaintext -> read_plaintext(true) (a read-only request) -> off.
        let prefix = format!("{}:", harness::unique_name("cc-seams-mig"));
        let mut jar = Jar::default();
        let plain = app_over(&url, &prefix, NativeCodec).await;
        assert_eq!(jar.send(&plain, "/login/ada").await.0, StatusCode::OK);
        let migrating = app_over(
            &url,
            &prefix,
            EncryptedCodec::new(ring(&[new])).read_plaintext(true),
        )
        .await;
        assert_eq!(jar.send(&migrating, "/whoami").await.1, "ada");
        let strict = app_over(&url, &prefix, EncryptedCodec::new(ring(&[new]))).await;
        let (status, body) = jar.send(&strict, "/whoami").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "ada"),
            "read_plaintext off"
        );
    }
}
