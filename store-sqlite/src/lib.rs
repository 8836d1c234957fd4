#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-sqlite
//!
//! The SQLite [`SessionStore`] of coatcheck, on [`sqlx`] with SQLite compiled in: the
//! persistent embedded store. Nothing to run, a file path, sessions that survive a restart.
//!
//! - **No "database is locked".** The database runs in WAL mode (readers never wait for the
//!   writer), every write is one autocommit statement or a `BEGIN IMMEDIATE` transaction
//!   (so SQLite's busy timeout applies to it: the case where a deferred transaction cannot
//!   upgrade its read lock, the usual source of the error, never arises), and the writes of
//!   one store go through one connection of their own, in turn, instead of polling for the
//!   lock against each other. Several processes on one file wait for each other up to the
//!   busy timeout (5 s by default).
//! - **One statement per operation** on the success path. `create` is one `INSERT … ON
//!   CONFLICT(id) DO UPDATE … WHERE expires_at <= ?` (an expired id is reused, a live one is
//!   `IdTaken`); `save` a compare-and-set on `version` in one `UPDATE`.
//! - **Instants are integers**: milliseconds since the Unix epoch, compared with the store's
//!   [`Clock`] bound as a parameter, never SQLite's own clock.
//! - **Schema**: one `STRICT` table with indexes on `expires_at` and `(user_id, expires_at)`,
//!   created by [`SqliteStore::migrate`] (idempotent, safe when several processes start at
//!   once), which also checks that an existing table has the columns the store needs.
//! - **Cleanup**: [`SessionStore::delete_expired`] removes expired rows in bounded batches,
//!   each its own short write; [`SqliteStore::spawn_cleanup`] runs it periodically.
//!
//! ```no_run
//! use coatcheck::store::{Record, SessionId, SessionStore, Timestamp};
//! use coatcheck::sqlite::SqliteStore;
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::builder().connect_lazy("sqlite://sessions.db?mode=rwc")?;
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
use coatcheck_core::{Clock, SessionStore};
pub use sqlx::SqlitePool;

pub use crate::builder::SqliteStoreBuilder;
pub use crate::error::{BuildError, MigrateError};
pub use crate::store::{SqliteStore, REPORT_QUEUE};

/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "coatcheck_sessions";
/// The table used in express-compatible mode when none is configured:
/// better-sqlite3-session-store's.
pub const EXPRESS_TABLE: &str = "sessions";
/// How long an operation waits for a pool connection before failing with `Backend`
/// (pools built by [`SqliteStoreBuilder::connect_lazy`]).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a write waits for another process's write lock on the file before failing
/// (SQLite's busy timeout; pools built by [`SqliteStoreBuilder::connect_lazy`]).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reading connections of pools built by [`SqliteStoreBuilder::connect_lazy`] (writes have
/// one connection of their own).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;
/// Rows removed per `DELETE` statement by [`SessionStore::delete_expired`].
///
/// SQLite has one writer: a live save waits for the batch in progress, and each batch is
/// a commit (an `fsync`). Measured by the benchmark (`--part scale`, 10^4 to 10^6 expired
/// rows beside live traffic at concurrency 16): batches of 1,000 removed about 170k rows/s
/// and let the live traffic's p99 reach 2× its p99 without cleanup; batches of 250 remove
/// about 50k rows/s (10^6 rows in about 20 s) and keep it within 1.2–1.5×; 100 gain
/// little p99 more for less than half the speed.
pub const DEFAULT_CLEANUP_BATCH: u32 = 250;
