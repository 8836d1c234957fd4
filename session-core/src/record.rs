//! The session record a store keeps.

use crate::{Device, SessionId, Timestamp};

/// A session's values: string keys to JSON-model values, in insertion order.
pub type Data = serde_json::Map<String, serde_json::Value>;

/// One session as a store keeps it.
///
/// ```
/// use coatcheck::core::{Record, SessionId, Timestamp};
/// use std::time::Duration;
///
/// let now = Timestamp::now();
/// let mut record = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
/// record.data.insert("views".into(), 1.into());
/// assert_eq!(record.version, 1);
/// assert!(record.is_live(now));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Record {
    /// The key.
    pub id: SessionId,
    /// The session's values.
    pub data: Data,
    /// When the session was first created; a regenerated id keeps it.
    pub created_at: Timestamp,
    /// After this instant no store returns the record.
    pub expires_at: Timestamp,
    /// 1 on create, +1 on every successful save.
    pub version: u64,
    /// The principal, indexed by stores that have a user index.
    pub user_id: Option<String>,
    /// The device that signed in (set by the middleware at login, kept across rotations),
    /// kept by stores with [`Capabilities::devices`](crate::Capabilities::devices).
    pub device: Option<Device>,
    /// When the session was last active: `create` and `save` store it as given (the
    /// middleware passes the time of the request), `touch` sets it to the store clock's
    /// now, in the same write. Stores without
    /// [`Capabilities::devices`](crate::Capabilities::devices) may report `created_at`.
    pub last_seen: Timestamp,
}

impl Record {
    /// A new record at version 1 with empty data and no user.
    pub fn new(id: SessionId, created_at: Timestamp, expires_at: Timestamp) -> Self {
        Record {
            id,
            data: Data::new(),
            created_at,
            expires_at,
            version: 1,
            user_id: None,
            device: None,
            last_seen: created_at,
        }
    }

    /// Whether the record may still be returned at `now` (`expires_at > now`).
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}

/// What [`SessionStore::list_for_user`](crate::SessionStore::list_for_user) returns per session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's id.
    pub id: SessionId,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// When it was last written (see [`Record::last_seen`]).
    pub last_seen: Timestamp,
    /// The device that signed in, where the store keeps it.
    pub device: Option<Device>,
}

impl SessionInfo {
    /// Builds one (for store implementations); `last_seen` is `created_at` and there is no
    /// device until [`SessionInfo::with_device`].
    pub fn new(id: SessionId, created_at: Timestamp, expires_at: Timestamp) -> Self {
        SessionInfo {
            id,
            created_at,
            expires_at,
            last_seen: created_at,
            device: None,
        }
    }

    /// The same info with a device and its last write.
    pub fn with_device(mut self, device: Option<Device>, last_seen: Timestamp) -> Self {
        self.device = device;
        self.last_seen = last_seen;
        self
    }
}

impl From<&Record> for SessionInfo {
    fn from(r: &Record) -> Self {
        SessionInfo::new(r.id.clone(), r.created_at, r.expires_at)
            .with_device(r.device.clone(), r.last_seen)
    }
}
