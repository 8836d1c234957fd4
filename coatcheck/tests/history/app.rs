//! The application the clients drive: the real `SessionLayer` over a (delayed) real store,
//! one route per operation. Every route answers JSON saying which session it saw (its
//! `lineage`, a value written once into a session when it is created and carried across
//! rotations), so the checker can follow one logical session through its ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::{KeyRing, Session, SessionError, SessionLayer, SessionStore};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const SECRET: &str = "history checker secret, long enough: 0123456789";

#[derive(Clone)]
pub struct AppState {
    next_lineage: Arc<AtomicU64>,
    rng: Arc<Mutex<StdRng>>,
    /// Longest pause inside a handler, between its first read and its write.
    max_pause_us: u64,
}

impl AppState {
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
}

#[derive(Deserialize)]
pub struct Arg {
    #[serde(default)]
    v: String,
    #[serde(default)]
    secs: u64,
}

type Answer = Result<Json<Seen>, SessionError>;

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
        revoked: None,
    })
}

async fn read(session: Session) -> Answer {
    Ok(Json(seen(&session).await?))
}

async fn incr(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        n: Some(n),
        ..Seen::default()
    }))
}

async fn put(State(st): State<AppState>, Query(arg): Query<Arg>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.insert("reg", &arg.v).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        reg: Some(arg.v),
        ..Seen::default()
    }))
}

async fn remove(State(st): State<AppState>, session: Session) -> Answer {
    let lineage = session.get::<String>("lineage").await?;
    st.pause().await;
    session.remove("reg").await?;
    Ok(Json(Seen {
        lineage,
        ..Seen::default()
    }))
}

async fn regenerate(State(st): State<AppState>, session: Session) -> Answer {
    let before = seen(&session).await?;
    st.pause().await;
    session.regenerate().await?;
    Ok(Json(before))
}

async fn login(State(st): State<AppState>, Query(arg): Query<Arg>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.login(arg.v.clone()).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        user: Some(arg.v),
        handle: session.device_handle().await?.map(|h| h.to_string()),
        ..Seen::default()
    }))
}

async fn destroy(State(st): State<AppState>, session: Session) -> Answer {
    let before = seen(&session).await?;
    st.pause().await;
    session.destroy().await?;
    Ok(Json(before))
}

async fn logout_everywhere(State(st): State<AppState>, session: Session) -> Answer {
    let mut before = seen(&session).await?;
    st.pause().await;
    before.count = Some(session.logout_everywhere().await?);
    Ok(Json(before))
}

async fn logout_others(State(st): State<AppState>, session: Session) -> Answer {
    let mut before = seen(&session).await?;
    st.pause().await;
    before.count = Some(session.logout_other_devices().await?);
    Ok(Json(before))
}

/// Signs out one of the user's other devices, picked at random from the list.
async fn revoke_device(State(st): State<AppState>, session: Session) -> Answer {
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

async fn expiry(State(st): State<AppState>, Query(arg): Query<Arg>, session: Session) -> Answer {
    let lineage = ensure_lineage(&st, &session).await?;
    st.pause().await;
    session.set_expiry_in(Duration::from_secs(arg.secs)).await?;
    Ok(Json(Seen {
        lineage: Some(lineage),
        ..Seen::default()
    }))
}

/// The app over `store`; `express` builds the layer in express-compatible mode.
pub fn app(
    store: Arc<dyn SessionStore>,
    express: bool,
    rng: StdRng,
    max_pause: Duration,
    idle: Duration,
) -> Router {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let mut builder = SessionLayer::builder_shared(store, keys)
        .idle_timeout(idle)
        .store_timeout(Some(Duration::from_secs(20)));
    if express {
        builder = builder.express_compatible();
    }
    let layer = builder.build().expect("valid config");
    let state = AppState {
        next_lineage: Arc::new(AtomicU64::new(1)),
        rng: Arc::new(Mutex::new(rng)),
        max_pause_us: max_pause.as_micros() as u64,
    };
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
        .with_state(state)
        .layer(layer)
}
