#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-memory
//!
//! The in-process [`SessionStore`]: the embedded default, for single-instance apps, tests
//! and development.
//!
//! - **Concurrent without a global lock**: records live in shards, each behind its own
//!   short-held mutex (never across an `.await`); the user index is sharded the same way.
//! - **Bounded**: at [`MemoryStoreBuilder::capacity`] a create first drops expired
//!   records, then evicts anonymous records (no user id) closest to expiry, and signed-in
//!   ones only when no anonymous record is left (a batch of about 1% of capacity at a time,
//!   so the scan is amortised). A flood of new anonymous sessions therefore cannot push a
//!   signed-in user out. Evictions are counted ([`MemoryStore::evictions`]) and traced.
//! - **Expiring**: an expired record is never returned, sweep or no sweep;
//!   [`MemoryStore::spawn_sweeper`] removes them in the background so memory does not grow
//!   with dead sessions.
//!
//! ```
//! # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod memory { pub use coatcheck_memory::*; } }
//! use coatcheck::core::{Record, SessionId, SessionStore, Timestamp};
//! use coatcheck::memory::MemoryStore;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::builder().capacity(100_000).build();
//! let now = Timestamp::now();
//! let record = Record::new(SessionId::generate(), now, now + Duration::from_secs(60));
//! store.create(&record).await.unwrap();
//! assert_eq!(store.load(&record.id).await.unwrap(), Some(record));
//! # }
//! ```
#![warn(missing_docs)]

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, LimitPolicy, Record, SessionId, SessionInfo, SessionLimit, SessionStore,
    StoreError, SystemClock, Timestamp,
};

const DEFAULT_SHARDS: usize = 64;
const DEFAULT_CAPACITY: usize = 1_000_000;

type Shard = Mutex<HashMap<SessionId, Record>>;
type UserShard = Mutex<HashMap<String, HashSet<SessionId>>>;

/// Builder for a [`MemoryStore`].
///
/// ```
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod memory { pub use coatcheck_memory::*; } }
/// use coatcheck::core::ManualClock;
/// use coatcheck::memory::MemoryStore;
///
/// let clock = ManualClock::new(coatcheck::core::Timestamp::from_millis(0));
/// let store = MemoryStore::builder().capacity(10).shards(4).clock(clock).build();
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Debug)]
#[must_use]
pub struct MemoryStoreBuilder {
    capacity: usize,
    shards: usize,
    clock: Arc<dyn Clock>,
}

