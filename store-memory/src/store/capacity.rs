//! The capacity bound: sweeping expired records, and making room at capacity (expired
//! first, then anonymous records closest to expiry, signed-in ones last).

use super::*;

impl Inner {
    pub(super) fn sweep(&self, now: Timestamp) -> u64 {
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
    pub(super) fn reserve_slot(&self, now: Timestamp) {
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
    pub(super) fn make_room(&self, now: Timestamp) -> usize {
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
}
