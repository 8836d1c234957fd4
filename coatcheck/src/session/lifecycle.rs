//! The session's lifecycle: rotating its id (`regenerate`, `login`, `credentials_changed`),
//! the old id retired by a compare-and-set that leaves a rotation's mark. Ending it is in
//! `ending.rs`.

use coatcheck_core::{LimitPolicy, Record, StoreError};
use serde::Serialize;
use serde_json::Value;

use super::write::backoff;
use super::{Op, Pending, Session, SessionEvent};
use crate::credentials::Stamp;
use crate::SessionError;

impl Session {
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
    ///
    /// With a [`credential_check`](crate::SessionLayerBuilder::credential_check), the
    /// stamp of the user's current credentials is stored in the same write
    /// ([`SessionError::UnknownUser`] when the lookup does not know the user).
    pub async fn login(&self, user_id: impl Into<String>) -> Result<(), SessionError> {
        self.login_with(user_id, std::iter::empty::<(&str, Value)>())
            .await
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
        self.login_inner(user_id.into(), None, data).await
    }

    /// Logs `user_id` in, stamping the session with the credentials the application just
    /// verified: `fingerprint` is what the
    /// [`credential_check`](crate::SessionLayerBuilder::credential_check) lookup answers
    /// for this user (the password hash the handler checked the password against, a
    /// credentials version). Prefer it to [`login`](Session::login) with a credential
    /// check: `login` asks the lookup again, and a password reset landing between the
    /// handler's check and that lookup would yield a session stamped with the *new*
    /// credentials, which survives the reset. Stamped with what was verified, such a
    /// session fails its next check instead. Without a credential check it is `login`.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn login(session: Session) -> Result<&'static str, SessionError> {
    ///     // The hash the password was just verified against, from the same read:
    ///     let verified_hash = "$argon2id$v=19$...";
    ///     session.login_verified("ada", verified_hash).await?;
    ///     Ok("welcome")
    /// }
    /// ```
    pub async fn login_verified(
        &self,
        user_id: impl Into<String>,
        fingerprint: impl AsRef<[u8]>,
    ) -> Result<(), SessionError> {
        self.login_verified_with(user_id, fingerprint, std::iter::empty::<(&str, Value)>())
            .await
    }

