//! The store contract.

use async_trait::async_trait;

use crate::{Record, SessionId, SessionInfo, SessionLimit, StoreError, Timestamp};

/// What a store can do beyond the required minimum, so the conformance suite and the
/// middleware know what to expect.
///
/// ```
/// let caps = coatcheck::core::Capabilities::new().with_user_index(true);
/// assert!(caps.user_index);
/// assert!(!caps.native_expiry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `list_for_user` and `delete_for_user` work (an index on `user_id`).
    pub user_index: bool,
    /// The backend removes expired entries by itself (`delete_expired` may return 0).
    pub native_expiry: bool,
    /// `save` returns an opaque new version (a content hash, as in express-compatible mode)
    /// instead of the old version + 1. Compare-and-set still holds; counting does not.
    pub opaque_versions: bool,
    /// The store keeps no creation time (express-compatible mode): `created_at` reads as the
    /// Unix epoch, and an absolute timeout cannot be enforced.
    pub no_creation_time: bool,
    /// Records keep their [`Device`](crate::Device) and `last_seen`, `list_for_user`
    /// returns them, and [`SessionStore::delete_device`] works.
    pub devices: bool,
    /// [`SessionStore::create_limited`] enforces a per-user limit atomically.
    pub session_limit: bool,
    /// Records are laid out for another program (express-compatible mode: Node reads them
    /// under the raw session id), so they cannot be keyed by a hash of the id
    /// ([`HashedIds`](crate::HashedIds) refuses such a store).
    pub express_layout: bool,
    /// The backend's name as OpenTelemetry's `db.system.name` names it (`redis`,
    /// `postgresql`, `mongodb`, `mysql`, `sqlite`; a custom store picks its own), for the
    /// middleware's metrics and store-call spans. Empty reads as `other`
    /// ([`Capabilities::system`]).
    pub db_system: &'static str,
}

impl Capabilities {
    /// No optional capability.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `user_index`.
    pub fn with_user_index(mut self, yes: bool) -> Self {
        self.user_index = yes;
        self
    }

    /// Sets `native_expiry`.
    pub fn with_native_expiry(mut self, yes: bool) -> Self {
        self.native_expiry = yes;
        self
    }

    /// Sets `opaque_versions`.
    pub fn with_opaque_versions(mut self, yes: bool) -> Self {
        self.opaque_versions = yes;
        self
    }

    /// Sets `devices`.
    pub fn with_devices(mut self, yes: bool) -> Self {
        self.devices = yes;
        self
    }

    /// Sets `session_limit`.
    pub fn with_session_limit(mut self, yes: bool) -> Self {
        self.session_limit = yes;
        self
    }

    /// Sets `express_layout`.
    pub fn with_express_layout(mut self, yes: bool) -> Self {
        self.express_layout = yes;
        self
    }

    /// Sets `no_creation_time`.
    pub fn with_no_creation_time(mut self, yes: bool) -> Self {
        self.no_creation_time = yes;
        self
    }

    /// Sets `db_system`.
    pub fn with_db_system(mut self, name: &'static str) -> Self {
        self.db_system = name;
        self
    }

    /// The backend's `db.system.name`: `db_system`, or `other` when the store set none.
    pub fn system(&self) -> &'static str {
        if self.db_system.is_empty() {
            "other"
        } else {
            self.db_system
        }
    }
}

