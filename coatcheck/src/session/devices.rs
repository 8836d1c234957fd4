//! The user's devices: listing their sessions and revoking one by its handle.

use coatcheck_core::DeviceHandle;

use super::{RevokeScope, Session, SessionEvent};
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
        match shared
            .bounded("list_for_user", shared.store.list_for_user(&user))
            .await
        {
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
                    self.forget_local();
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