    /// [`login_verified`](Session::login_verified), storing `data` in the same write as
    /// [`login_with`](Session::login_with) does.
    pub async fn login_verified_with<I, K, V>(
        &self,
        user_id: impl Into<String>,
        fingerprint: impl AsRef<[u8]>,
        data: I,
    ) -> Result<(), SessionError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        let user = user_id.into();
        let stamp = Stamp::verified(&user, fingerprint.as_ref());
        self.login_inner(user, Some(stamp), data).await
    }

    /// The user changed their own credentials in this request (a new password): this
    /// session is stamped with the new `fingerprint` and gets a new id (Django's
    /// `update_session_auth_hash`), so it stays signed in, while every other session of
    /// the user fails its next [`credential_check`](crate::SessionLayerBuilder::credential_check)
    /// and is signed out. Call it after the new credentials are stored. Nothing changes
    /// when nobody is logged in or there is no credential check.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn change_password(session: Session) -> Result<&'static str, SessionError> {
    ///     // ... after storing the new password hash for this user:
    ///     let new_hash = "$argon2id$v=19$...";
    ///     session.credentials_changed(new_hash).await?;
    ///     Ok("password changed; your other devices are signed out")
    /// }
    /// ```
    pub async fn credentials_changed(
        &self,
        fingerprint: impl AsRef<[u8]>,
    ) -> Result<(), SessionError> {
        if self.inner.shared.credentials.is_none() {
            return Ok(());
        }
        let Some(user) = self.user_id().await? else {
            return Ok(());
        };
        let stamp = Stamp::verified(&user, fingerprint.as_ref());
        self.change_unchecked(Op::Set(
            crate::CREDENTIAL_KEY.to_owned(),
            stamp.into_value(),
        ))
        .await?;
        self.rotate(None).await
    }

    async fn login_inner<I, K, V>(
        &self,
        user: String,
        verified: Option<Stamp>,
        data: I,
    ) -> Result<(), SessionError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        self.ensure_loaded().await?;
        let shared = &self.inner.shared;
        let stamp = match (&shared.credentials, verified) {
            (None, _) => None,
            (Some(_), Some(stamp)) => Some(stamp),
            (Some(check), None) => Some(
                check
                    .stamp(&user, shared.config.store_timeout)
                    .await?
                    .ok_or(SessionError::UnknownUser)?,
            ),
        };
        // Sessions of this user that the credential check already treats as signed out do
        // not count against the session limit (a review found a password reset locking
        // the owner out, 409, until they idled out, and `Evict` removing valid devices
        // while stale ones stayed): they are deleted first.
        if let (Some(stamp), Some(_)) = (&stamp, shared.config.session_limit) {
            self.prune_signed_out(&user, stamp).await?;
        }
        let before = self.pending();
        // Written before the rotation, the data travels with it into the new record.
        for (key, value) in data {
            if let Err(e) = self.insert(key.as_ref(), value).await {
                self.restore(before);
                return Err(e);
            }
        }
        if let Some(stamp) = stamp {
            let set = Op::Set(crate::CREDENTIAL_KEY.to_owned(), stamp.into_value());
            if let Err(e) = self.change_unchecked(set).await {
                self.restore(before);
                return Err(e);
            }
        }
        let outcome = self.rotate(Some(user)).await;
        // A refused login leaves the session as it was: the data meant for the new user
        // must not stay in the old session (a review found the roles of a refused login
        // saved into the session of the user already signed in there).
        self.undo_if_refused(&outcome, before);
        outcome
    }

    fn undo_if_refused(&self, outcome: &Result<(), SessionError>, before: Pending) {
        if matches!(outcome, Err(SessionError::SessionLimit)) {
            self.restore(before);
        }
    }

    async fn rotate(&self, user: Option<String>) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        // A stale tab's or a second submit's login of a session that already moved on must
        // not sign the browser in afresh over the cookie it holds (or is receiving).
        self.refuse_if_moved_on()?;
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
        let now = self.now();
        let limited = self.inner.shared.config.session_limit.is_some();
        let state = {
            let mut st = self.state();
            let persisted = st.persisted;
            let expiry_at = st.expiry_at;
            if !persisted {
                // Nothing stored yet. Without a user it just takes another id; a login
                // creates it (now, when a session limit must be checked, so that a refusal
                // reaches the handler; else at the end of the request).
                let Some(user) = user.clone() else {
                    if let Some(r) = st.record.as_mut() {
                        r.id = (self.inner.shared.id_generator)();
                        st.id_changed = true;
                    }
                    return Ok(());
                };
                let existing = st.record.clone();
                Err((existing, user, expiry_at))
            } else {
                let Some(record) = st.record.clone() else {
                    return Ok(());
                };
                Ok((record, st.ops.clone(), st.user_change.clone(), expiry_at))
            }
        };
        let state = match state {
            Ok(state) => state,
            Err((existing, user, expiry_at)) => {
                return self
                    .login_unstored(existing, user, expiry_at, limited)
                    .await;
            }
        };
        let (mut view, ops, user_change, expiry_at) = state;
        let shared = &self.inner.shared;
        let old_id = view.id.clone();
        // A login as someone else is a new device for that user: the limit applies, and
        // the handle is new. A rotation of the same user's session keeps its handle.
        let same_user = user.is_none() || view.user_id == user;
        let limited = limited && !same_user;
        let evict_first = limited
            && shared
                .config
                .session_limit
                .is_some_and(|l| l.policy == LimitPolicy::EvictLeastRecentlySeen);
        let max = shared.config.max_save_retries;
        let mut attempt = 0u32;
        loop {
            let mut next = view.clone();
            // Always a fresh id: creating under the old one would bring it back if it was
            // revoked meanwhile (found by the history checker).
            next.id = (shared.id_generator)();
            if user.is_some() {
                let handle = next.device.take().filter(|_| same_user).map(|d| d.handle);
                next.device = Some(self.inner.meta.device(handle));
                next.user_id.clone_from(&user);
            }
            next.version = 1;
            // A new id, a new CSRF secret (made when the next page asks for a token):
            // a token read before a login must not work after it.
            next.data.shift_remove(coatcheck_core::keys::CSRF_KEY);
            let policy = self.inner.shared.config.policy_for(&next.data);
            next.expires_at = policy.on_write(next.created_at, next.expires_at, expiry_at, now);
            // The new record first, then the old one deleted if it is still at the version
            // this request built on: never a moment without the session, and a rotation of
            // a stale or revoked session fails instead of overwriting a newer write or
            // bringing the session back under a new id.
            //
            // Except a login that may evict other devices: its eviction cannot be undone,
            // so it must not happen for a rotation that then fails (a review found a
            // double-submitted sign-in form signing out two devices for one new one). The
            // old record goes first — the compare-and-delete decides the rotation — and the
            // new one is created after it; no request can tell the difference, since the
            // old id is dead either way once the rotation succeeds, and `Evict` never
            // refuses. (A backend failure between the two leaves the browser signed out,
            // with the error.)
            let next = if evict_first {
                // Nothing is deleted for a login that cannot be stored (a review found
                // an oversized one signing the browser out).
                if let Err(e) = self.check_size(&next) {
                    return self.fail(e);
                }
                next
            } else {
                self.create_new(next, limited).await?
            };
            // The old id is retired by a compare-and-set that replaces it with a
            // rotation's mark (see `coatcheck_core::keys::ROTATED_KEY`): a request still
            // carrying it then knows the session moved on, not that it was revoked.
            let outcome = shared
                .bounded("save", shared.store.save(&self.rotation_mark(&view, now)))
                .await
                .map(drop);
            let outcome = match (outcome, evict_first) {
                (Ok(()), true) => Ok(self.create_new(next, true).await?),
                (Ok(()), false) => Ok(next),
                (Err(refused), _) => Err((refused, next)),
            };
            let (refused, next) = match outcome {
                Ok(next) => {
                    tracing::debug!(old = %old_id.short_hash(), new = %next.id.short_hash(), "session id rotated");
                    if let (Some(u), true) = (&user, self.events_on()) {
                        self.emit(SessionEvent::LoggedIn {
                            user: u.clone(),
                            old_handle: view.device.as_ref().map(|d| d.handle.clone()),
                            new_handle: next.device.as_ref().map(|d| d.handle.clone()),
                        });
                    }
                    self.stored_under_new_id(next);
                    return Ok(());
                }
                Err(failed) => failed,
            };
            // The new record must not outlive a rotation that failed.
            if !evict_first {
                if let Err(e) = shared
                    .bounded("delete", shared.store.delete(&next.id))
                    .await
                {
                    return self.fail(e);
                }
            }
            match refused {
                StoreError::Conflict if attempt < max => {
                    attempt += 1;
                    if self.inner.shared.metrics {
                        crate::metrics::conflict();
                    }
                    backoff(attempt).await;
                    match shared.bounded("load", shared.store.load(&old_id)).await {
                        // Rotated by another request first (a double-submitted sign-in
                        // form): that one's cookie is the browser's.
                        Ok(Some(fresh)) if coatcheck_core::keys::is_rotation_mark(&fresh.data) => {
                            return self.ended(true)
                        }
                        Ok(Some(mut fresh)) => {
                            // What is stored now is the size the rotation may keep.
                            self.state().baseline_size = self.app_size(&fresh.data);
                            if let Err(e) = self.replay(&ops, user_change.as_ref(), &mut fresh) {
                                return self.fail(e);
                            }
                            view = fresh;
                        }
                        Ok(None) => return self.ended(false),
                        Err(e) => return self.fail(e),
                    }
                }
                StoreError::Conflict => {
                    self.emit(SessionEvent::ConflictsExhausted { attempts: max + 1 });
                    return self.fail(SessionError::TooManyConflicts(max + 1));
                }
                StoreError::NotFound => return self.ended(false),
                e => return self.fail(e),
            }
        }
    }

    /// A login of a session not stored yet (`existing`, or a fresh one).
    async fn login_unstored(
        &self,
        existing: Option<Record>,
        user: String,
        expiry_at: Option<coatcheck_core::Timestamp>,
        limited: bool,
    ) -> Result<(), SessionError> {
        let mut record = existing.unwrap_or_else(|| self.new_record());
        record.id = (self.inner.shared.id_generator)();
        record.data.shift_remove(coatcheck_core::keys::CSRF_KEY);
        let keep = record.user_id.as_deref() == Some(user.as_str());
        let old_handle = record.device.as_ref().map(|d| d.handle.clone());
        let handle = record.device.take().filter(|_| keep).map(|d| d.handle);
        record.device = Some(self.inner.meta.device(handle));
        record.user_id = Some(user.clone());
        if limited && !keep {
            let created = self.create_first(record, expiry_at, true).await?;
            self.state().pending_login = Some((user, old_handle));
            self.announce_login(&created);
            self.stored_under_new_id(created);
            return Ok(());
        }
        let mut st = self.state();
        st.pending_login = Some((user.clone(), old_handle));
        st.record = Some(record);
        st.user_change = Some(Some(user));
        st.id_changed = true;
        Ok(())
    }

    /// `record` is stored, with every change of this request, under an id the browser does
    /// not have yet: the view is it, nothing is pending, the cookie goes out.
    pub(super) fn stored_under_new_id(&self, record: Record) {
        let mut st = self.state();
        st.record = Some(record);
        st.persisted = true;
        st.ops.clear();
        st.user_change = None;
        st.expiry_at = None;
        st.id_changed = true;
    }
}
