//! Writing the session: `update`'s immediate commit, and what the layer does once the
//! handler has returned (create, compare-and-set save with replay, touch, the cookie).

use std::time::Duration;

use coatcheck_core::{Record, StoreError};

use super::outcome::{End, Outcome};
use super::{CookieAction, Session};
use crate::events::{RevokeScope, SessionEvent};
use crate::SessionError;

impl Session {
    /// Writes every pending change now (compare-and-set, replayed on conflict), so the view
    /// is what is stored. `update` uses it to answer a committed value: a value computed
    /// on a stale view and re-run at the end of the request would not be (found by the
    /// history checker: concurrent increments answered the same number).
    pub(super) async fn commit(&self) -> Result<(), SessionError> {
        let (record, persisted, explicit, failed) = {
            let st = self.state();
            (st.record.clone(), st.persisted, st.expiry_at, st.failed)
        };
        if failed {
            // An earlier store call of this request failed (and the handler went on): this
            // request writes nothing, so nothing can be committed either.
            return Err(StoreError::backend(EarlierFailure).into());
        }
        self.refuse_if_moved_on()?;
        let Some(record) = record else {
            return Ok(());
        };
        if !persisted {
            let created = self.create_first(record, explicit, false).await?;
            self.announce_login(&created);
            // A new session: its cookie is sent at the end of the request.
            self.stored_under_new_id(created);
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
            // Another request rotated or revoked it meanwhile: the change is not kept.
            None => self.fail(SessionError::Ended),
        }
    }

    /// Writes what changed, once the handler has returned, and says what the response
    /// does with the cookie. Called by the layer (any framework's: nothing here knows one).
    pub(crate) async fn finish(&self) -> Result<CookieAction, SessionError> {
        self.settle().await?.respond()
    }

