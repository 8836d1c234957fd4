//! The application the clients drive: the real `SessionLayer` over a (delayed) real store,
//! one route per operation. Every route answers JSON saying which session it saw (its
//! `lineage`, a value written once into a session when it is created and carried across
//! rotations), so the checker can follow one logical session through its ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::engine::Engine;
use coatcheck::{
    CsrfLayer, FlashLevel, KeyRing, LimitPolicy, Session, SessionError, SessionEvent, SessionLayer,
    SessionLayerBuilder, SessionStore, Transport,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const SECRET: &str = "history checker secret, long enough: 0123456789";

/// How long a remembered session lives unused; the others live `idle` (600 s).
pub const REMEMBER_IDLE: Duration = Duration::from_secs(30 * 86_400);

/// The application's user table: each user's credentials version (the fingerprint the
/// credential check compares). `/password` moves it.
pub type Users = Arc<RwLock<HashMap<String, u64>>>;

/// Every lifecycle event the layer delivered.
pub type EventLog = Arc<Mutex<Vec<SessionEvent>>>;

/// The features a history turns on besides the core lifecycle (every one of them at once).
#[derive(Clone)]
pub struct Features {
    pub users: Users,
    pub events: EventLog,
    /// `max_sessions_per_user`, for a store that enforces it.
    pub limit: Option<(u32, LimitPolicy)>,
    /// The layer's bound on one store call.
    pub store_timeout: Duration,
    /// Lineage names, shared by every instance (each mints them).
    pub next_lineage: Arc<AtomicU64>,
    /// The layer's `remember_me` policy (a second expiry policy: a due touch is then a
    /// compare-and-set save). Off, a touch is a touch (the key-rotation mode needs that).
    pub remember_policy: bool,
}

impl Features {
    pub fn new(
        users: &[String],
        limit: Option<(u32, LimitPolicy)>,
        store_timeout: Duration,
    ) -> Self {
        Features {
            users: Arc::new(RwLock::new(users.iter().map(|u| (u.clone(), 0)).collect())),
            events: EventLog::default(),
            limit,
            store_timeout,
            next_lineage: Arc::new(AtomicU64::new(1)),
            remember_policy: true,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    next_lineage: Arc<AtomicU64>,
    rng: Arc<Mutex<StdRng>>,
    /// Longest pause inside a handler, between its first read and its write.
    max_pause_us: u64,
    users: Users,
}

fn fingerprint(users: &Users, user: &str) -> String {
    let v = users
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(user)
        .copied()
        .unwrap_or(0);
    format!("{user} credentials v{v}")
}

impl AppState {
    pub(super) fn new(features: &Features, rng: StdRng, max_pause: Duration) -> Self {
        AppState {
            next_lineage: features.next_lineage.clone(),
            rng: Arc::new(Mutex::new(rng)),
            max_pause_us: max_pause.as_micros() as u64,
            users: features.users.clone(),
        }
    }

    async fn pause(&self) {
        let us = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            if rng.gen_bool(0.4) {
                0
            } else {
                rng.gen_range(0..=self.max_pause_us)
            }
        };
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

/// What every route answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// The session the request worked on (`None`: it had none).
    pub lineage: Option<String>,
    /// Its principal, as the request saw it.
    pub user: Option<String>,
    /// The counter (`/incr`: the value `update` returned).
    pub n: Option<u64>,
    /// The register.
    pub reg: Option<String>,
    /// How many sessions a revocation removed.
    pub count: Option<u64>,
    /// The session's device handle (after the request's login, for `/login`).
    #[serde(default)]
    pub handle: Option<String>,
    /// `/revoke_device`: the handle it revoked (`count` says whether a session went).
    #[serde(default)]
    pub revoked: Option<String>,
    /// `/password`: whether this session was re-stamped (its user changed their own).
    #[serde(default)]
    pub restamped: bool,
    /// `/take_flash`: the texts of the messages it showed.
    #[serde(default)]
    pub flashes: Option<Vec<String>>,
    /// `/csrf`: a CSRF token of the session.
    #[serde(default)]
    pub csrf: Option<String>,
}

#[derive(Deserialize)]
pub struct Arg {
    #[serde(default)]
    pub(super) v: String,
    #[serde(default)]
    pub(super) secs: u64,
}

pub(super) type Answer = Result<Json<Seen>, SessionError>;

/// The session's lineage, writing a fresh one if the session has none yet (it is being
/// created by this request).
async fn ensure_lineage(st: &AppState, session: &Session) -> Result<String, SessionError> {
    if let Some(l) = session.get::<String>("lineage").await? {
        return Ok(l);
    }
    let l = format!("L{}", st.next_lineage.fetch_add(1, Ordering::Relaxed));
    session.insert("lineage", &l).await?;
    Ok(l)
}

async fn seen(session: &Session) -> Result<Seen, SessionError> {
    Ok(Seen {
        lineage: session.get("lineage").await?,
        user: session.user_id().await?,
        n: session.get("n").await?,
        reg: session.get("reg").await?,
        count: None,
        handle: session.device_handle().await?.map(|h| h.to_string()),
        ..Seen::default()
    })
}

/// Reads, then pauses like the other handlers: its end-of-request touch races what
/// other requests wrote meanwhile (remember-me unticked, a rotation, a revocation).
pub(super) async fn read(State(st): State<AppState>, session: Session) -> Answer {
    let seen = seen(&session).await?;
    st.pause().await;
    Ok(Json(seen))
}

pub(super) async fn incr(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    // The handler goes on after its commit (rendering a page): a login on another tab
    // may rotate the session before this answer leaves.
    st.pause().await;
    Ok(Json(Seen {
        lineage: Some(lineage),
        n: Some(n),
        ..Seen::default()
    }))
}

pub(super) async fn put(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.insert("reg", &arg.v).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        reg: Some(arg.v),
        ..Seen::default()
    }))
}

