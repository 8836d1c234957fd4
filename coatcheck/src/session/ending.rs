//! Ending the session: `destroy`, `logout_everywhere`, `logout_other_devices`, and how a
//! request forgets a session another request ended (rotated or revoked) while it ran.

use coatcheck_core::{Record, StoreError};
use serde_json::Value;

use super::{RevokeScope, Session, SessionEvent};
use crate::SessionError;

impl Session {
    /// Another request rotated (`rotated`) or revoked the session while this one ran: it
    /// stays so, nothing of this request is written, and no cookie goes out (the browser
    /// may already hold a newer one). [`SessionError::Ended`], also if the handler
    /// swallows it.
    pub(super) fn ended<T>(&self, rotated: bool) -> Result<T, SessionError> {
        self.ended_meanwhile(rotated);
        self.fail(SessionError::Ended)
    }

    /// Records that another request ended the session while this one ran.
    pub(super) fn ended_meanwhile(&self, rotated: bool) {
        tracing::debug!(rotated, "session was ended by another request");
        self.forget_local();
        self.state().ended_in_flight = Some(rotated);
    }

    /// What a rotation leaves under the id it retires: `view`'s id and version (the
    /// compare-and-set), the mark's key holding the instant, no user, no device, nothing
    /// of the session's data, and a short life.
    pub(super) fn rotation_mark(&self, view: &Record, now: coatcheck_core::Timestamp) -> Record {
        let mut mark = Record::new(
            view.id.clone(),
            view.created_at,
            now + super::ROTATION_MARK_TTL,
        );
        mark.version = view.version;
        mark.last_seen = now;
        mark.data.insert(
            coatcheck_core::keys::ROTATED_KEY.to_owned(),
            Value::from(now.as_millis()),
        );
        mark
    }

    /// This request ends its session: forgotten here, the cookie cleared.
    pub(super) fn end_here(&self) {
        self.forget_local();
        self.state().destroyed = true;
    }

    /// Deletes the session now and clears the cookie. Writing afterwards starts a new one.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        self.destroy_counted().await.map(drop)
    }

    /// [`Session::destroy`], telling whether a stored session was removed.
    async fn destroy_counted(&self) -> Result<bool, SessionError> {
        self.ensure_loaded().await?;
        // The cookie names a rotated id: signing out of it would clear the browser's new
        // cookie and leave the session it names signed in. The user sees a 409 and signs
        // out from the page they have now.
        self.refuse_if_moved_on()?;
        let stored = {
            let st = self.state();
            st.record.clone().filter(|_| st.persisted)
        };
        let Some(mut record) = stored else {
            // Nothing stored under the cookie (gone when the request began, or created by
            // this request and not written yet): nothing to delete, the cookie is cleared.
            self.end_here();
            return Ok(false);
        };
        let shared = &self.inner.shared;
        // Compare-and-delete at the version this request saw: a `regenerate` or a login
        // on another tab may have rotated the session meanwhile, and deleting its mark
        // would announce a destroyed device that is live and clear the browser's new
        // cookie (found by the history checker). A plain write meanwhile does not save the
        // session from its logout: the delete is retried at the newer version.
        let max = shared.config.max_save_retries;
        let mut attempt = 0u32;
        loop {
            let outcome = shared
                .bounded(
                    "delete_version",
                    shared.store.delete_version(&record.id, record.version),
                )
                .await;
            match outcome {
                Ok(()) => break,
                Err(StoreError::NotFound) => return self.destroy_gone(&record).await,
                Err(StoreError::Conflict) if attempt < max => {
                    attempt += 1;
                    match shared.bounded("load", shared.store.load(&record.id)).await {
                        Ok(Some(fresh)) if coatcheck_core::keys::is_rotation_mark(&fresh.data) => {
                            return self.ended(true)
                        }
                        Ok(Some(fresh)) => record = fresh,
                        Ok(None) => return self.destroy_gone(&record).await,
                        Err(e) => return self.fail(e),
                    }
                }
                Err(StoreError::Conflict) => {
                    self.emit(SessionEvent::ConflictsExhausted { attempts: max + 1 });
                    return self.fail(SessionError::TooManyConflicts(max + 1));
                }
                Err(e) => return self.fail(e),
            }
        }
        tracing::debug!(session = %record.id.short_hash(), "session destroyed");
        self.emit(SessionEvent::Destroyed {
            user: record.user_id,
            handle: record.device.map(|d| d.handle),
        });
        self.end_here();
        Ok(true)
    }

    /// `destroy` found the session it loaded gone. A logout is never answered on a read
    /// alone: a plain delete (a revocation, acknowledged by replicas where the store
    /// waits for them) makes sure. Found by the history checker during a Redis failover
    /// (`failover_every_write`, base 91000): the compare-and-delete's reload read the
    /// session as absent, the logout answered 200, and the session was live at the end.
    async fn destroy_gone(&self, record: &Record) -> Result<bool, SessionError> {
        let shared = &self.inner.shared;
        match shared
            .bounded("delete", shared.store.delete(&record.id))
            .await
        {
            Ok(true) => {
                tracing::debug!(session = %record.id.short_hash(), "session destroyed");
                self.emit(SessionEvent::Destroyed {
                    user: record.user_id.clone(),
                    handle: record.device.as_ref().map(|d| d.handle.clone()),
                });
                self.end_here();
                Ok(true)
            }
            // Ended by another request meanwhile: its cookie is left to that request.
            Ok(false) => {
                self.ended_meanwhile(false);
                Ok(false)
            }
            Err(e) => self.fail(e),
        }
    }

    pub(super) fn forget_local(&self) {
        // Make sure a later access does not load the deleted record again.
        let _ = self.inner.loaded.set(());
        let mut st = self.state();
        st.record = None;
        st.persisted = false;
        st.ops.clear();
        st.user_change = None;
        st.expiry_at = None;
        st.pending_login = None;
        // A session this request creates afterwards starts from nothing: the old one's
        // size allows it nothing.
        st.baseline_size = 0;
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
                    self.end_here();
                    self.emit(SessionEvent::Revoked {
                        user,
                        scope: RevokeScope::Everywhere,
                        count: n,
                    });
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
                Ok(n) => {
                    self.emit(SessionEvent::Revoked {
                        user,
                        scope: RevokeScope::OtherDevices,
                        count: n,
                    });
                    Ok(n)
                }
                Err(e) => self.fail(e),
            },
            None => Ok(0),
        }
    }
}