    /// The end of the request as an [`Outcome`]: every write it still owes, done.
    async fn settle(&self) -> Result<Outcome, SessionError> {
        let shared = &self.inner.shared;
        let now = self.now();
        let end = {
            let mut st = self.state();
            End {
                // The request is over: take the record rather than copy it.
                record: st.record.take(),
                persisted: st.persisted,
                dirty: !st.ops.is_empty()
                    || st.user_change.is_some()
                    || st.expiry_at.is_some()
                    || st.rewrite,
                explicit: st.expiry_at,
                // A new id, or a cookie that changes between persistent and not.
                id_changed: st.id_changed || st.remember_changed,
                resign: st.resign,
                destroyed: st.destroyed,
                failed: st.failed,
                due: st.cookie_due,
                moved_on: st.moved_on,
                in_flight: st.ended_in_flight,
                loaded_expires: st.loaded_expires,
            }
        };
        if end.failed {
            return Ok(Outcome::Failed);
        }
        if let Some(rotated) = end.in_flight {
            // What ended it was already answered to the handler (`Ended`).
            return Ok(Outcome::Superseded {
                rotated,
                lost: false,
            });
        }
        let loaded = self.inner.loaded.initialized();
        let Some(record) = end.record else {
            if end.destroyed {
                return Ok(Outcome::EndedHere);
            }
            if end.moved_on {
                return Ok(Outcome::Superseded {
                    rotated: true,
                    lost: false,
                });
            }
            if loaded && shared.config.save_uninitialized {
                let record = self.new_record();
                let created = self.create_new(record, false).await?;
                self.emit(SessionEvent::Created);
                return Ok(Outcome::Created(self.cookie_of(&created)));
            }
            return Ok(Outcome::Untouched);
        };
        if !end.persisted {
            let created = self.create_first(record, end.explicit, false).await?;
            self.announce_login(&created);
            return Ok(if end.id_changed {
                Outcome::RotatedTo(self.cookie_of(&created))
            } else {
                Outcome::Created(self.cookie_of(&created))
            });
        }
        // A persistent cookie's `Expires` follows the session's expiry whenever a write
        // moves it, so the browser never drops a cookie whose session is live and in use
        // (a user writing more often than `touch_after` used to keep the first `Expires`
        // until the browser dropped it), and `set_expiry` reaches the browser.
        let policy = shared.config.policy_for(&record.data);
        let resend = Resend {
            id_changed: end.id_changed,
            resign: end.resign,
            persistent_cookie: !policy.browser_session,
        };
        if end.dirty {
            let before = record.expires_at;
            return Ok(match self.save_with_retries(record).await? {
                None => self.superseded(true),
                Some(saved) => {
                    let moved = saved.expires_at != before || end.explicit.is_some() || end.due;
                    self.written(saved, resend.when(moved))
                }
            });
        }
        if let Some(next) = policy.touch_due(record.created_at, record.expires_at, now) {
            // A touch whose answer re-sends the cookie must know the id is still this
            // session's and not a rotation's mark (a blind touch finds the mark live, and
            // the old id's cookie would replace the browser's new one): a compare-and-set
            // save decides it. So does a touch with two expiry policies: this request's
            // view of "remember me" may be stale (a tab unticked it meanwhile), and a touch
            // writes blindly: it put the long expiry back (a review found it).
            if resend.when(true) || shared.config.remember_me.is_some() {
                return Ok(match self.save_with_retries(record).await? {
                    None => self.superseded(false),
                    Some(saved) => {
                        // The saved record's policy counts too: "remember me" may have
                        // changed under this request.
                        let persistent = !shared.config.policy_for(&saved.data).browser_session;
                        let send = Resend {
                            persistent_cookie: resend.persistent_cookie || persistent,
                            ..resend
                        }
                        .when(true);
                        Outcome::Read {
                            cookie: self.cookie_of(&saved),
                            resend: send,
                        }
                    }
                });
            }
            return match shared
                .bounded("touch", shared.store.touch(&record.id, next))
                .await
            {
                // No cookie goes out (see above): the touch only moves the expiry.
                Ok(true) => Ok(Outcome::Read {
                    cookie: self.cookie_of(&record),
                    resend: false,
                }),
                // Revoked, expired or rotated in the meantime: it stays gone, and the
                // cookie is left to the request that ended it.
                Ok(false) => Ok(self.superseded(false)),
                Err(e) => self.fail(e),
            };
        }
        // Nothing to write now. An early commit (`update`, a first CSRF token, a taken
        // flash) moved the expiry before the handler went on: the cookie follows it, at
        // the touch cadence, and only for an id still live now (a login on another tab may
        // have rotated it since: its cookie must not be replaced by the dead one's).
        let cadence = end
            .loaded_expires
            .is_some_and(|at| policy.touch_due(record.created_at, at, now).is_some());
        if end.id_changed {
            // This request's own rotation, stored: the browser gets the new id.
            return Ok(Outcome::RotatedTo(self.cookie_of(&record)));
        }
        if resend.when(end.due && cadence) {
            return match shared.bounded("load", shared.store.load(&record.id)).await {
                Ok(Some(live)) if !coatcheck_core::keys::is_rotation_mark(&live.data) => {
                    Ok(Outcome::Read {
                        cookie: self.cookie_of(&live),
                        resend: true,
                    })
                }
                Ok(_) => Ok(self.superseded(false)),
                Err(e) => self.fail(e),
            };
        }
        Ok(Outcome::Read {
            cookie: self.cookie_of(&record),
            resend: false,
        })
    }

    /// The cookie `record`'s session gets: its id, and `Expires` as its own policy says
    /// ("remember me" or not).
    fn cookie_of(&self, record: &Record) -> CookieAction {
        CookieAction::Set {
            id: record.id.clone(),
            expires: self
                .inner
                .shared
                .config
                .policy_for(&record.data)
                .cookie_expires(record.expires_at),
        }
    }

    /// Written at the end of the request under the cookie's own id (or a new one this
    /// request rotated to).
    fn written(&self, saved: Record, send: bool) -> Outcome {
        Outcome::Written {
            cookie: self.cookie_of(&saved),
            resend: send,
        }
    }

    /// Another request rotated or revoked the session while this one ran (`lost`: this
    /// request had changes that are not kept).
    fn superseded(&self, lost: bool) -> Outcome {
        let rotated = self.state().ended_in_flight.unwrap_or(false);
        Outcome::Superseded { rotated, lost }
    }

