//! The per-request session handle.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coatcheck_core::{Data, DeviceHandle, Record, SessionId, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::device::RequestMeta;
use crate::engine::Shared;
use crate::events::{RevokeScope, SessionEvent};
use crate::SessionError;

/// The data key that marks a remembered session ([`Session::remember_me`]), stored as
/// `true`. The choice lives in the session's data, so every store and layout keeps it with
/// no schema change (Django keeps its per-session expiry the same way, in
/// `_session_expiry`); the application never sees the key, cannot write it, and
/// [`Session::clear`] keeps it. An Express app sharing the sessions sees it as a plain
/// value.
pub const REMEMBER_ME_KEY: &str = coatcheck_core::keys::REMEMBER_ME_KEY;

/// Whether `key` is one of the session's own keys, which the application neither reads
/// nor writes and `clear` keeps.
fn is_internal(key: &str) -> bool {
    coatcheck_core::keys::is_reserved(key)
}

/// Whether this session data says "remember me".
pub(crate) fn is_remembered(data: &Data) -> bool {
    data.get(REMEMBER_ME_KEY) == Some(&Value::Bool(true))
}

/// How long a rotation's mark (`coatcheck_core::keys::ROTATED_KEY`) says "rotated, not
/// revoked" under the id it retired: long enough for the requests a browser had in flight
/// with the old cookie when it received the new one, short enough that a browser which
/// never received it (the response was lost) soon gets a fresh session.
pub(crate) const ROTATION_MARK_TTL: Duration = Duration::from_secs(60);

/// The furthest [`Session::set_expiry`] goes: 100 years.
const MAX_EXPIRY: Duration = Duration::from_secs(100 * 365 * 86_400);

type UpdateFn = Arc<dyn Fn(Option<&Value>) -> Result<Value, SessionError> + Send + Sync>;

/// One change the handler made, kept so it can be replayed onto a fresher record when a
/// concurrent request saved first.
#[derive(Clone)]
enum Op {
    Set(String, Value),
    Remove(String),
    Clear,
    Update(String, UpdateFn),
    /// Removes the key; the value it removed, from the copy that was last replayed onto,
    /// goes into the slot (an atomic take: see `take_flash`).
    Take(String, TakeSlot),
}

type TakeSlot = Arc<Mutex<Option<Value>>>;

fn apply(op: &Op, data: &mut Data) -> Result<(), SessionError> {
    match op {
        Op::Set(k, v) => {
            data.insert(k.clone(), v.clone());
        }
        Op::Remove(k) => {
            data.shift_remove(k);
        }
        // The session's own settings are not the application's data.
        Op::Clear => data.retain(|k, _| is_internal(k)),
        Op::Update(k, f) => {
            let next = f(data.get(k))?;
            data.insert(k.clone(), next);
        }
        Op::Take(k, slot) => {
            let taken = data.shift_remove(k);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = taken;
        }
    }
    Ok(())
}

/// What the response's cookie should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CookieAction {
    None,
    Set {
        id: SessionId,
        /// `Expires`, for a persistent cookie; `None` for a browser-session cookie.
        expires: Option<Timestamp>,
    },
    Clear,
}

