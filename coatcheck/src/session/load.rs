//! Loading the session named by the request's cookie, once: the absolute timeout, a
//! rotation's mark, the credential check, and the rewrite of bytes under an older key.

use coatcheck_core::Record;

use super::Session;
use crate::events::SessionEvent;
use crate::SessionError;

impl Session {
    /// Loads the record named by the cookie, once. Unknown, expired (idle or absolute) and
    /// unreadable ids are not adopted.
    pub(super) async fn ensure_loaded(&self) -> Result<(), SessionError> {
        let res = self
            .inner
            .loaded
            .get_or_try_init(|| async {
                let id = self.state().cookie_id.clone();
                let record = match &id {
                    Some(id) => {
                        self.inner
                            .shared
                            .bounded("load", self.inner.shared.store.load(id))
                            .await?
                    }
                    None => None,
                };
                let now = self.now();
                let config = &self.inner.shared.config;
                let record = record.filter(|r| {
                    config
                        .policy_for(&r.data)
                        .absolute_deadline(r.created_at)
                        .is_none_or(|deadline| deadline > now)
                });
                // A rotation's mark: the session moved on to an id this request does not
                // have. No session here, and the cookie is left alone.
                // A mark older than its time (a blind touch in flight stretched the
                // record) reads as a session gone, like any other id no longer live.
                let (record, mark) = match record {
                    Some(r) if coatcheck_core::keys::is_rotation_mark(&r.data) => (None, Some(r)),
                    other => (other, None),
                };
                let moved_on = mark.as_ref().is_some_and(|m| {
                    coatcheck_core::keys::rotated_at(&m.data)
                        .is_some_and(|at| at + crate::session::ROTATION_MARK_TTL > now)
                });
                if let Some(mark) = mark.filter(|_| moved_on) {
                    self.rewrite_mark(mark).await;
                }
                if moved_on {
                    self.state().moved_on = true;
                    tracing::debug!(
                        "the cookie names a rotated session; the browser has the new one"
                    );
                } else if record.is_none() && id.is_some() {
                    self.emit(SessionEvent::NotFoundOnRead);
                }
                let mut record = match record {
                    Some(r) => self.check_credentials(r).await?,
                    None => None,
                };
                // Stored in the clear or under an older data key: written at the end of
                // the request (a touch would keep those bytes), so a key rotation or an
                // encryption migration finishes for sessions in use (a review found an
                // active user's record never rewritten, and 500s once the old key went).
                let rewrite = record
                    .as_mut()
                    .is_some_and(|r| r.data.shift_remove(coatcheck_core::REWRITE_KEY).is_some());
                let mut st = self.state();
                st.rewrite = rewrite;
                st.persisted = record.is_some();
                st.baseline_size = record.as_ref().map_or(0, |r| self.app_size(&r.data));
                st.loaded_expires = record.as_ref().map(|r| r.expires_at);
                st.record = record;
                Ok::<(), SessionError>(())
            })
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// A live rotation's mark read under an older data key is written again under the
    /// current one (as a session in use is), so that retiring the old key never turns a
    /// cookie the browser may still send into a decode error. Best effort: the mark only
    /// says "rotated"; a failure leaves it as it was.
    pub(super) async fn rewrite_mark(&self, mut mark: Record) {
        if mark
            .data
            .shift_remove(coatcheck_core::REWRITE_KEY)
            .is_none()
        {
            return;
        }
        let shared = &self.inner.shared;
        if let Err(e) = shared.bounded("save", shared.store.save(&mark)).await {
            tracing::debug!(error = %e, "a rotation's mark was not rewritten");
        }
    }

    /// A signed-in session whose stamp does not match its user's current credentials is
    /// deleted and read as absent (the cookie is cleared): see
    /// [`credential_check`](crate::SessionLayerBuilder::credential_check).
    async fn check_credentials(&self, record: Record) -> Result<Option<Record>, SessionError> {
        let shared = &self.inner.shared;
        let (Some(check), Some(user)) = (&shared.credentials, record.user_id.clone()) else {
            return Ok(Some(record));
        };
        if let Some(stamp) = check.stamp(&user, shared.config.store_timeout).await? {
            if stamp.matches(record.data.get(crate::CREDENTIAL_KEY)) {
                return Ok(Some(record));
            }
        }
        // Compare-and-delete: a login or `regenerate` on another tab may have rotated the
        // session since this request loaded it, and deleting its mark would clear the
        // browser's new cookie. Another write that moved the version meanwhile does not
        // save the stale session: it goes anyway.
        let removed = match shared
            .bounded(
                "delete_version",
                shared.store.delete_version(&record.id, record.version),
            )
            .await
        {
            Ok(()) => true,
            Err(coatcheck_core::StoreError::NotFound) => false,
            Err(coatcheck_core::StoreError::Conflict) => {
                let now = shared
                    .bounded("load", shared.store.load(&record.id))
                    .await?;
                if now
                    .as_ref()
                    .is_some_and(|r| coatcheck_core::keys::is_rotation_mark(&r.data))
                {
                    self.state().moved_on = true;
                    return Ok(None);
                }
                shared
                    .bounded("delete", shared.store.delete(&record.id))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(session = %record.id.short_hash(), "credentials changed: session ended");
        // The cookie is cleared by the request that ended the session, not by one that
        // found it already gone: the browser may hold a new cookie by now (a login after
        // the password change, on another tab).
        if removed {
            self.state().destroyed = true;
        }
        // Once per session: only the request whose delete removed it tells (two requests
        // that found the same stale stamp used to send two events).
        if removed {
            self.emit(SessionEvent::CredentialsChanged {
                user,
                handle: record.device.map(|d| d.handle),
            });
        }
        Ok(None)
    }
}
