//! The per-request session handle.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coatcheck_core::{Data, Record, SessionId, SessionInfo, StoreError, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::layer::Shared;
use crate::SessionError;

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
}

fn apply(op: &Op, data: &mut Data) -> Result<(), SessionError> {
    match op {
        Op::Set(k, v) => {
            data.insert(k.clone(), v.clone());
        }
        Op::Remove(k) => {
            data.shift_remove(k);
        }
        Op::Clear => data.clear(),
        Op::Update(k, f) => {
            let next = f(data.get(k))?;
            data.insert(k.clone(), next);
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
        expires_at: Timestamp,
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
    /// The session was destroyed: clear the cookie unless a new one is written.
    destroyed: bool,
    /// A store operation failed: write nothing, set no cookie.
    failed: bool,
    /// The status of the first failure.
    failure: Option<http::StatusCode>,
    /// This request already wrote the session (`update` commits at once) and moved its
    /// expiry: a persistent cookie's `Expires` must follow.
    cookie_due: bool,
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
    pub(crate) fn new(shared: Arc<Shared>, cookie_id: Option<SessionId>, resign: bool) -> Self {
        Session {
            inner: Arc::new(Inner {
                shared,
                loaded: OnceCell::new(),
                state: Mutex::new(State {
                    cookie_id,
                    resign,
                    ..State::default()
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Timestamp {
        self.inner.shared.clock.now()
    }

    fn fail<T>(&self, e: impl Into<SessionError>) -> Result<T, SessionError> {
        let e = e.into();
        let mut st = self.state();
        st.failed = true;
        st.failure.get_or_insert(e.status());
        Err(e)
    }

    /// The status of the first store failure of this request, if one failed. The layer
    /// answers with it when the handler answered a success anyway (it swallowed the error):
    /// a request whose session could not be read or written never looks like it worked.
    pub(crate) fn failure(&self) -> Option<http::StatusCode> {
        self.state().failure
    }

    /// Loads the record named by the cookie, once. Unknown, expired (idle or absolute) and
    /// unreadable ids are not adopted.
    async fn ensure_loaded(&self) -> Result<(), SessionError> {
        let res = self
            .inner
            .loaded
            .get_or_try_init(|| async {
                let id = self.state().cookie_id.clone();
                let record = match id {
                    Some(id) => {
                        self.inner
                            .shared
                            .bounded("load", self.inner.shared.store.load(&id))
                            .await?
                    }
                    None => None,
                };
                let now = self.now();
                let policy = &self.inner.shared.config.expiry;
                let record = record.filter(|r| {
                    policy
                        .absolute_deadline(r.created_at)
                        .is_none_or(|deadline| deadline > now)
                });
                let mut st = self.state();
                st.persisted = record.is_some();
                st.record = record;
                Ok::<(), SessionError>(())
            })
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
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
        if let Op::Set(key, _) | Op::Update(key, _) = &op {
            if self.inner.shared.config.express_reserved_keys
                && coatcheck_core::is_express_reserved(key)
            {
                return Err(SessionError::ReservedKey(key.clone()));
            }
        }
        self.ensure_loaded().await?;
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

    /// Writes every pending change now (compare-and-set, replayed on conflict), so the view
    /// is what is stored. `update` uses it to answer a committed value: a value computed
    /// on a stale view and re-run at the end of the request would not be (found by the
    /// history checker: concurrent increments answered the same number).
    async fn commit(&self) -> Result<(), SessionError> {
        let shared = &self.inner.shared;
        let policy = shared.config.expiry;
        let (record, persisted, explicit, failed) = {
            let st = self.state();
            (st.record.clone(), st.persisted, st.expiry_at, st.failed)
        };
        if failed {
            // An earlier store call of this request failed (and the handler went on): this
            // request writes nothing, so nothing can be committed either.
            return Err(StoreError::backend(EarlierFailure).into());
        }
        let Some(mut record) = record else {
            return Ok(());
        };
        if !persisted {
            record.expires_at =
                policy.on_write(record.created_at, record.expires_at, explicit, self.now());
            let created = self.create_new(record).await?;
            let mut st = self.state();
            st.record = Some(created);
            st.persisted = true;
            st.ops.clear();
            st.user_change = None;
            st.expiry_at = None;
            // A new session: its cookie is sent at the end of the request.
            st.id_changed = true;
            return Ok(());
        }
        let before = record.expires_at;
        match self.save_with_retries(record).await? {
            Some(saved) => {
                let mut st = self.state();
                st.cookie_due |= saved.expires_at != before || explicit.is_some();
                st.record = Some(saved);
                st.expiry_at = None;
                Ok(())
            }
            None => Err(SessionError::Ended),
        }
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

    /// New id, same data. The new record is stored first, then the old id is deleted, so
    /// there is never a moment without a session, and the old id is dead afterwards.
    pub async fn regenerate(&self) -> Result<(), SessionError> {
        self.rotate(None).await
    }

    /// Logs `user_id` in: a new id (against fixation), the principal set and indexed.
    ///
    /// The principal is what `login` sets — in native mode no data key is special (a
    /// `"userId"` value is plain data); in express-compatible mode it is the data under
    /// [`SessionConfig::principal_key`](crate::SessionConfig::principal_key). If another
    /// request ended this session meanwhile (logout everywhere, destroy), nothing is
    /// created and [`SessionError::Ended`] (`409`) is returned.
    pub async fn login(&self, user_id: impl Into<String>) -> Result<(), SessionError> {
        self.rotate(Some(user_id.into())).await
    }

    /// Logs `user_id` in and stores `data` with it, in the same write — the tutorials'
    /// `req.session.regenerate()`, then `req.session.userId = …; req.session.roles = …`.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError, ROLES_KEY};
    ///
    /// async fn login(session: Session) -> Result<&'static str, SessionError> {
    ///     // ... after checking the credentials:
    ///     session.login_with("ada", [(ROLES_KEY, vec!["admin"])]).await?;
    ///     Ok("welcome")
    /// }
    /// ```
    pub async fn login_with<I, K, V>(
        &self,
        user_id: impl Into<String>,
        data: I,
    ) -> Result<(), SessionError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        // Written before the rotation, the data travels with it into the new record.
        for (key, value) in data {
            self.insert(key.as_ref(), value).await?;
        }
        self.login(user_id).await
    }

    async fn rotate(&self, user: Option<String>) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        if let (Some(key), Some(u)) = (self.principal_key(), &user) {
            // Express mode: logging in writes the principal's key (Node's own integer id
            // is kept when it names the same user).
            let current = self
                .state()
                .record
                .as_ref()
                .and_then(|r| r.data.get(key).and_then(coatcheck_core::express_principal));
            if current.as_deref() != Some(u.as_str()) {
                self.change(Op::Set(key.to_owned(), Value::String(u.clone())))
                    .await?;
            }
        }
        let policy = self.inner.shared.config.expiry;
        let now = self.now();
        let state = {
            let mut st = self.state();
            let persisted = st.persisted;
            let expiry_at = st.expiry_at;
            if st.record.is_none() {
                // Nothing stored yet: a login creates the session at the end of the request.
                if let Some(user) = user {
                    drop(st);
                    let mut fresh = self.new_record();
                    fresh.user_id = Some(user.clone());
                    let mut st = self.state();
                    st.record = Some(fresh);
                    st.user_change = Some(Some(user));
                    st.id_changed = true;
                }
                return Ok(());
            }
            if !persisted {
                // Created by this request and not stored yet: just give it another id.
                let new_id = (self.inner.shared.id_generator)();
                if let Some(r) = st.record.as_mut() {
                    r.id = new_id;
                    if user.is_some() {
                        r.user_id.clone_from(&user);
                    }
                }
                if user.is_some() {
                    st.user_change = Some(user);
                }
                st.id_changed = true;
                return Ok(());
            }
            let Some(record) = st.record.clone() else {
                return Ok(());
            };
            (record, st.ops.clone(), st.user_change.clone(), expiry_at)
        };
        let (mut view, ops, user_change, expiry_at) = state;
        let shared = &self.inner.shared;
        let old_id = view.id.clone();
        let max = shared.config.max_save_retries;
        let mut attempt = 0u32;
        loop {
            let mut next = view.clone();
            // Always a fresh id: creating under the old one would bring it back if it was
            // revoked meanwhile (found by the history checker).
            next.id = (shared.id_generator)();
            if user.is_some() {
                next.user_id.clone_from(&user);
            }
            next.version = 1;
            next.expires_at = policy.on_write(next.created_at, next.expires_at, expiry_at, now);
            // The new record first, then the old one deleted if it is still at the version
            // this request built on: never a moment without the session, and a rotation of
            // a stale or revoked session fails instead of overwriting a newer write or
            // bringing the session back under a new id.
            let next = self.create_new(next).await?;
            let outcome = shared
                .bounded(
                    "delete_version",
                    shared.store.delete_version(&old_id, view.version),
                )
                .await;
            let Err(refused) = outcome else {
                tracing::debug!(old = %old_id.short_hash(), new = %next.id.short_hash(), "session id rotated");
                let mut st = self.state();
                st.record = Some(next);
                st.persisted = true;
                st.ops.clear();
                st.user_change = None;
                st.expiry_at = None;
                st.id_changed = true;
                return Ok(());
            };
            // The new record must not outlive a rotation that failed.
            if let Err(e) = shared
                .bounded("delete", shared.store.delete(&next.id))
                .await
            {
                return self.fail(e);
            }
            match refused {
                StoreError::Conflict if attempt < max => {
                    attempt += 1;
                    backoff(attempt).await;
                    match shared.bounded("load", shared.store.load(&old_id)).await {
                        Ok(Some(mut fresh)) => {
                            if let Err(e) = self.replay(&ops, user_change.as_ref(), &mut fresh) {
                                return self.fail(e);
                            }
                            view = fresh;
                        }
                        Ok(None) => return self.ended(),
                        Err(e) => return self.fail(e),
                    }
                }
                StoreError::Conflict => return self.fail(SessionError::TooManyConflicts(max + 1)),
                StoreError::NotFound => return self.ended(),
                e => return self.fail(e),
            }
        }
    }

    /// Another request ended the session while this one ran: it stays ended, nothing of
    /// this request is written, the cookie is cleared.
    fn ended<T>(&self) -> Result<T, SessionError> {
        tracing::debug!("session was ended by another request");
        self.forget_local();
        Err(SessionError::Ended)
    }

    /// Deletes the session now and clears the cookie. Writing afterwards starts a new one.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        self.destroy_counted().await.map(drop)
    }

    /// [`Session::destroy`], telling whether a stored session was removed.
    async fn destroy_counted(&self) -> Result<bool, SessionError> {
        let id = {
            let st = self.state();
            st.record
                .as_ref()
                .map(|r| r.id.clone())
                .or(st.cookie_id.clone())
        };
        let mut removed = false;
        if let Some(id) = id {
            removed = match self
                .inner
                .shared
                .bounded("delete", self.inner.shared.store.delete(&id))
                .await
            {
                Ok(removed) => removed,
                Err(e) => return self.fail(e),
            };
            tracing::debug!(session = %id.short_hash(), "session destroyed");
        }
        self.forget_local();
        Ok(removed)
    }

    fn forget_local(&self) {
        // Make sure a later access does not load the deleted record again.
        let _ = self.inner.loaded.set(());
        let mut st = self.state();
        st.record = None;
        st.persisted = false;
        st.ops.clear();
        st.user_change = None;
        st.expiry_at = None;
        st.destroyed = true;
    }

    /// Revokes every session of this session's user, on every device, this one included.
    /// Returns how many were removed. For an anonymous session (nobody logged in) it
    /// destroys this session only and returns 1 if one was stored, else 0.
    pub async fn logout_everywhere(&self) -> Result<u64, SessionError> {
        match self.user_id().await? {
            Some(user) => match self
                .inner
                .shared
                .bounded(
                    "delete_for_user",
                    self.inner.shared.store.delete_for_user(&user, None),
                )
                .await
            {
                Ok(n) => {
                    self.forget_local();
                    Ok(n)
                }
                Err(e) => self.fail(e),
            },
            None => Ok(u64::from(self.destroy_counted().await?)),
        }
    }

    /// Revokes every other session of this session's user, keeping this one.
    pub async fn logout_other_devices(&self) -> Result<u64, SessionError> {
        self.ensure_loaded().await?;
        let (user, id) = {
            let st = self.state();
            match st.record.as_ref() {
                Some(r) if st.persisted => (r.user_id.clone(), Some(r.id.clone())),
                Some(r) => (r.user_id.clone(), None),
                None => (None, None),
            }
        };
        match user {
            Some(user) => match self
                .inner
                .shared
                .bounded(
                    "delete_for_user",
                    self.inner.shared.store.delete_for_user(&user, id.as_ref()),
                )
                .await
            {
                Ok(n) => Ok(n),
                Err(e) => self.fail(e),
            },
            None => Ok(0),
        }
    }

    /// The live sessions of this session's user (empty when nobody is logged in).
    pub async fn list_user_sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        match self.user_id().await? {
            Some(user) => match self
                .inner
                .shared
                .bounded(
                    "list_for_user",
                    self.inner.shared.store.list_for_user(&user),
                )
                .await
            {
                Ok(v) => Ok(v),
                Err(e) => self.fail(e),
            },
            None => Ok(Vec::new()),
        }
    }

    /// Sets when this session expires, written at the end of the request (capped by the
    /// absolute lifetime). Use it for "remember me": later activity rolls expiry forward
    /// by the idle timeout but never shortens it. To end a session now, use
    /// [`Session::destroy`].
    pub async fn set_expiry(&self, expires_at: Timestamp) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
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

    /// Writes what changed, once the handler has returned. Called by the layer.
    pub(crate) async fn finish(&self) -> Result<CookieAction, SessionError> {
        let shared = &self.inner.shared;
        let policy = shared.config.expiry;
        let now = self.now();
        let (record, persisted, dirty, explicit, id_changed, resign, destroyed, failed, due) = {
            let mut st = self.state();
            (
                // The request is over: take the record rather than copy it.
                st.record.take(),
                st.persisted,
                !st.ops.is_empty() || st.user_change.is_some() || st.expiry_at.is_some(),
                st.expiry_at.is_some(),
                st.id_changed,
                st.resign,
                st.destroyed,
                st.failed,
                st.cookie_due,
            )
        };
        if failed {
            return Ok(CookieAction::None);
        }
        let set = |r: &Record| CookieAction::Set {
            id: r.id.clone(),
            expires_at: r.expires_at,
        };
        let loaded = self.inner.loaded.initialized();
        let Some(mut record) = record else {
            if destroyed {
                return Ok(CookieAction::Clear);
            }
            if loaded && shared.config.save_uninitialized {
                let record = self.new_record();
                return Ok(set(&self.create_new(record).await?));
            }
            return Ok(CookieAction::None);
        };
        if !persisted {
            let explicit = self.state().expiry_at;
            record.expires_at =
                policy.on_write(record.created_at, record.expires_at, explicit, now);
            return Ok(set(&self.create_new(record).await?));
        }
        // A persistent cookie's `Expires` follows the session's expiry whenever a write
        // moves it, so the browser never drops a cookie whose session is live and in use
        // (a user writing more often than `touch_after` used to keep the first `Expires`
        // until the browser dropped it), and `set_expiry` reaches the browser.
        let persistent_cookie = !policy.browser_session;
        if dirty {
            let before = record.expires_at;
            return Ok(match self.save_with_retries(record).await? {
                None => CookieAction::Clear,
                Some(saved) => {
                    let moved = saved.expires_at != before || explicit || due;
                    if id_changed || resign || (persistent_cookie && moved) {
                        set(&saved)
                    } else {
                        CookieAction::None
                    }
                }
            });
        }
        if let Some(next) = policy.touch_due(record.created_at, record.expires_at, now) {
            return match shared
                .bounded("touch", shared.store.touch(&record.id, next))
                .await
            {
                Ok(true) => Ok(if id_changed || resign || persistent_cookie {
                    CookieAction::Set {
                        id: record.id,
                        expires_at: next,
                    }
                } else {
                    CookieAction::None
                }),
                // Revoked or expired in the meantime: it stays gone.
                Ok(false) => Ok(CookieAction::Clear),
                Err(e) => self.fail(e),
            };
        }
        Ok(if id_changed || resign || (persistent_cookie && due) {
            set(&record)
        } else {
            CookieAction::None
        })
    }

    /// Creates `record` under a fresh id if its own is taken; returns what was stored.
    async fn create_new(&self, mut record: Record) -> Result<Record, SessionError> {
        let store = &self.inner.shared.store;
        let mut attempts = 0;
        loop {
            match self
                .inner
                .shared
                .bounded("create", store.create(&record))
                .await
            {
                Ok(()) => {
                    tracing::debug!(session = %record.id.short_hash(), "session created");
                    return Ok(record);
                }
                Err(StoreError::IdTaken) if attempts < 3 => {
                    attempts += 1;
                    record.id = (self.inner.shared.id_generator)();
                }
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Saves with compare-and-set, replaying this request's changes on a conflict. Returns
    /// the stored record, or `None` when the session was ended meanwhile (it then stays
    /// ended: the local view is forgotten).
    async fn save_with_retries(&self, mut record: Record) -> Result<Option<Record>, SessionError> {
        let shared = &self.inner.shared;
        let policy = shared.config.expiry;
        let (ops, user_change, expiry_at) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.ops),
                st.user_change.take(),
                st.expiry_at,
            )
        };
        let max = shared.config.max_save_retries;
        let mut attempt = 0u32;
        loop {
            record.expires_at =
                policy.on_write(record.created_at, record.expires_at, expiry_at, self.now());
            match shared.bounded("save", shared.store.save(&record)).await {
                Ok(version) => {
                    record.version = version;
                    return Ok(Some(record));
                }
                Err(StoreError::NotFound) => {
                    tracing::debug!(session = %record.id.short_hash(), "session was revoked; not saved");
                    self.forget_local();
                    return Ok(None);
                }
                Err(StoreError::Conflict) if attempt < max => {
                    attempt += 1;
                    backoff(attempt).await;
                    let fresh = match shared.bounded("load", shared.store.load(&record.id)).await {
                        Ok(Some(fresh)) => fresh,
                        Ok(None) => {
                            self.forget_local();
                            return Ok(None);
                        }
                        Err(e) => return self.fail(e),
                    };
                    let mut next = fresh;
                    if let Err(e) = self.replay(&ops, user_change.as_ref(), &mut next) {
                        return self.fail(e);
                    }
                    record = next;
                }
                Err(StoreError::Conflict) => {
                    return self.fail(SessionError::TooManyConflicts(max + 1))
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// The source of the error `update` answers after an earlier store call of the same
/// request failed: the request is failing closed and writes nothing.
#[derive(Debug, thiserror::Error)]
#[error("an earlier session store call of this request failed; nothing is written")]
struct EarlierFailure;

/// After the first conflict, retry at once (the other request has just finished saving);
/// after that, randomised exponential backoff: up to 1, 2, 4 ... 32 ms.
async fn backoff(attempt: u32) {
    if attempt <= 1 {
        tokio::task::yield_now().await;
        return;
    }
    let ceiling = 1u64 << (attempt - 2).min(5);
    let mut b = [0u8; 8];
    let r = getrandom::fill(&mut b)
        .map(|_| u64::from_le_bytes(b))
        .unwrap_or(0);
    let micros = r % (ceiling * 1000);
    tokio::time::sleep(Duration::from_micros(micros)).await;
}