    /// Stores a session this request created: its expiry set by the policy (or the explicit
    /// one), under a fresh id if its own is taken; returns what was stored.
    pub(super) async fn create_first(
        &self,
        mut record: Record,
        explicit: Option<coatcheck_core::Timestamp>,
        limited: bool,
    ) -> Result<Record, SessionError> {
        let policy = self.inner.shared.config.policy_for(&record.data);
        record.expires_at =
            policy.on_write(record.created_at, record.expires_at, explicit, self.now());
        let created = self.create_new(record, limited).await?;
        self.emit(SessionEvent::Created);
        Ok(created)
    }

    /// A login of this request's new session, now stored: its event.
    pub(super) fn announce_login(&self, created: &Record) {
        let pending = self.state().pending_login.take();
        if let (Some((user, old_handle)), true) = (pending, self.events_on()) {
            self.emit(SessionEvent::LoggedIn {
                user,
                old_handle,
                new_handle: created.device.as_ref().map(|d| d.handle.clone()),
            });
        }
    }

    /// Creates `record` under a fresh id if its own is taken; returns what was stored.
    /// `limited`: a login of a new device, checked against the per-user session limit by
    /// the store; a refusal is [`SessionError::SessionLimit`] and fails nothing else.
    pub(super) async fn create_new(
        &self,
        mut record: Record,
        limited: bool,
    ) -> Result<Record, SessionError> {
        let shared = &self.inner.shared;
        let limit = shared.config.session_limit.filter(|_| limited);
        if let Err(e) = self.check_size(&record) {
            return self.fail(e);
        }
        record.last_seen = self.now();
        let mut attempts = 0;
        loop {
            let outcome = match limit {
                Some(limit) => shared
                    .bounded(
                        "create_limited",
                        shared.store.create_limited(&record, limit),
                    )
                    .await
                    .map(|evicted| {
                        if evicted > 0 {
                            tracing::debug!(evicted, "sessions over the per-user limit revoked");
                            if let Some(user) = &record.user_id {
                                self.emit(SessionEvent::Revoked {
                                    user: user.clone(),
                                    scope: RevokeScope::Evicted,
                                    count: evicted,
                                });
                            }
                        }
                    }),
                None => shared.bounded("create", shared.store.create(&record)).await,
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(session = %record.id.short_hash(), "session created");
                    return Ok(record);
                }
                Err(StoreError::IdTaken) if attempts < 3 => {
                    attempts += 1;
                    record.id = (shared.id_generator)();
                }
                Err(StoreError::LimitReached) => return Err(SessionError::SessionLimit),
                Err(e) => return self.fail(e),
            }
        }
    }

    /// Saves with compare-and-set, replaying this request's changes on a conflict. Returns
    /// the stored record, or `None` when the session was ended meanwhile (it then stays
    /// ended: the local view is forgotten).
    pub(super) async fn save_with_retries(
        &self,
        mut record: Record,
    ) -> Result<Option<Record>, SessionError> {
        let shared = &self.inner.shared;
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
            let now = self.now();
            // The policy of the record as it will be stored: a replayed "remember me"
            // (or a concurrent one) decides it.
            let policy = shared.config.policy_for(&record.data);
            record.expires_at =
                policy.on_write(record.created_at, record.expires_at, expiry_at, now);
            record.last_seen = now;
            // Checked on every attempt: a replay onto a fresher copy may grow the data.
            if let Err(e) = self.check_size(&record) {
                return self.fail(e);
            }
            match shared.bounded("save", shared.store.save(&record)).await {
                Ok(version) => {
                    if attempt > 0 {
                        tracing::debug!(session = %record.id.short_hash(), conflicts = attempt, "session saved after concurrent saves");
                    }
                    record.version = version;
                    return Ok(Some(record));
                }
                Err(StoreError::NotFound) => {
                    tracing::debug!(session = %record.id.short_hash(), "session was revoked; not saved");
                    self.ended_meanwhile(false);
                    return Ok(None);
                }
                Err(StoreError::Conflict) if attempt < max => {
                    attempt += 1;
                    if self.inner.shared.metrics {
                        crate::metrics::conflict();
                    }
                    backoff(attempt).await;
                    let fresh = match shared.bounded("load", shared.store.load(&record.id)).await {
                        Ok(Some(fresh)) if coatcheck_core::keys::is_rotation_mark(&fresh.data) => {
                            tracing::debug!(session = %record.id.short_hash(), "session was rotated by another request; not saved");
                            self.ended_meanwhile(true);
                            return Ok(None);
                        }
                        Ok(Some(fresh)) => fresh,
                        Ok(None) => {
                            self.ended_meanwhile(false);
                            return Ok(None);
                        }
                        Err(e) => return self.fail(e),
                    };
                    // What is stored now is the size a replay may keep.
                    self.state().baseline_size = self.app_size(&fresh.data);
                    let mut next = fresh;
                    if let Err(e) = self.replay(&ops, user_change.as_ref(), &mut next) {
                        return self.fail(e);
                    }
                    record = next;
                }
                Err(StoreError::Conflict) => {
                    tracing::debug!(session = %record.id.short_hash(), conflicts = attempt + 1, "session not saved: concurrent saves kept winning");
                    self.emit(SessionEvent::ConflictsExhausted { attempts: max + 1 });
                    return self.fail(SessionError::TooManyConflicts(max + 1));
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}

impl Session {
    /// Refuses a record whose application data is over
    /// [`max_data_bytes`](crate::SessionConfig::max_data_bytes) and larger than it was
    /// (and reports the size to the metrics). The session's own keys (CSRF secret, flash
    /// queue, credential stamp, remember-me) do not count, and a session already over the
    /// limit (the limit was lowered, or it predates the limit) keeps working — read,
    /// shrunk, rotated, signed out, given a CSRF token — as long as it does not grow
    /// (a review found such sessions refused a login, and locked out of every form).
    pub(super) fn check_size(&self, record: &Record) -> Result<(), SessionError> {
        let limit = self.inner.shared.config.max_data_bytes;
        let metrics = self.inner.shared.metrics;
        if limit.is_none() && !metrics {
            return Ok(());
        }
        let size = self.app_size(&record.data);
        if metrics {
            crate::metrics::data_size(size);
        }
        let baseline = self.state().baseline_size;
        match limit {
            Some(limit) if size > limit && size > baseline => {
                tracing::warn!(size, limit, "session data over the limit; nothing written");
                Err(SessionError::DataTooLarge { size, limit })
            }
            _ => Ok(()),
        }
    }
}

impl Session {
    /// The size of the application's part of `data` (see [`app_data_size`]).
    pub(super) fn app_size(&self, data: &coatcheck_core::Data) -> usize {
        app_data_size(data, self.principal_key())
    }
}

/// The length of the JSON encoding of `data`'s application keys, counted without building
/// it: the session's own keys (`coatcheck_core::keys::RESERVED_KEYS`) and the principal's
/// key of express-compatible mode (which `login` writes) are left out.
pub(crate) fn app_data_size(data: &coatcheck_core::Data, principal: Option<&str>) -> usize {
    struct AppData<'a>(&'a coatcheck_core::Data, Option<&'a str>);
    impl serde::Serialize for AppData<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().filter(|(k, _)| {
                !coatcheck_core::keys::is_reserved(k) && Some(k.as_str()) != self.1
            }))
        }
    }
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A JSON value always serializes; a failure would only undercount.
    let _ = serde_json::to_writer(&mut count, &AppData(data, principal));
    count.0
}

/// The source of the error `update` answers after an earlier store call of the same
/// request failed: the request is failing closed and writes nothing.
#[derive(Debug, thiserror::Error)]
#[error("an earlier session store call of this request failed; nothing is written")]
struct EarlierFailure;

/// After the first conflict, retry at once (the other request has just finished saving);
/// after that, randomised exponential backoff: up to 1, 2, 4 ... 32 ms.
pub(super) async fn backoff(attempt: u32) {
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

/// When a request ends by sending its session's cookie again: the one place that decides it.
/// Always after the id changed (a new cookie value) or when the cookie must be re-signed
/// (with the current key, or moved between persistent and not); and, for a persistent
/// cookie, whenever the session's expiry `moved`, so the cookie's `Expires` follows it. A
/// browser-session cookie has no `Expires` to follow.
#[derive(Debug, Clone, Copy)]
struct Resend {
    id_changed: bool,
    resign: bool,
    persistent_cookie: bool,
}

impl Resend {
    fn when(self, moved: bool) -> bool {
        self.id_changed || self.resign || (self.persistent_cookie && moved)
    }
}
