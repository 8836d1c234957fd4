//! [`MemoryStore`]: the shards, the public API and the [`SessionStore`] implementation.
//! The capacity bound (sweeping and eviction) is in `store/capacity.rs`, the user index and
//! the per-user limit in `store/users.rs`.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, LimitPolicy, Record, SessionId, SessionInfo, SessionLimit, SessionStore,
    StoreError, Timestamp,
};

use crate::builder::MemoryStoreBuilder;

mod capacity;
#[cfg(test)]
mod tests;
mod users;

type Shard = Mutex<HashMap<SessionId, Record>>;
type UserShard = Mutex<HashMap<String, HashSet<SessionId>>>;

/// The in-process session store. Cheap to clone: clones share the same sessions.
///
/// See the [crate docs](crate) for its behaviour.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Box<[Shard]>,
    users: Box<[UserShard]>,
    hasher: RandomState,
    len: AtomicUsize,
    evictions: AtomicU64,
    capacity: usize,
    clock: Arc<dyn Clock>,
    /// Held by `create_limited` from its count to its insert, so two limited creates never
    /// both see room (logins are rare; one lock for all users is enough).
    limit: Mutex<()>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a shard. A poisoned lock means a panic happened while it was held; the map is
/// still structurally sound (no operation leaves it half-updated), so carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    /// A store with the defaults (capacity 1,000,000, 64 shards, system clock).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The store a builder describes.
    pub(crate) fn from_parts(capacity: usize, shards: usize, clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                users: (0..shards).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                len: AtomicUsize::new(0),
                evictions: AtomicU64::new(0),
                capacity,
                clock,
                limit: Mutex::new(()),
            }),
        }
    }

    /// How many records are held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many live records were evicted to stay within capacity, since the store was built.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// Removes expired records every `interval` in a background task, until the store (all
    /// its clones) is dropped. Needs a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::memory::MemoryStore::new();
    /// let sweeper = store.spawn_sweeper(std::time::Duration::from_secs(60));
    /// drop(store); // the sweeper ends at its next tick
    /// # sweeper.abort();
    /// # }
    /// ```
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let removed = inner.sweep(inner.clock.now());
                if removed > 0 {
                    tracing::debug!(removed, "coatcheck-memory swept expired sessions");
                }
            }
        })
    }
}

impl Inner {
    fn index<K: Hash + ?Sized>(&self, key: &K) -> usize {
        // Shard counts are powers of two.
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, HashMap<SessionId, Record>> {
        lock(&self.shards[self.index(id)])
    }

    fn user_shard(&self, user: &str) -> MutexGuard<'_, HashMap<String, HashSet<SessionId>>> {
        lock(&self.users[self.index(user)])
    }

    // Lock order: a record shard, then a user shard; never the other way round.

