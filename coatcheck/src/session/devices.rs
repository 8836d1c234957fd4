//! The user's devices: listing their sessions and revoking one by its handle.

use coatcheck_core::{DeviceHandle, SessionInfo, StoreError};

use super::{RevokeScope, Session, SessionEvent};
use crate::credentials::Stamp;
use crate::{SessionError, UserSession};

impl Session {
    /// The live sessions of this session's user, this one marked
    /// [`current`](UserSession::current) (empty when nobody is logged in). Device details
    /// are there when the store keeps them
    /// ([`Capabilities::devices`](coatcheck_core::Capabilities::devices)); session ids never
    /// are.
    pub async fn list_user_sessions(&self) -> Result<Vec<UserSession>, SessionError> {
        let Some(user) = self.user_id().await? else {
            return Ok(Vec::new());
        };
        let shared = &self.inner.shared;
        // The store lists ids as it keeps them (hashed, with `HashedIds`); a session still
        // under its raw id (a hashing store's migration) is recognised as well.
        let current = self
            .state()
            .record
            .as_ref()
            .map(|r| (shared.store.stored_id(&r.id), r.id.clone()));
        // With a credential check, sessions it already treats as signed out are not
        // listed (they are deleted: their next request would do it).
        let listed = match &shared.credentials {
            Some(check) => match check.stamp(&user, shared.config.store_timeout).await? {
                Some(stamp) => self.prune_signed_out(&user, &stamp).await,
                None => Ok(Vec::new()),
            },
            None => shared
                .bounded("list_for_user", shared.store.list_for_user(&user))
                .await
                .or_else(|e| self.fail(e)),
        };
        match listed {
            Ok(list) => {
                let mut list: Vec<UserSession> = list
                    .into_iter()
                    .map(|info| {
                        let is_current = current
                            .as_ref()
                            .is_some_and(|(stored, raw)| *stored == info.id || *raw == info.id);
                        UserSession::new(info, is_current)
                    })
                    .collect();
                // This device first, then the most recently seen.
                list.sort_by(|a, b| {
                    b.current
                        .cmp(&a.current)
                        .then(b.last_seen.cmp(&a.last_seen))
                });
                Ok(list)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Deletes the sessions of `user` whose credential stamp is not `current` — the
    /// credential check signs them out at their next request anyway — except this one,
    /// and answers the others. One list and a load per session: only with both a
    /// credential check and a session limit (at a login) or the devices page.
    pub(super) async fn prune_signed_out(
        &self,
        user: &str,
        current: &Stamp,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        let shared = &self.inner.shared;
        let own = self
            .state()
            .record
            .as_ref()
            .map(|r| (shared.store.stored_id(&r.id), r.id.clone()));
        let list = match shared
            .bounded("list_for_user", shared.store.list_for_user(user))
            .await
        {
            Ok(list) => list,
            Err(e) => return self.fail(e),
        };
        let mut kept = Vec::with_capacity(list.len());
        let mut removed = 0u64;
        for info in list {
            if own
                .as_ref()
                .is_some_and(|(stored, raw)| *stored == info.id || *raw == info.id)
            {
                kept.push(info);
                continue;
            }
            let stale = match shared
                .bounded("load", shared.store.load_listed(&info.id))
                .await
            {
                Ok(None) => continue,
                Ok(Some(record)) => {
                    record.user_id.as_deref() == Some(user)
                        && !current.matches(record.data.get(crate::CREDENTIAL_KEY))
                }
                // Bytes this instance cannot read (a session left unused under a retired
                // data key, or written under a key this instance does not have yet during
                // a rolling deploy): neither listed nor deleted — another instance may read
                // it — instead of failing every limited login of its user (found by the
                // history checker's key-rotation phases; deleting it was found unsafe by a
                // review).
                Err(StoreError::Decode(_)) => continue,
                Err(e) => return self.fail(e),
            };
            if !stale {
                kept.push(info);
                continue;
            }
            match shared
                .bounded("delete", shared.store.delete(&info.id))
                .await
            {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => return self.fail(e),
            }
        }
        // One event for them all, naming no device: a record listed here may be the copy
        // a rotation of that device has in flight, and `CredentialsChanged` names each
        // device once — when a request of its own finds it signed out (the history checker
        // found a device announced twice, once per copy).
        if removed > 0 {
            self.emit(SessionEvent::Revoked {
                user: user.to_owned(),
                scope: RevokeScope::StaleCredentials,
                count: removed,
            });
        }
        Ok(kept)
    }

    /// This session's device handle, once a login recorded one.
    pub async fn device_handle(&self) -> Result<Option<DeviceHandle>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self
            .state()
            .record
            .as_ref()
            .and_then(|r| r.device.as_ref().map(|d| d.handle.clone())))
    }

    /// Signs one of this user's devices out: revokes the session whose device handle is
    /// `handle` if it belongs to the current user, in one store call. Returns whether a
    /// session was revoked — `false` for a handle of nobody's session, or of another
    /// user's (which stays untouched), and when nobody is logged in. Revoking this
    /// session's own handle ends this session (the cookie is cleared).
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn sign_out_device(session: Session, handle: String) -> Result<&'static str, SessionError> {
    ///     Ok(if session.revoke_device(&handle).await? { "signed out" } else { "no such device" })
    /// }
    /// ```
    pub async fn revoke_device(&self, handle: &str) -> Result<bool, SessionError> {
        let Some(user) = self.user_id().await? else {
            return Ok(false);
        };
        if DeviceHandle::parse(handle).is_none() {
            return Ok(false);
        }
        let own = self
            .device_handle()
            .await?
            .is_some_and(|h| h.as_str() == handle);
        let shared = &self.inner.shared;
        match shared
            .bounded("delete_device", shared.store.delete_device(&user, handle))
            .await
        {
            Ok(removed) => {
                if own {
                    self.end_here();
                }
                if let (true, Some(h)) = (removed, DeviceHandle::parse(handle)) {
                    self.emit(SessionEvent::Revoked {
                        user,
                        scope: RevokeScope::Device(h),
                        count: 1,
                    });
                }
                Ok(removed)
            }
            Err(e) => self.fail(e),
        }
    }
}
