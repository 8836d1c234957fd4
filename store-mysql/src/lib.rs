#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-mysql
//!
//! The MySQL and MariaDB [`SessionStore`] of coatcheck, on [`sqlx`] (a [`MySqlPool`]).
//! Tested against MariaDB 10.11; the SQL is what MySQL 8 accepts too (see the README for
//! where the two differ).
//!
//! - **One statement per operation** on the success path, each a prepared statement that
//!   sqlx caches per connection. `save` is a compare-and-set on `version` in one `UPDATE`;
//!   only when it matches no row does a second query tell `Conflict` from `NotFound`.
//! - **Instants are integers**: `created_at`, `expires_at`, `last_seen` are `BIGINT`
//!   milliseconds since the Unix epoch, compared with the store's [`Clock`] bound as a
//!   parameter — no `TIMESTAMP` (which ends in 2038 and converts through the connection's
//!   `time_zone`), no `NOW()`.
//! - **Bytes compared as bytes**: ids, user ids and device handles are `VARBINARY`, so
//!   matching never depends on a collation (`Alice` ≠ `alice`, trailing spaces count).
//! - **Schema**: one table with indexes on `expires_at` and `(user_id, expires_at)`, and a
//!   small lock table for the per-user session limit, created by [`MySqlStore::migrate`]
//!   (idempotent, safe when many instances start at once).
//! - **Cleanup**: [`SessionStore::delete_expired`] removes expired rows in bounded batches
//!   under READ COMMITTED (row locks only: live traffic never waits on a gap lock);
//!   [`MySqlStore::spawn_cleanup`] runs it periodically.
//! - **Express-compatible mode** ([`MySqlStoreBuilder::express`]): express-mysql-session's
//!   table, shared with an Express app, with a virtual principal column for "log out
//!   everywhere".
//! - **Failures**: deadlocks and lock-wait timeouts (the server rolled the statement back)
//!   are retried; an unreachable server is a [`StoreError::Backend`] after at most the
//!   pool's acquire timeout (3 s by default).
//!
//! ```no_run
//! use coatcheck::store::{Record, SessionId, SessionStore, Timestamp};
//! use coatcheck::mysql::MySqlStore;
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MySqlStore::builder()
//!     .table("sessions")
//!     .connect_lazy("mysql://app@localhost/app")?;
//! store.migrate().await?;
//! let _cleanup = store.spawn_cleanup(Duration::from_secs(300));
//!
//! let now = Timestamp::now();
//! let record = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
//! store.create(&record).await?;
//! assert_eq!(store.load(&record.id).await?, Some(record));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The skeleton every coatcheck store crate shares: `builder` (options and terminals),
// `error` (`BuildError`), `store` (the `SessionStore` impl), `layout/` (the statements).
mod builder;
mod error;
mod layout;
mod store;

use std::time::Duration;

#[cfg(doc)]
use coatcheck_core::{Clock, SessionStore, StoreError};
pub use sqlx::MySqlPool;

pub use crate::builder::MySqlStoreBuilder;
pub use crate::error::{BuildError, MigrateError};
pub use crate::store::{MySqlStore, REPORT_QUEUE};

/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "coatcheck_sessions";
/// The table used in express-compatible mode when none is configured: express-mysql-session's.
pub const EXPRESS_TABLE: &str = "sessions";
/// How long an operation waits for a pool connection before failing with `Backend`
/// (pools built by [`MySqlStoreBuilder::connect_lazy`]).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pool size of pools built by [`MySqlStoreBuilder::connect_lazy`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Rows removed per `DELETE` statement by [`SessionStore::delete_expired`].
pub const DEFAULT_CLEANUP_BATCH: u32 = 1_000;
/// The longest user id the table holds, in bytes; a longer one is an
/// [`StoreError::Encode`] before anything is sent.
pub const MAX_USER_ID_LEN: usize = layout::native::MAX_USER_ID_LEN;