pub(super) async fn remove(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = session.get::<String>("lineage").await?;
    st.pause().await;
    session.remove("reg").await?;
    Ok(Json(Seen {
        lineage,
        ..Seen::default()
    }))
}

pub(super) async fn regenerate(State(st): State<AppState>, session: Session) -> Answer {
    let before = seen(&session).await?;
    st.pause().await;
    session.regenerate().await?;
    Ok(Json(before))
}

pub(super) async fn login(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    // Stamped with the credentials "verified" now, as an application does.
    let verified = fingerprint(&st.users, &arg.v);
    session.login_verified(arg.v.clone(), verified).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        user: Some(arg.v),
        handle: session.device_handle().await?.map(|h| h.to_string()),
        ..Seen::default()
    }))
}

pub(super) async fn destroy(State(st): State<AppState>, session: Session) -> Answer {
    let before = seen(&session).await?;
    st.pause().await;
    session.destroy().await?;
    Ok(Json(before))
}

pub(super) async fn logout_everywhere(State(st): State<AppState>, session: Session) -> Answer {
    let mut before = seen(&session).await?;
    st.pause().await;
    before.count = Some(session.logout_everywhere().await?);
    Ok(Json(before))
}

pub(super) async fn logout_others(State(st): State<AppState>, session: Session) -> Answer {
    let mut before = seen(&session).await?;
    st.pause().await;
    before.count = Some(session.logout_other_devices().await?);
    Ok(Json(before))
}

/// Signs out one of the user's other devices, picked at random from the list.
pub(super) async fn revoke_device(State(st): State<AppState>, session: Session) -> Answer {
    let mut before = seen(&session).await?;
    let others: Vec<String> = session
        .list_user_sessions()
        .await?
        .into_iter()
        .filter(|s| !s.current)
        .filter_map(|s| s.handle.map(|h| h.to_string()))
        .collect();
    let pick = {
        let mut rng = st.rng.lock().unwrap_or_else(|e| e.into_inner());
        others.choose(&mut *rng).cloned()
    };
    st.pause().await;
    if let Some(handle) = pick {
        before.count = Some(u64::from(session.revoke_device(&handle).await?));
        before.revoked = Some(handle);
    }
    Ok(Json(before))
}

/// Changes the credentials of user `v`; when this session is signed in as `v`, the user
/// changed their own and this session is re-stamped (it stays signed in).
pub(super) async fn password(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let mut before = seen(&session).await?;
    st.pause().await;
    let new = {
        let mut users = st.users.write().unwrap_or_else(|e| e.into_inner());
        let v = users.entry(arg.v.clone()).or_insert(0);
        *v += 1;
        format!("{} credentials v{v}", arg.v)
    };
    if before.user.as_deref() == Some(arg.v.as_str()) {
        session.credentials_changed(new).await?;
        before.restamped = true;
    }
    Ok(Json(before))
}

/// Ticks (`v=true`) or unticks "remember me".
pub(super) async fn remember(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.remember_me(arg.v == "true").await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        ..Seen::default()
    }))
}

pub(super) async fn flash(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.flash(FlashLevel::Info, arg.v).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        ..Seen::default()
    }))
}

pub(super) async fn take_flash(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = session.get::<String>("lineage").await?;
    st.pause().await;
    let shown = session.take_flash().await?;
    Ok(Json(Seen {
        lineage,
        flashes: Some(shown.into_iter().map(|f| f.text).collect()),
        ..Seen::default()
    }))
}