#[derive(Default)]
struct State {
    /// The verified id from the request's cookie (not known to exist until loaded).
    cookie_id: Option<SessionId>,
    /// The cookie was signed with an older secret.
    resign: bool,
    /// The session as this request sees it: the stored record with `ops` applied.
    record: Option<Record>,
    /// Whether `record` exists in the store (as opposed to created by this request).
    persisted: bool,
    ops: Vec<Op>,
    user_change: Option<Option<String>>,
    expiry_at: Option<Timestamp>,
    /// The id changed in this request (regenerate / login): the cookie must be sent.
    id_changed: bool,
    /// "Remember me" changed in this request: the cookie must be sent (with or without
    /// `Expires`).
    remember_changed: bool,
    /// This request ended the session (destroy, logout everywhere, its own device revoked,
    /// a stale credential found at load), or found the cookie's id gone when it began:
    /// clear the cookie unless a new one is written.
    destroyed: bool,
    /// The cookie named an id that a rotation retired (`coatcheck_core::keys::ROTATED_KEY`)
    /// before this request loaded it: the browser holds, or is about to receive, the new
    /// cookie. Read as no session; never cleared, never replaced.
    moved_on: bool,
    /// Another request ended this request's session while it ran: it was rotated away
    /// (`Some(true)`) or revoked (`Some(false)`). Nothing more is written and no cookie
    /// goes out: the browser may already hold a newer one.
    ended_in_flight: Option<bool>,
    /// The size of the application's data as loaded: a session already over
    /// `max_data_bytes` may be written as long as it does not grow past this.
    baseline_size: usize,
    /// The stored expiry as loaded (an early commit re-sends the cookie at the touch
    /// cadence only).
    loaded_expires: Option<Timestamp>,
    /// A store operation failed: write nothing, set no cookie.
    failed: bool,
    /// The first failure.
    failure: Option<crate::SessionFailure>,
    /// This request already wrote the session (`update` commits at once) and moved its
    /// expiry: a persistent cookie's `Expires` must follow.
    cookie_due: bool,
    /// The stored bytes must be written again (see `coatcheck_core::REWRITE_KEY`).
    rewrite: bool,
    /// A login of a session not stored yet, announced once it is (user, handle before).
    pending_login: Option<(String, Option<DeviceHandle>)>,
}

/// The unwritten part of a request's state (see `Session::pending`).
struct Pending {
    record: Option<Record>,
    ops: Vec<Op>,
    user_change: Option<Option<String>>,
    expiry_at: Option<Timestamp>,
}

