//! The user index (sharded like the records) and the per-user session limit.

use super::*;

impl Inner {
    pub(super) fn index_add(&self, user: &str, id: &SessionId) {
        self.user_shard(user)
            .entry(user.to_owned())
            .or_default()
            .insert(id.clone());
    }

    pub(super) fn index_remove(&self, user: &str, id: &SessionId) {
        let mut shard = self.user_shard(user);
        if let Some(set) = shard.get_mut(user) {
            set.remove(id);
            if set.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// The ids the index holds for `user` (possibly stale: callers check each record).
    pub(super) fn user_ids(&self, user: &str) -> Vec<SessionId> {
        self.user_shard(user)
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes a record already taken out of its shard from the index and the count.
    pub(super) fn forget(&self, record: &Record) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        if let Some(u) = &record.user_id {
            self.index_remove(u, &record.id);
        }
    }

    /// The live sessions of `user` as (last seen, id), least recently seen first.
    pub(super) fn live_of(&self, user: &str, now: Timestamp) -> Vec<(Timestamp, SessionId)> {
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

    pub(super) fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let Some(user) = record.user_id.as_deref() else {
            return self.create(record).map(|()| 0);
        };
        let _serial = lock(&self.limit);
        let now = self.clock.now();
        let live = self.live_of(user, now);
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = limit.max.max(1) as usize;
        let mut evicted = 0;
        // A create that cannot happen (its id is a live session's) revokes nobody.
        if self
            .shard(&record.id)
            .get(&record.id)
            .is_some_and(|r| r.is_live(now))
        {
            return Err(StoreError::IdTaken);
        }
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
