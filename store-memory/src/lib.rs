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

// The skeleton every coatcheck store crate shares: `builder` (options and terminal), `store`
// (the `SessionStore` impl, its capacity bound and user index in `store/`).
mod builder;
mod store;

#[cfg(doc)]
use coatcheck_core::SessionStore;

pub use crate::builder::MemoryStoreBuilder;
pub use crate::store::MemoryStore;

/// Shards of a store built with the defaults.
pub(crate) const DEFAULT_SHARDS: usize = 64;
/// Capacity of a store built with the defaults.
pub(crate) const DEFAULT_CAPACITY: usize = 1_000_000;
