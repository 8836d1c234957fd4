//! [`MemoryStoreBuilder`]: capacity, shards, clock.

use std::sync::Arc;

use coatcheck_core::{Clock, SystemClock};

use crate::store::MemoryStore;
use crate::{DEFAULT_CAPACITY, DEFAULT_SHARDS};

/// Builder for a [`MemoryStore`].
///
/// ```
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
        MemoryStore::from_parts(self.capacity, self.shards, self.clock)
    }
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            capacity: DEFAULT_CAPACITY,
            shards: DEFAULT_SHARDS,
            clock: Arc::new(SystemClock),
        }
    }
}