impl MemoryStoreBuilder {
    /// The most records kept (default 1,000,000). At least 1.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How many shards (default 64; rounded up to a power of two).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1).next_power_of_two();
        self
    }

    /// The clock "now" is read from (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..self.shards).map(|_| Mutex::default()).collect(),
                users: (0..self.shards).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                len: AtomicUsize::new(0),
                evictions: AtomicU64::new(0),
                capacity: self.capacity,
                clock: self.clock,
                limit: Mutex::new(()),
            }),
        }
    }
}

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
        MemoryStoreBuilder {
            capacity: DEFAULT_CAPACITY,
            shards: DEFAULT_SHARDS,
            clock: Arc::new(SystemClock),
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod memory { pub use coatcheck_memory::*; } }
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
    fn index_add(&self, user: &str, id: &SessionId) {
        self.user_shard(user)
            .entry(user.to_owned())
            .or_default()
            .insert(id.clone());
    }

    fn index_remove(&self, user: &str, id: &SessionId) {
        let mut shard = self.user_shard(user);
        if let Some(set) = shard.get_mut(user) {
            set.remove(id);
            if set.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// The ids the index holds for `user` (possibly stale: callers check each record).
    fn user_ids(&self, user: &str) -> Vec<SessionId> {
        self.user_shard(user)
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes a record already taken out of its shard from the index and the count.
    fn forget(&self, record: &Record) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        if let Some(u) = &record.user_id {
            self.index_remove(u, &record.id);
        }
    }

    fn sweep(&self, now: Timestamp) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let dead: Vec<SessionId> = map
                .values()
                .filter(|r| !r.is_live(now))
                .map(|r| r.id.clone())
                .collect();
            for id in dead {
                if let Some(r) = map.remove(&id) {
                    self.forget(&r);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Reserves room for one more record in `len`, evicting when the store is full. The
    /// check and the increment are one atomic step, so concurrent creates can never take the
    /// store past its capacity (a check-then-insert would: found by the flood test).
    fn reserve_slot(&self, now: Timestamp) {
        let mut attempts = 0u32;
        loop {
            let len = self.len.load(Ordering::Acquire);
            if len < self.capacity {
                if self
                    .len
                    .compare_exchange_weak(len, len + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if self.make_room(now) == 0 {
                // Every counted slot is a reservation another create has not inserted yet:
                // let it finish, then evict it like any other record.
                attempts += 1;
                if attempts.is_multiple_of(64) {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
        }
    }

    /// Makes room: expired records first, then anonymous ones soonest to expire, then
    /// signed-in ones soonest to expire. Returns how many records it removed.
    fn make_room(&self, now: Timestamp) -> usize {
        let batch = (self.capacity / 100).max(1);
        // One pass over every shard: expired records are removed on the way, and the first
        // `batch` live records in (signed in, expiry) order, anonymous first, are kept in a
        // max-heap of that size.
        let mut swept = 0usize;
        let mut heap: BinaryHeap<(bool, Timestamp, SessionId)> =
            BinaryHeap::with_capacity(batch + 1);
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let mut dead = Vec::new();
            for r in map.values() {
                if !r.is_live(now) {
                    dead.push(r.id.clone());
                    continue;
                }
                let key = (r.user_id.is_some(), r.expires_at);
                if heap.len() < batch {
                    heap.push((key.0, key.1, r.id.clone()));
                } else if heap.peek().is_some_and(|(u, e, _)| key < (*u, *e)) {
                    heap.pop();
                    heap.push((key.0, key.1, r.id.clone()));
                }
            }
            for id in dead {
                if let Some(r) = map.remove(&id) {
                    self.forget(&r);
                    swept += 1;
                }
            }
        }
        if swept > 0 {
            // Expired records made the room; no live one is evicted for it.
            return swept;
        }
        let mut evicted = 0u64;
        for (_, _, id) in heap {
            let removed = self.shard(&id).remove(&id);
            if let Some(r) = removed {
                self.forget(&r);
                evicted += 1;
            }
        }
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                capacity = self.capacity,
                "coatcheck-memory at capacity: evicted the sessions closest to expiry, anonymous first"
            );
        }
        evicted as usize
    }
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

    /// The live sessions of `user` as (last seen, id), least recently seen first.
    fn live_of(&self, user: &str, now: Timestamp) -> Vec<(Timestamp, SessionId)> {
        let mut live: Vec<(Timestamp, SessionId)> = self
            .user_ids(user)
            .into_iter()
            .filter_map(|id| {
                self.shard(&id)
                    .get(&id)
                    .filter(|r| r.is_live(now) && r.user_id.as_deref() == Some(user))
                    .map(|r| (r.last_seen, id.clone()))
            })
            .collect();
        live.sort();
        live
    }

    fn create_limited(&self, record: &Record, limit: SessionLimit) -> Result<u64, StoreError> {
        let Some(user) = record.user_id.as_deref() else {
            return self.create(record).map(|()| 0);
        };
        let _serial = lock(&self.limit);
        let now = self.clock.now();
        let live = self.live_of(user, now);
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = limit.max.max(1) as usize;
        let mut evicted = 0;
        if live.len() >= max {
            if limit.policy == LimitPolicy::Refuse {
                return Err(StoreError::LimitReached);
            }
            for (_, id) in &live[..=live.len() - max] {
                let removed = self.shard(id).remove(id);
                if let Some(r) = removed {
                    self.forget(&r);
                    evicted += 1;
                }
            }
        }
        self.create(record)?;
        Ok(evicted)
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

#[cfg(test)]
mod tests {
    use super::*;
    use coatcheck_core::ManualClock;

    fn rec(now: Timestamp, ttl_ms: u64) -> Record {
        Record::new(
            SessionId::generate(),
            now,
            now + Duration::from_millis(ttl_ms),
        )
    }

    #[tokio::test]
    async fn capacity_evicts_expired_first_then_soonest_to_expire() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let store = MemoryStore::builder()
            .capacity(4)
            .clock(clock.clone())
            .build();
        let now = clock.now();
        let dying = rec(now, 10);
        let soon = rec(now, 1_000);
        let later: Vec<Record> = (0..2).map(|i| rec(now, 10_000 + i)).collect();
        for r in [&dying, &soon, &later[0], &later[1]] {
            store.create(r).await.unwrap();
        }
        clock.advance(Duration::from_millis(20)); // `dying` is now expired
        let a = rec(clock.now(), 50_000);
        store.create(&a).await.unwrap();
        assert_eq!(store.evictions(), 0, "the expired one made room");
        assert_eq!(store.len(), 4);
        let b = rec(clock.now(), 50_000);
        store.create(&b).await.unwrap();
        assert_eq!(store.evictions(), 1);
        assert!(
            store.load(&soon.id).await.unwrap().is_none(),
            "soonest to expire went"
        );
        for r in [&later[0], &later[1], &a, &b] {
            assert!(store.load(&r.id).await.unwrap().is_some());
        }
        assert_eq!(store.len(), 4);
    }

    #[tokio::test]
    async fn anonymous_sessions_are_evicted_before_signed_in_ones() {
        let store = MemoryStore::builder().capacity(3).build();
        let now = Timestamp::now();
        let mut user = rec(now, 1_000);
        user.user_id = Some("u".into());
        store.create(&user).await.unwrap();
        let anon = [rec(now, 60_000), rec(now, 90_000)];
        for r in &anon {
            store.create(r).await.unwrap();
        }
        store.create(&rec(now, 120_000)).await.unwrap();
        assert_eq!(store.evictions(), 1);
        assert!(
            store.load(&user.id).await.unwrap().is_some(),
            "signed in, kept although it expires soonest"
        );
        assert!(store.load(&anon[0].id).await.unwrap().is_none());
        assert!(store.load(&anon[1].id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn eviction_keeps_the_user_index_consistent() {
        let store = MemoryStore::builder().capacity(2).build();
        let now = Timestamp::now();
        let mut first = rec(now, 1_000);
        first.user_id = Some("u".into());
        store.create(&first).await.unwrap();
        let mut second = rec(now, 60_000);
        second.user_id = Some("v".into());
        store.create(&second).await.unwrap();
        store.create(&rec(now, 60_000)).await.unwrap();
        assert!(store.list_for_user("u").await.unwrap().is_empty());
        assert_eq!(store.list_for_user("v").await.unwrap().len(), 1);
        assert_eq!(store.inner.user_shard("u").get("u").map(|s| s.len()), None);
    }

    #[tokio::test]
    async fn expired_never_returned_before_sweep_and_sweep_frees_memory() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        for _ in 0..100 {
            store.create(&rec(clock.now(), 100)).await.unwrap();
        }
        let keep = rec(clock.now(), 10_000);
        store.create(&keep).await.unwrap();
        clock.advance(Duration::from_millis(100));
        assert_eq!(store.len(), 101);
        assert!(store.load(&keep.id).await.unwrap().is_some());
        assert_eq!(store.delete_expired().await.unwrap(), 100);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn background_sweeper_runs_and_stops_with_the_store() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        store.create(&rec(clock.now(), 10)).await.unwrap();
        let handle = store.spawn_sweeper(Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.len(), 0);
        drop(store);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(handle.is_finished());
    }
}