pub(super) async fn csrf(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    let token = session.csrf_token().await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        csrf: Some(token),
        ..Seen::default()
    }))
}

/// Behind `CsrfLayer`: runs only if the check passed; writes the register from the form.
pub(super) async fn form(
    State(st): State<AppState>,
    session: Session,
    Form(arg): Form<Arg>,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.insert("reg", &arg.v).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        reg: Some(arg.v),
        ..Seen::default()
    }))
}

/// Writes the register and a value past the size limit (64 KiB): the save must fail and
/// store neither.
pub(super) async fn big(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.insert("reg", &arg.v).await?;
    session.insert("blob", "x".repeat(70_000)).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        reg: Some(arg.v),
        ..Seen::default()
    }))
}

/// Behind a layer without a size limit: stores a session over it, as one stored before
/// the limit existed (the application's data alone is 66,000 bytes, past the 64 KiB
/// default). Every later request goes through the limited layer.
pub(super) async fn legacy(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.insert("legacy", "l".repeat(66_000)).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        ..Seen::default()
    }))
}

pub(super) async fn expiry(
    State(st): State<AppState>,
    Query(arg): Query<Arg>,
    session: Session,
) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.set_expiry_in(Duration::from_secs(arg.secs)).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        ..Seen::default()
    }))
}

/// The session options of every instance, whatever its framework: a credential check over
/// `features.users`, remember-me, the token in a Bearer header for API clients and in the
/// cookie for browsers, events into `features.events`, the session cap where the store
/// enforces one, and `max_data_bytes`.
pub(super) fn session_options<T: From<Engine>>(
    store: &Arc<dyn SessionStore>,
    express: bool,
    idle: Duration,
    features: &Features,
    max_data_bytes: Option<usize>,
) -> T {
    let limited = store.capabilities().session_limit;
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let (lookup_users, log) = (features.users.clone(), features.events.clone());
    let mut builder = SessionLayerBuilder::<T>::for_product(store.clone(), keys)
        .idle_timeout(idle)
        // Every read that moves the expiry touches: the touch path races everything else.
        .touch_after(Duration::ZERO)
        .store_timeout(Some(features.store_timeout))
        .transport(Transport::bearer().and_cookie())
        .on_event(move |e| log.lock().unwrap_or_else(|p| p.into_inner()).push(e))
        .credential_check(move |user: String| {
            let fp = fingerprint(&lookup_users, &user);
            async move { Ok::<_, std::convert::Infallible>(Some(fp.into_bytes())) }
        });
    if features.remember_policy {
        builder = builder.remember_me(REMEMBER_IDLE, None);
    }
    if let (Some((max, policy)), true) = (features.limit, limited) {
        builder = builder.max_sessions_per_user(max, policy);
    }
    if express {
        builder = builder.express_compatible();
    }
    builder
        .max_data_bytes(max_data_bytes)
        .build()
        .expect("valid config")
}

/// The app over `store`; `express` builds the layer in express-compatible mode. Every
/// feature is on: a credential check over `features.users`, remember-me, the session
/// token in a Bearer header for API clients and in the cookie for browsers, events into
/// `features.events`, and the session cap where the store enforces one.
pub fn app(
    store: Arc<dyn SessionStore>,
    express: bool,
    rng: StdRng,
    max_pause: Duration,
    idle: Duration,
    features: &Features,
) -> Router {
    let layer = |max_data_bytes| session_options(&store, express, idle, features, max_data_bytes);
    let unlimited: SessionLayer = layer(None);
    let layer: SessionLayer = layer(Some(coatcheck::DEFAULT_MAX_DATA_BYTES));
    let state = AppState::new(features, rng, max_pause);
    // Only `/form` is behind the CSRF check: the other operations stand for what a page's
    // script does with a token the workload does not model.
    let forms = Router::new()
        .route("/form", post(form))
        .route_layer(CsrfLayer::new());
    Router::new()
        .route("/read", get(read))
        .route("/incr", post(incr))
        .route("/put", post(put))
        .route("/remove", post(remove))
        .route("/regenerate", post(regenerate))
        .route("/login", post(login))
        .route("/destroy", post(destroy))
        .route("/logout_everywhere", post(logout_everywhere))
        .route("/logout_others", post(logout_others))
        .route("/expiry", post(expiry))
        .route("/revoke_device", post(revoke_device))
        .route("/password", post(password))
        .route("/remember", post(remember))
        .route("/flash", post(flash))
        .route("/take_flash", post(take_flash))
        .route("/csrf", get(csrf))
        .route("/big", post(big))
        // Its own layer inside the application's: the outer one's session stays unused.
        .route("/legacy", post(legacy).layer(unlimited))
        .merge(forms)
        .with_state(state)
        .layer(layer)
}