/// The session of the current request: cheap to clone, lazy, never hands out a lock.
///
/// Obtain it with the axum extractor (`session: Session` in a handler's arguments) or from
/// the request extensions. Nothing is loaded until a method needs the data, and nothing is
/// written until the handler has returned — then only what changed, before the response
/// leaves. Values are JSON-model values; typed access goes through serde.
///
/// ```
/// use coatcheck::Session;
///
/// async fn views(session: Session) -> Result<String, coatcheck::SessionError> {
///     // `update` is replayed on the fresh value if another request saved in between,
///     // so concurrent increments are never lost.
///     let n: u64 = session.update("views", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
///     Ok(format!("{n} views"))
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    loaded: OnceCell<()>,
    state: Mutex<State>,
    /// The device details of this request, recorded at login.
    meta: RequestMeta,
    /// The request carried its session in a header token (no ambient credential).
    via_header: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("Session")
            .field("id", &st.record.as_ref().map(|r| r.id.short_hash()))
            .field("loaded", &self.inner.loaded.initialized())
            .field("changes", &st.ops.len())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cookie_id: Option<SessionId>,
        resign: bool,
        meta: RequestMeta,
        via_header: bool,
    ) -> Self {
        Session {
            inner: Arc::new(Inner {
                shared,
                meta,
                via_header,
                loaded: OnceCell::new(),
                state: Mutex::new(State {
                    cookie_id,
                    resign,
                    ..State::default()
                }),
            }),
        }
    }

    /// What this request has not written yet, to put back when a login is refused.
    fn pending(&self) -> Pending {
        let st = self.state();
        Pending {
            record: st.record.clone(),
            ops: st.ops.clone(),
            user_change: st.user_change.clone(),
            expiry_at: st.expiry_at,
        }
    }

    fn restore(&self, p: Pending) {
        let mut st = self.state();
        st.record = p.record;
        st.ops = p.ops;
        st.user_change = p.user_change;
        st.expiry_at = p.expiry_at;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an event in the metrics and hands it to the layer's subscriber, if there is
    /// one.
    pub(crate) fn emit(&self, event: SessionEvent) {
        if self.inner.shared.metrics {
            crate::metrics::event(&event);
        }
        self.inner.shared.events.emit(event);
    }

    /// Whether anyone listens to events (a subscriber, or the metrics).
    fn events_on(&self) -> bool {
        self.inner.shared.metrics || self.inner.shared.events.on()
    }

    /// This request writes nothing more and sets no cookie (its answer is a refusal).
    pub(crate) fn write_nothing(&self) {
        self.state().failed = true;
    }

    /// Whether this request carried its session in a header token rather than the cookie.
    pub(crate) fn via_header(&self) -> bool {
        self.inner.via_header
    }

    fn now(&self) -> Timestamp {
        self.inner.shared.clock.now()
    }

    fn fail<T>(&self, e: impl Into<SessionError>) -> Result<T, SessionError> {
        let e = e.into();
        let mut st = self.state();
        st.failed = true;
        st.failure
            .get_or_insert_with(|| crate::SessionFailure::for_error(&e));
        Err(e)
    }

    /// The first failure of this request's session, if one failed. The layer answers
    /// with it when the handler answered a success anyway (it swallowed the error): a
    /// request whose session could not be read or written never looks like it worked.
    pub(crate) fn failure(&self) -> Option<crate::SessionFailure> {
        self.state().failure.clone()
    }

    fn new_record(&self) -> Record {
        let now = self.now();
        let policy = &self.inner.shared.config.expiry;
        Record::new(
            (self.inner.shared.id_generator)(),
            now,
            policy.expires_at(now, now),
        )
    }

    /// Applies a change to the view and logs it for replay, creating a fresh (not yet
    /// stored) record if there is none.
    async fn change(&self, op: Op) -> Result<(), SessionError> {
        if let Op::Set(key, _) | Op::Update(key, _) | Op::Remove(key) | Op::Take(key, _) = &op {
            if is_internal(key)
                || (self.inner.shared.config.express_reserved_keys
                    && coatcheck_core::is_express_reserved(key))
            {
                return Err(SessionError::ReservedKey(key.clone()));
            }
        }
        self.change_unchecked(op).await
    }

    /// [`change`](Session::change) without the reserved-key check: for the session's own
    /// settings.
    async fn change_unchecked(&self, op: Op) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        self.refuse_if_moved_on()?;
        let mut st = self.state();
        let record = match st.record.as_mut() {
            Some(r) => r,
            None => st.record.insert(self.new_record()),
        };
        apply(&op, &mut record.data)?;
        if let Some(key) = self.principal_key() {
            // Express mode: the principal is the data under that key, both ways.
            let user = record
                .data
                .get(key)
                .and_then(coatcheck_core::express_principal);
            if user != record.user_id {
                record.user_id.clone_from(&user);
                st.user_change = Some(user);
            }
        }
        st.ops.push(op);
        Ok(())
    }

    /// A request whose cookie names a rotated session, or whose session another request
    /// ended while it ran, writes nothing: a new session created here would replace the
    /// browser's newer cookie. [`SessionError::Ended`] (`409`, no `Set-Cookie`), also when
    /// the handler swallows it.
    fn refuse_if_moved_on(&self) -> Result<(), SessionError> {
        let refused = {
            let st = self.state();
            st.moved_on || st.ended_in_flight.is_some()
        };
        if refused {
            return self.fail(SessionError::Ended);
        }
        Ok(())
    }

    /// The data key that is the principal (express-compatible mode), if any.
    fn principal_key(&self) -> Option<&str> {
        self.inner.shared.config.principal_key.as_deref()
    }

    /// This request's changes onto a fresher record: the key changes, then the principal
    /// (in express mode, the principal follows the data under its key).
    fn replay(
        &self,
        ops: &[Op],
        user_change: Option<&Option<String>>,
        record: &mut Record,
    ) -> Result<(), SessionError> {
        // A fresh copy read under an older data key carries the codec's mark: this write
        // rewrites it anyway, and the mark must never reach the view.
        record.data.shift_remove(coatcheck_core::REWRITE_KEY);
        for op in ops {
            apply(op, &mut record.data)?;
        }
        match self.principal_key() {
            Some(key) => {
                record.user_id = record
                    .data
                    .get(key)
                    .and_then(coatcheck_core::express_principal);
            }
            None => {
                if let Some(u) = user_change {
                    record.user_id.clone_from(u);
                }
            }
        }
        Ok(())
    }

    /// The value at `key`, deserialized into `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        match self.get_value(key).await? {
            Some(v) => {
                serde_json::from_value(v)
                    .map(Some)
                    .map_err(|source| SessionError::Deserialize {
                        key: key.to_owned(),
                        source,
                    })
            }
            None => Ok(None),
        }
    }

    /// The raw JSON value at `key`.
    pub async fn get_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        self.ensure_loaded().await?;
        if is_internal(key) {
            return Ok(None);
        }
        Ok(self
            .state()
            .record
            .as_ref()
            .and_then(|r| r.data.get(key).cloned()))
    }

    /// Sets `key` to `value`. A session that did not exist is created when the response
    /// leaves.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let value = serde_json::to_value(value).map_err(SessionError::Serialize)?;
        self.change(Op::Set(key.to_owned(), value)).await
    }

    /// Removes `key`, returning its value.
    pub async fn remove(&self, key: &str) -> Result<Option<Value>, SessionError> {
        let old = self.get_value(key).await?;
        if old.is_some() {
            self.change(Op::Remove(key.to_owned())).await?;
        }
        Ok(old)
    }

    /// Removes `key` and returns its value as a `T` — flash messages, one-time tokens. A
    /// value of another type is a [`SessionError::Deserialize`] and stays in place.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn page(session: Session) -> Result<String, SessionError> {
    ///     let flash: Option<String> = session.take("flash").await?;
    ///     Ok(flash.unwrap_or_default())
    /// }
    /// ```
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let value = self.get::<T>(key).await?;
        if value.is_some() {
            self.change(Op::Remove(key.to_owned())).await?;
        }
        Ok(value)
    }

    /// When this session expires unless used again, as stored (or as
    /// [`set_expiry`](Session::set_expiry) set it in this request); `None` when there is no
    /// session. A write at the end of this request moves it as the expiry policy says.
    pub async fn expires_at(&self) -> Result<Option<Timestamp>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().record.as_ref().map(|r| r.expires_at))
    }

    /// When this session was first created (kept across `login`/`regenerate`); `None` when
    /// there is no session. Express-compatible stores keep no creation time: the Unix
    /// epoch.
    pub async fn created_at(&self) -> Result<Option<Timestamp>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().record.as_ref().map(|r| r.created_at))
    }

    /// Removes every key (the session itself, its id and user stay).
    pub async fn clear(&self) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        if self.state().record.is_some() {
            self.change(Op::Clear).await?;
        }
        Ok(())
    }

    /// Sets `key` to `f(current value)` and returns the new value.
    ///
    /// If another request saved this session in between, `f` is run again on the fresh
    /// value before saving, so read-modify-write updates (counters, lists) are never lost.
    /// `f` may therefore run more than once: keep it free of side effects.
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let owned = key.to_owned();
        let func: UpdateFn = Arc::new(move |current: Option<&Value>| {
            let current = current
                .map(|v| serde_json::from_value::<T>(v.clone()))
                .transpose()
                .map_err(|source| SessionError::Deserialize {
                    key: owned.clone(),
                    source,
                })?;
            serde_json::to_value(f(current)).map_err(SessionError::Serialize)
        });
        self.change(Op::Update(key.to_owned(), func)).await?;
        self.commit().await?;
        self.get(key).await?.ok_or_else(|| {
            SessionError::Serialize(serde::de::Error::custom("update produced no value"))
        })
    }

    /// The session id, if the session exists (in the store, or created by this request).
    pub async fn id(&self) -> Result<Option<SessionId>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().record.as_ref().map(|r| r.id.clone()))
    }

    /// The logged-in principal, if any.
    pub async fn user_id(&self) -> Result<Option<String>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().record.as_ref().and_then(|r| r.user_id.clone()))
    }

    /// Whether the session is stored or will be at the end of this request.
    pub async fn exists(&self) -> Result<bool, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().record.is_some())
    }

    /// Sets when this session expires, written at the end of the request (capped by the
    /// absolute lifetime). Use it for "remember me": later activity rolls expiry forward
    /// by the idle timeout but never shortens it. To end a session now, use
    /// [`Session::destroy`].
    pub async fn set_expiry(&self, expires_at: Timestamp) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        self.refuse_if_moved_on()?;
        let mut st = self.state();
        let r = match st.record.as_mut() {
            Some(r) => r,
            None => st.record.insert(self.new_record()),
        };
        // At most a century ahead: no backend stores an expiry of any size (Postgres's
        // timestamps end in the year 294276, Redis's clock overflows), and no session
        // needs more.
        let expires_at = expires_at.min(self.now() + MAX_EXPIRY);
        r.expires_at = expires_at;
        st.expiry_at = Some(expires_at);
        Ok(())
    }

    /// Like [`Session::set_expiry`], relative to now.
    pub async fn set_expiry_in(&self, d: Duration) -> Result<(), SessionError> {
        self.set_expiry(self.now() + d).await
    }

    /// The "remember me" checkbox, for this session: `true` gives it a persistent cookie and
    /// the layer's [`remember_me`](crate::SessionLayerBuilder::remember_me) timeouts,
    /// `false` the layer's own (a browser-session cookie with
    /// [`browser_session`](crate::SessionLayerBuilder::browser_session)). Its expiry is
    /// set from the chosen policy now — switching back shortens it — and the cookie is sent
    /// again at the end of the request. The choice is kept across
    /// [`login`](Session::login) and [`regenerate`](Session::regenerate), in every store
    /// (it is kept in the data, under [`REMEMBER_ME_KEY`]). A session that does not exist
    /// yet is created when the response leaves, as with [`insert`](Session::insert).
    ///
    /// Call it after [`login`](Session::login) has succeeded: a login refused by
    /// [`max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user) then
    /// leaves the session already signed in on that browser exactly as it was.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn login(session: Session, remember: bool) -> Result<&'static str, SessionError> {
    ///     // ... after checking the credentials:
    ///     session.login("ada").await?;
    ///     session.remember_me(remember).await?;
    ///     Ok("welcome")
    /// }
    /// ```
    pub async fn remember_me(&self, yes: bool) -> Result<(), SessionError> {
        if self.is_remembered().await? == yes {
            return Ok(());
        }
        let op = if yes {
            Op::Set(REMEMBER_ME_KEY.to_owned(), Value::Bool(true))
        } else {
            Op::Remove(REMEMBER_ME_KEY.to_owned())
        };
        self.change_unchecked(op).await?;
        let now = self.now();
        let mut st = self.state();
        let Some(r) = st.record.as_mut() else {
            return Ok(());
        };
        let expires_at = self
            .inner
            .shared
            .config
            .policy_for(&r.data)
            .expires_at(r.created_at, now);
        r.expires_at = expires_at;
        st.expiry_at = Some(expires_at);
        st.remember_changed = true;
        Ok(())
    }

    /// Whether this session is remembered ([`Session::remember_me`]); `false` when there is
    /// no session.
    pub async fn is_remembered(&self) -> Result<bool, SessionError> {
        self.ensure_loaded().await?;
        Ok(self
            .state()
            .record
            .as_ref()
            .is_some_and(|r| is_remembered(&r.data)))
    }
}

mod csrf;
mod devices;
mod ending;
mod flash;
mod lifecycle;
mod load;
mod outcome;
mod write;

pub use flash::{Flash, FlashLevel, MAX_PENDING_FLASHES};
