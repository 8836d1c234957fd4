#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-postgres
//!
//! The PostgreSQL [`SessionStore`] of coatcheck, on [`sqlx`] (a [`PgPool`]).
//!
//! - **One statement per operation** on the success path, each a prepared statement that
//!   sqlx caches per connection. `save` is a compare-and-set on `version` in one `UPDATE`;
//!   only when it matches no row does a second query tell `Conflict` from `NotFound`.
//! - **The application's clock**: "now" comes from the store's [`Clock`] and is bound as a
//!   parameter; the database's `now()` is never used. Timestamps travel in Postgres' binary
//!   `timestamptz` format (exact to the microsecond, independent of the connection's
//!   `TimeZone`).
//! - **Schema**: one table, schema and name configurable and validated as identifiers
//!   (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`, used double-quoted, so case-sensitive), created by
//!   [`PostgresStore::migrate`] — idempotent and safe when many instances start at once.
//! - **Cleanup**: [`SessionStore::delete_expired`] removes expired rows in bounded batches;
//!   [`PostgresStore::spawn_cleanup`] runs it periodically.
//! - **Failures**: an unreachable server is a [`StoreError::Backend`] after at most the
//!   pool's acquire timeout (3 s by default). Connections the server terminated (restart,
//!   `pg_terminate_backend`, failover) are dropped and the statement retried on another
//!   connection, so the same store recovers by itself (see [`PostgresStoreBuilder::build`]).
//!
//! ```no_run
//! use coatcheck::core::{Record, SessionId, SessionStore, Timestamp};
//! use coatcheck::postgres::PostgresStore;
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::builder()
//!     .schema("app")
//!     .table("sessions")
//!     .connect_lazy("postgres://app@localhost/app")?;
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
// `error` (`BuildError`), `store` (the `SessionStore` impl), `layout/` (native and express
// statements).
mod builder;
mod error;
mod layout;
mod store;
mod ts;

use std::time::Duration;

#[cfg(doc)]
use coatcheck_core::{Clock, SessionStore, StoreError};
pub use sqlx::PgPool;

pub use crate::builder::PostgresStoreBuilder;
#[allow(deprecated)]
pub use crate::error::ConfigError;
pub use crate::error::{BuildError, MigrateError};
pub use crate::store::{PostgresStore, REPORT_QUEUE};

/// In express-compatible mode, sets the connection's `TimeZone` to the one an Express app's
/// node-postgres connection gets from the server — the role's or database's default
/// (`ALTER ROLE/DATABASE … SET timezone`), else the server's (read from `log_timezone`,
/// which initdb sets to the same zone as `timezone`) — instead of the UTC sqlx asks for.
///
/// connect-pg-simple's `expire` column has no time zone: Node writes `to_timestamp(…)`
/// converted in *its* connection's zone, so Rust must compare in the same one, or a
/// non-UTC server makes Node's sessions look expired to Rust (missed by `list_for_user`,
/// deleted live by `delete_expired`). [`PostgresStoreBuilder::connect_lazy`] runs it on
/// every new connection; with a pool of your own ([`PostgresStoreBuilder::build`]) run it
/// in the pool's `after_connect`. When `postgresql.conf` sets `timezone` and
/// `log_timezone` to different zones, set `TimeZone` yourself to Node's.
///
/// ```no_run
/// use sqlx::Executor as _;
/// # async fn f() -> Result<(), sqlx::Error> {
/// let pool = sqlx::postgres::PgPoolOptions::new()
///     .after_connect(|conn, _| Box::pin(async move {
///         conn.execute(coatcheck::postgres::EXPRESS_TIME_ZONE_SQL).await.map(drop)
///     }))
///     .connect("postgres://app@localhost/app")
///     .await?;
/// # drop(pool); Ok(()) }
/// ```
pub const EXPRESS_TIME_ZONE_SQL: &str = "SELECT set_config('TimeZone', COALESCE(\
    (SELECT substr(c, strpos(c, '=') + 1) FROM pg_db_role_setting s, unnest(s.setconfig) AS c \
     WHERE lower(split_part(c, '=', 1)) = 'timezone' \
       AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
       AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user)) \
     ORDER BY (s.setrole <> 0) DESC, (s.setdatabase <> 0) DESC LIMIT 1), \
    current_setting('log_timezone')), false)";
/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "public";
/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "coatcheck_sessions";
/// The default table in express-compatible mode: connect-pg-simple's `session`.
pub const EXPRESS_TABLE: &str = "session";
/// How long an operation waits for a pool connection before failing with `Backend`
/// (pools built by [`PostgresStoreBuilder::connect_lazy`]).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pool size of pools built by [`PostgresStoreBuilder::connect_lazy`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// `application_name` of pools built by [`PostgresStoreBuilder::connect_lazy`].
pub const DEFAULT_APPLICATION_NAME: &str = "coatcheck";
/// Rows removed per `DELETE` statement by [`SessionStore::delete_expired`].
pub const DEFAULT_CLEANUP_BATCH: u32 = 1_000;

/// How session writes reach the disk; [`PostgresStoreBuilder::durability`].
///
/// ```
/// use coatcheck::postgres::{Durability, PostgresStore};
/// let b = PostgresStore::builder().durability(Durability::RelaxedCommit);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every acknowledged write is on disk (the server's `synchronous_commit`, `on` by
    /// default): nothing acknowledged is ever lost. The default.
    #[default]
    Full,
    /// `create`, `save`, `touch` and a `create_limited` that evicts nothing commit with
    /// `synchronous_commit = off`, set by the statement itself for its own transaction (`set_config(…, true)`; no other statement
    /// on the connection is affected, so a pool shared with the application is fine). The
    /// server acknowledges before its WAL reaches the disk: a crash of the database server
    /// (not of the application) can lose the session writes of its last moments — at most
    /// three times `wal_writer_delay` (200 ms by default: 600 ms), measured by
    /// `coatcheck/tests/faults.rs`. The database stays consistent: a lost write is as if it
    /// had not happened (an older version of the session, never a torn one).
    ///
    /// Revocations stay fully durable: `delete`, `delete_version`, `delete_for_user`,
    /// `delete_device` and `delete_expired` never use it, and a `create_limited` that evicts
    /// sessions (its evictions and its insert are one transaction) commits with the server's
    /// `synchronous_commit` like them, so a crash cannot bring back a session that was logged
    /// out or evicted by the session limit.
    RelaxedCommit,
}