/// Where sessions live. Every coatcheck store implements this; the middleware only talks
/// to a `dyn SessionStore`.
///
/// # The contract
///
/// - Every method is **one round trip** to the backend on its success path.
/// - "Live" means `expires_at > now`, with `now` read from the store's [`Clock`](crate::Clock)
///   (the application's clock, never the database's). A record that is not live is treated
///   as absent by every method, whether or not the backend has physically removed it.
/// - Errors are typed ([`StoreError`]): `IdTaken`, `Conflict`, `NotFound`, `Decode` for stored
///   bytes that are unreadable, `Backend` for connection, timeout and server errors.
/// - A store never panics on anything a backend or a stored value can contain.
///
/// # A worked example
///
/// A deliberately small store (one global lock; use `coatcheck-memory` for real) that
/// honours the whole contract:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use coatcheck::core::*;
///
/// #[derive(Debug, Default)]
/// struct TinyStore(Mutex<HashMap<SessionId, Record>>);
///
/// impl TinyStore {
///     fn map(&self) -> Result<std::sync::MutexGuard<'_, HashMap<SessionId, Record>>, StoreError> {
///         self.0.lock().map_err(|_| StoreError::backend("poisoned lock"))
///     }
/// }
///
/// #[async_trait::async_trait]
/// impl SessionStore for TinyStore {
///     async fn create(&self, record: &Record) -> Result<(), StoreError> {
///         let now = Timestamp::now();
///         let mut map = self.map()?;
///         match map.get(&record.id) {
///             Some(old) if old.is_live(now) => Err(StoreError::IdTaken),
///             _ => { map.insert(record.id.clone(), record.clone()); Ok(()) }
///         }
///     }
///     async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
///         let now = Timestamp::now();
///         Ok(self.map()?.get(id).filter(|r| r.is_live(now)).cloned())
///     }
///     async fn save(&self, record: &Record) -> Result<u64, StoreError> {
///         let now = Timestamp::now();
///         let mut map = self.map()?;
///         let stored = map.get_mut(&record.id).filter(|r| r.is_live(now)).ok_or(StoreError::NotFound)?;
///         if stored.version != record.version {
///             return Err(StoreError::Conflict);
///         }
///         *stored = record.clone();
///         stored.version += 1;
///         Ok(stored.version)
///     }
///     async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
///         let now = Timestamp::now();
///         Ok(match self.map()?.get_mut(id).filter(|r| r.is_live(now)) {
///             Some(r) => { r.expires_at = expires_at; true }
///             None => false,
///         })
///     }
///     async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
///         let now = Timestamp::now();
///         Ok(self.map()?.remove(id).is_some_and(|r| r.is_live(now)))
///     }
///     async fn list_for_user(&self, user: &str) -> Result<Vec<SessionInfo>, StoreError> {
///         let now = Timestamp::now();
///         Ok(self.map()?.values()
///             .filter(|r| r.is_live(now) && r.user_id.as_deref() == Some(user))
///             .map(SessionInfo::from).collect())
///     }
///     async fn delete_for_user(&self, user: &str, except: Option<&SessionId>) -> Result<u64, StoreError> {
///         let now = Timestamp::now();
///         let mut map = self.map()?;
///         let before = map.len();
///         map.retain(|id, r| !(r.is_live(now) && r.user_id.as_deref() == Some(user) && Some(id) != except));
///         Ok((before - map.len()) as u64)
///     }
///     async fn delete_expired(&self) -> Result<u64, StoreError> {
///         let now = Timestamp::now();
///         let mut map = self.map()?;
///         let before = map.len();
///         map.retain(|_, r| r.is_live(now));
///         Ok((before - map.len()) as u64)
///     }
///     fn capabilities(&self) -> Capabilities {
///         Capabilities::new().with_user_index(true)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), StoreError> {
/// let store = TinyStore::default();
/// let now = Timestamp::now();
/// let mut record = Record::new(SessionId::generate(), now, now + std::time::Duration::from_secs(60));
/// store.create(&record).await?;
/// record.data.insert("views".into(), 1.into());
/// record.version = store.save(&record).await?;          // 2
/// let mut stale = record.clone();
/// stale.version = 1;
/// assert!(matches!(store.save(&stale).await, Err(StoreError::Conflict)));
/// store.delete(&record.id).await?;
/// assert!(matches!(store.save(&record).await, Err(StoreError::NotFound))); // no resurrection
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// Atomic insert-if-absent. `IdTaken` if a live record has this id; never overwrites
    /// one. (An expired record still physically present counts as absent: it is replaced,
    /// and its index entries with it, so the old user's index does not keep the id.)
    async fn create(&self, record: &Record) -> Result<(), StoreError>;

    /// The live record with this id, or `None` when absent or `expires_at <= now`.
    /// Loading never creates anything.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError>;

    /// Compare-and-set on `version`: succeeds only if the stored version equals
    /// `record.version`; stores the whole record (data, `expires_at`, `user_id`, device,
    /// `last_seen`; `created_at` is kept as created) with
    /// `version + 1` and returns that new version. (A store with
    /// [`Capabilities::opaque_versions`] returns a new opaque version instead of a count.)
    ///
    /// `Conflict` if the stored version differs (nothing is changed); `NotFound` if the
    /// record is gone or expired — a save never resurrects a deleted or revoked session.
    /// Moving `user_id` moves the session between users' indexes.
    ///
    /// "Expired" is judged at the instant the call reads its clock, when it is issued: a
    /// save that then waits for a lock (SQLite's busy wait behind another process, a row
    /// lock in MySQL) is not refused because the session's expiry passed during the wait.
    /// The request behind it loaded the session while it was live, and its handler ran for
    /// longer than any lock wait; refusing at the end of the wait would sign the user out
    /// for the store's slowness. A session deleted or revoked meanwhile is still refused
    /// (the compare-and-set sees the row gone or changed), and the overshoot is at most one
    /// lock wait (SQLite's busy timeout; a MySQL cleanup that takes the row first deletes it,
    /// and the save then finds it gone).
    async fn save(&self, record: &Record) -> Result<u64, StoreError>;

    /// Moves `expires_at` of a live record, and `last_seen` to the store's now for a store
    /// with [`Capabilities::devices`]; data, user, device and version are untouched (a touch
    /// is no write: a concurrent compare-and-set `save` still succeeds after it). Returns
    /// whether a live record was there.
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError>;

    /// Removes the record **and its index entries** (the per-user index, the device
    /// handle): an entry left behind is a leak that grows forever in a store whose readers
    /// re-check the record, since no reader ever sees it. Idempotent; returns whether a live
    /// record was removed.
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError>;

    /// Compare-and-delete: removes the record only if it is live and its version is
    /// `version`. `Conflict` if the stored version differs (nothing is changed), `NotFound`
    /// if nothing live is there. Its index entry goes with it.
    ///
    /// The middleware rotates an id (`login`, `regenerate`) by creating the new record and
    /// then deleting the old one with this, so a rotation based on a stale version, or of a
    /// session revoked meanwhile, fails instead of overwriting a newer write or bringing the
    /// session back under a new id.
    ///
    /// The provided implementation is a [`save`](SessionStore::save) of an empty,
    /// principal-less record of that version that expired at the Unix epoch — the
    /// compare-and-set of `save` makes it atomic, and a record that is not live is absent
    /// for every method — followed by a [`delete`](SessionStore::delete) of what is left
    /// (so that, say, an Express app's unconditional touch cannot bring the empty record
    /// back). Two round trips: a store whose backend can delete conditionally in one step
    /// should override it.
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        let epoch = Timestamp::from_millis(0);
        let mut tombstone = Record::new(id.clone(), epoch, Timestamp::from_millis(1));
        tombstone.version = version;
        self.save(&tombstone).await?;
        self.delete(id).await.map(drop)
    }

    /// The live sessions of `user_id`: id, `created_at`, `expires_at`, in no particular order.
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError>;

    /// Revokes all live sessions of `user_id`, keeping `except` (the current device) if given.
    /// Returns how many were removed.
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError>;

    /// Physical cleanup of expired records. A store whose backend expires entries itself
    /// may return 0.
    async fn delete_expired(&self) -> Result<u64, StoreError>;

    /// Revokes **every** live session of `user_id` whose device handle is `handle` (a
    /// rotation keeps a device's handle, so two records may share one), in one round trip.
    /// Returns whether one was removed: a handle of another user's session, or of no
    /// session, removes nothing and answers `false`. Their index entries go with them.
    ///
    /// The provided implementation answers [`StoreError::Unsupported`]; stores with
    /// [`Capabilities::devices`] override it.
    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        let _ = (user_id, handle);
        Err(StoreError::Unsupported("devices (delete_device)"))
    }

    /// [`create`](SessionStore::create) for a record whose `user_id` is set, keeping that
    /// user at `limit.max` live sessions at most, atomically: two creates arriving together
    /// never both get past the limit. When the user is at the limit, the policy either
    /// revokes the least recently seen sessions (their number is returned) or refuses with
    /// [`StoreError::LimitReached`], creating nothing.
    ///
    /// The count and the create are one atomic step (one transaction, one script, a lock
    /// held across both): counting in one step and creating in another lets two logins of
    /// one user both pass. A create that cannot happen revokes nobody: an id that is live
    /// is [`StoreError::IdTaken`] with nothing evicted (a transaction rolls the evictions
    /// back), and `Refuse` at the limit is `LimitReached` with nothing written (a store may
    /// check either first). An expired record under the id counts as absent, and its index
    /// entries are replaced with the new record's, as for [`create`](SessionStore::create).
    ///
    /// The provided implementation answers [`StoreError::Unsupported`]; stores with
    /// [`Capabilities::session_limit`] override it.
    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let _ = (record, limit);
        Err(StoreError::Unsupported(
            "a per-user session limit (create_limited)",
        ))
    }

    /// The live record [`list_for_user`](SessionStore::list_for_user) answered `id` for:
    /// [`load`](SessionStore::load), except for a store that lists its records under
    /// another id than the session's ([`HashedIds`](crate::HashedIds) lists hashed keys,
    /// which `load` would hash again). The middleware uses it to read a user's other
    /// sessions (a session cap with a credential check skips those already signed out);
    /// the record comes back under `id`, which [`delete`](SessionStore::delete) takes.
    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        self.load(id).await
    }

    /// What this store supports beyond the minimum.
    fn capabilities(&self) -> Capabilities;

    /// The id under which this store keeps the session `id` — what
    /// [`list_for_user`](SessionStore::list_for_user) answers for it. The id itself, except
    /// for a store that keys records by a hash of the id ([`HashedIds`](crate::HashedIds)).
    fn stored_id(&self, id: &SessionId) -> SessionId {
        id.clone()
    }
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for std::sync::Arc<S> {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        (**self).create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        (**self).load(id).await
    }
    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        (**self).save(record).await
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        (**self).touch(id, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        (**self).delete(id).await
    }
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        (**self).delete_version(id, version).await
    }
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        (**self).list_for_user(user_id).await
    }
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        (**self).delete_for_user(user_id, except).await
    }
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        (**self).delete_expired().await
    }
    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        (**self).delete_device(user_id, handle).await
    }
    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        (**self).create_limited(record, limit).await
    }
    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        (**self).load_listed(id).await
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn stored_id(&self, id: &SessionId) -> SessionId {
        (**self).stored_id(id)
    }
}