    fn create(&self, record: &Record) -> Result<(), StoreError> {
        let inner = self;
        let now = inner.clock.now();
        inner.reserve_slot(now);
        let mut shard = inner.shard(&record.id);
        match shard.entry(record.id.clone()) {
            Entry::Occupied(mut e) => {
                // The slot reserved above is not needed either way.
                inner.len.fetch_sub(1, Ordering::AcqRel);
                if e.get().is_live(now) {
                    return Err(StoreError::IdTaken);
                }
                // An expired record counts as absent: replace it.
                let old = e.insert(record.clone());
                if let Some(u) = &old.user_id {
                    inner.index_remove(u, &old.id);
                }
            }
            Entry::Vacant(e) => {
                e.insert(record.clone());
            }
        }
        if let Some(u) = &record.user_id {
            inner.index_add(u, &record.id);
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        self.inner.create(record)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let now = self.inner.clock.now();
        Ok(self
            .inner
            .shard(id)
            .get(id)
            .filter(|r| r.is_live(now))
            .cloned())
    }

    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut shard = inner.shard(&record.id);
        let stored = shard
            .get_mut(&record.id)
            .filter(|r| r.is_live(now))
            .ok_or(StoreError::NotFound)?;
        if stored.version != record.version {
            return Err(StoreError::Conflict);
        }
        let old_user = stored.user_id.take();
        stored.data.clone_from(&record.data);
        stored.expires_at = record.expires_at;
        stored.user_id.clone_from(&record.user_id);
        stored.device.clone_from(&record.device);
        stored.last_seen = record.last_seen;
        stored.version += 1;
        let version = stored.version;
        if old_user != record.user_id {
            if let Some(u) = &old_user {
                inner.index_remove(u, &record.id);
            }
            if let Some(u) = &record.user_id {
                inner.index_add(u, &record.id);
            }
        }
        Ok(version)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let now = self.inner.clock.now();
        Ok(
            match self.inner.shard(id).get_mut(id).filter(|r| r.is_live(now)) {
                Some(r) => {
                    r.expires_at = expires_at;
                    r.last_seen = now;
                    true
                }
                None => false,
            },
        )
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut shard = inner.shard(id);
        Ok(match shard.remove(id) {
            Some(r) => {
                inner.forget(&r);
                r.is_live(now)
            }
            None => false,
        })
    }

    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut shard = inner.shard(id);
        match shard.get(id).filter(|r| r.is_live(now)) {
            None => Err(StoreError::NotFound),
            Some(r) if r.version != version => Err(StoreError::Conflict),
            Some(_) => {
                if let Some(r) = shard.remove(id) {
                    inner.forget(&r);
                }
                Ok(())
            }
        }
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let ids = inner.user_ids(user_id);
        Ok(ids
            .iter()
            .filter_map(|id| {
                inner
                    .shard(id)
                    .get(id)
                    .filter(|r| r.is_live(now) && r.user_id.as_deref() == Some(user_id))
                    .map(SessionInfo::from)
            })
            .collect())
    }

    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut removed = 0;
        // Until one look at the index finds nothing left to remove: a session created for
        // this user while a pass ran (a rotation's new id) is removed by the next pass, so
        // when this returns no session of the user that existed during the call is live
        // (found by the history checker: a login rotating concurrently survived a single
        // pass over a snapshot of the index).
        //
        // The loop ends when a look at the index finds nothing but `except`: a pass that
        // removed nothing proves nothing, since a rotation may have replaced a listed
        // session by a new id after the look (review finding).
        loop {
            let ids: Vec<SessionId> = inner
                .user_ids(user_id)
                .into_iter()
                .filter(|id| Some(id) != except)
                .collect();
            if ids.is_empty() {
                return Ok(removed);
            }
            for id in &ids {
                let mut shard = inner.shard(id);
                let matches = shard
                    .get(id)
                    .is_some_and(|r| r.user_id.as_deref() == Some(user_id));
                if matches {
                    if let Some(r) = shard.remove(id) {
                        inner.forget(&r);
                        if r.is_live(now) {
                            removed += 1;
                        }
                    }
                } else {
                    // Gone or moved to another user meanwhile: not this user's any more.
                    drop(shard);
                    inner.index_remove(user_id, id);
                }
            }
        }
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        Ok(self.inner.sweep(self.inner.clock.now()))
    }

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        // Every record of that device: during a rotation the old and the new id share it.
        let mut removed = false;
        for id in inner.user_ids(user_id) {
            let mut shard = inner.shard(&id);
            let mine = shard.get(&id).is_some_and(|r| {
                r.user_id.as_deref() == Some(user_id)
                    && r.device
                        .as_ref()
                        .is_some_and(|d| d.handle.as_str() == handle)
            });
            if mine {
                if let Some(r) = shard.remove(&id) {
                    inner.forget(&r);
                    removed |= r.is_live(now);
                }
            }
        }
        Ok(removed)
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.inner.create_limited(record, limit)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_db_system("coatcheck.memory")
            .with_user_index(true)
            .with_devices(true)
            .with_session_limit(true)
    }
}
