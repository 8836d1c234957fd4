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
//! # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
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

mod sql;
mod ts;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, Codec, DecodeError, EncodeError, ExpressFormat, NativeCodec, Record,
    SessionId, SessionInfo, SessionStore, StoreError, SystemClock, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::Row as _;

pub use sqlx::PgPool;

use crate::sql::{Layout, Statements};
use crate::ts::PgTs;

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
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
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

/// Building a [`PostgresStore`] failed. Nothing was sent to the server.
///
/// ```
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
/// use coatcheck::postgres::{ConfigError, PostgresStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = PostgresStore::builder()
///     .table("sessions\"; DROP TABLE users; --")
///     .connect_lazy("postgres://localhost/app")
///     .unwrap_err();
/// assert!(matches!(err, ConfigError::InvalidIdentifier { what: "table", .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A schema or table name is not a plain identifier.
    #[error(
        "invalid {what} name {name:?}: use 1 to 63 characters of A-Z, a-z, 0-9 and '_', \
         not starting with a digit"
    )]
    InvalidIdentifier {
        /// `"schema"` or `"table"`.
        what: &'static str,
        /// The refused name.
        name: String,
    },
    /// The database URL could not be parsed.
    #[error("invalid Postgres URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// A cleanup batch size of zero.
    #[error("the cleanup batch size must be at least 1")]
    ZeroCleanupBatch,
    /// A pool size of zero.
    #[error("the pool needs at least one connection")]
    ZeroConnections,
    /// [`PostgresStoreBuilder::connect_lazy`] was called outside a Tokio runtime (sqlx's
    /// pool spawns its maintenance task there).
    #[error("connect_lazy must be called from within a Tokio runtime")]
    NoRuntime,
}

/// [`PostgresStore::migrate`] failed; the source is the database's error.
///
/// ```no_run
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
/// # async fn f(store: coatcheck::postgres::PostgresStore) {
/// if let Err(e) = store.migrate().await {
///     eprintln!("{e}: {:?}", std::error::Error::source(&e));
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("migrating the session table failed: {0}")]
pub struct MigrateError(#[source] pub sqlx::Error);

/// Builder for a [`PostgresStore`]; from [`PostgresStore::builder`].
///
/// ```no_run
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
/// use coatcheck::core::{JsonCodec, ManualClock, Timestamp};
/// use coatcheck::postgres::PostgresStore;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::ConfigError> {
/// let store = PostgresStore::builder()
///     .schema("auth")
///     .table("web_sessions")
///     .codec(JsonCodec)
///     .clock(ManualClock::new(Timestamp::from_millis(0)))
///     .acquire_timeout(Duration::from_secs(1))
///     .max_connections(20)
///     .application_name("my-app")
///     .cleanup_batch_size(500)
///     .connect_lazy("postgres://app@localhost/app")?;
/// # drop(store); Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct PostgresStoreBuilder {
    schema: String,
    table: Option<String>,
    express: Option<ExpressFormat>,
    codec: Arc<dyn Codec>,
    clock: Arc<dyn Clock>,
    acquire_timeout: Duration,
    max_connections: u32,
    application_name: String,
    cleanup_batch: u32,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        PostgresStoreBuilder {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: None,
            express: None,
            codec: Arc::new(NativeCodec),
            clock: Arc::new(SystemClock),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
        }
    }
}

impl PostgresStoreBuilder {
    /// The schema holding the table ([`DEFAULT_SCHEMA`] by default). Validated as an
    /// identifier when the store is built; created by [`PostgresStore::migrate`] if absent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table name ([`DEFAULT_TABLE`] by default; [`EXPRESS_TABLE`] in express mode).
    /// Validated as an identifier when the
    /// store is built; used double-quoted, so `Sessions` and `sessions` are two tables.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// Express-compatible mode: sessions live in connect-pg-simple's table (default
    /// `session`: `sid varchar`, `sess json`, `expire timestamp(6)`), written and read with
    /// its SQL semantics, so an Express app using connect-pg-simple on the same table shares
    /// them. `migrate()` creates that table as connect-pg-simple does, plus an index on the
    /// principal (`sess ->> 'userId'`), which gives this mode a user index: logging a user
    /// out everywhere reaches the sessions Node logged in too. The principal key must be an
    /// identifier (`^[A-Za-z_][A-Za-z0-9_]*$`).
    ///
    /// `expire` has no time zone: it is written and compared in the connection's `TimeZone`,
    /// as connect-pg-simple does; keep the server's default (UTC is the sane choice) or set
    /// the same `TimeZone` on both apps' connections. Express keeps no creation time and no
    /// version: `created_at` reads as the Unix epoch, versions are content hashes of `sess`
    /// (Rust saves stay compare-and-set; a Node write is last-write-wins).
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), coatcheck::postgres::ConfigError> {
    /// let store = coatcheck::postgres::PostgresStore::builder()
    ///     .express(ExpressFormat::new())
    ///     .connect_lazy("postgres://app@localhost/app")?;
    /// assert_eq!(store.qualified_table_name(), "public.session");
    /// assert!(store.capabilities().user_index);
    /// # Ok(()) }
    /// ```
    pub fn express(mut self, format: ExpressFormat) -> Self {
        self.express = Some(format);
        self
    }

    /// The codec of the `data` column; default [`NativeCodec`]. Ignored in express mode.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// let b = coatcheck::postgres::PostgresStore::builder().codec(coatcheck::core::JsonCodec);
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Where "now" comes from ([`SystemClock`] by default). Every statement compares
    /// `expires_at` against this clock's time, bound as a parameter.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an operation waits for a connection before it fails with
    /// [`StoreError::Backend`] ([`DEFAULT_ACQUIRE_TIMEOUT`]). Only for
    /// [`connect_lazy`](Self::connect_lazy); a pool given to [`build`](Self::build) keeps its own.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Pool size ([`DEFAULT_MAX_CONNECTIONS`]). Only for [`connect_lazy`](Self::connect_lazy).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// The `application_name` the pool's connections report in `pg_stat_activity`
    /// ([`DEFAULT_APPLICATION_NAME`]). Only for [`connect_lazy`](Self::connect_lazy).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Rows removed per `DELETE` by [`SessionStore::delete_expired`]
    /// ([`DEFAULT_CLEANUP_BATCH`]); smaller batches hold row locks for less time.
    pub fn cleanup_batch_size(mut self, rows: u32) -> Self {
        self.cleanup_batch = rows;
        self
    }

    /// A store on an existing pool. No I/O.
    ///
    /// For the store to recover by itself from connections the server terminated, it
    /// retries a statement whose connection the server reported as terminated (SQLSTATE
    /// `57P01`, `57P02`, `57P03`: the statement did not run) and, for read-only statements,
    /// one lost to an I/O error, up to `max_connections + 1` times and only while the pool's
    /// acquire timeout has not passed; sqlx discards each dead connection as it fails. This keeps sqlx's `test_before_acquire` ping (one more round
    /// trip per operation) unnecessary: pools built by
    /// [`connect_lazy`](Self::connect_lazy) turn it off.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// use coatcheck::postgres::PostgresStore;
    /// use sqlx::postgres::PgPoolOptions;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = PgPoolOptions::new()
    ///     .max_connections(5)
    ///     .connect("postgres://app@localhost/app")
    ///     .await?;
    /// let store = PostgresStore::builder().table("sessions").build(pool)?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, ConfigError> {
        let table = match (&self.table, &self.express) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) => EXPRESS_TABLE.to_owned(),
            (None, None) => DEFAULT_TABLE.to_owned(),
        };
        sql::validate_ident("schema", &self.schema)?;
        sql::validate_ident("table", &table)?;
        let layout = match &self.express {
            None => Layout::Native,
            Some(f) => {
                if let Some(k) = &f.user_key {
                    sql::validate_ident("express user key", k)?;
                }
                Layout::Express {
                    user_key: f.user_key.clone(),
                }
            }
        };
        if self.cleanup_batch == 0 {
            return Err(ConfigError::ZeroCleanupBatch);
        }
        let attempts = pool.options().get_max_connections().saturating_add(1);
        let retry_window = pool.options().get_acquire_timeout();
        let statements = Statements::new(layout, &self.schema, &table);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql: statements,
                codec: self.codec,
                express: self.express,
                clock: self.clock,
                cleanup_batch: i64::from(self.cleanup_batch),
                attempts,
                retry_window,
                qualified_name: format!("{}.{}", self.schema, table),
            }),
        })
    }

    /// A store on a new pool for `url` (e.g. `postgres://user@host:5432/db`). Connects
    /// lazily: nothing is sent until the first operation, so this succeeds while the server
    /// is down. Must be called within a Tokio runtime.
    ///
    /// The pool has [`max_connections`](Self::max_connections) connections, waits at most
    /// [`acquire_timeout`](Self::acquire_timeout) for one, reports
    /// [`application_name`](Self::application_name), and skips the ping-before-acquire
    /// (see [`build`](Self::build) for how terminated connections are handled).
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::ConfigError> {
    /// let store = coatcheck::postgres::PostgresStore::builder()
    ///     .connect_lazy("postgres://app@localhost/app")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, ConfigError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroConnections);
        }
        // Validate before building a pool that would only be thrown away.
        sql::validate_ident("schema", &self.schema)?;
        if let Some(table) = &self.table {
            sql::validate_ident("table", table)?;
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(ConfigError::InvalidUrl)?
            .application_name(&self.application_name);
        let mut pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false);
        if self.express.is_some() {
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    conn.execute(EXPRESS_TIME_ZONE_SQL).await.map(drop)
                })
            });
        }
        let pool = pool.connect_lazy_with(options);
        self.build(pool)
    }
}

/// A session store in one PostgreSQL table. Cheap to clone (clones share the pool).
///
/// See the [crate docs](crate) for an overview and the crate's README for the exact SQL of
/// each operation.
///
/// ```no_run
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
/// use coatcheck::core::SessionStore;
/// use coatcheck::postgres::PostgresStore;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::builder().connect_lazy("postgres://app@localhost/app")?;
/// store.migrate().await?;
/// for s in store.list_for_user("alice").await? {
///     println!("session created {:?}, expires {:?}", s.created_at, s.expires_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    sql: Statements,
    codec: Arc<dyn Codec>,
    /// Express-compatible mode: the session is express-session's JSON in `sess`.
    express: Option<ExpressFormat>,
    clock: Arc<dyn Clock>,
    cleanup_batch: i64,
    /// Attempts per statement when connections turn out to be terminated.
    attempts: u32,
    /// No retry starts later than this after the first attempt (the pool's acquire timeout).
    retry_window: Duration,
    /// `schema.table`, for logs.
    qualified_name: String,
}

/// Whether a statement may be re-sent after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only when the server said the session was terminated (the statement did not run).
    IfNotRun,
    /// Also after an I/O error: the statement reads only.
    ReadOnly,
}

/// SQLSTATEs by which the server says it ended the session: `admin_shutdown` (including
/// `pg_terminate_backend`), `crash_shutdown`, `cannot_connect_now`.
const TERMINATED: [&str; 3] = ["57P01", "57P02", "57P03"];

/// `serialization_failure` (40001) somewhere in a store error's sources.
fn is_serialization_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>() {
            if db.code().as_deref() == Some("40001") {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn connection_lost(e: &sqlx::Error, retry: Retry) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| TERMINATED.contains(&&*c)),
        sqlx::Error::Io(io) => {
            retry == Retry::ReadOnly
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                )
        }
        _ => false,
    }
}

/// sqlx errors to store errors: a value that cannot be read from its column is `Decode`,
/// everything else `Backend` with the source kept.
fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Decode(
            DecodeError::with_source("unreadable column in session row", e),
        ),
        e => StoreError::backend(e),
    }
}

impl PostgresStore {
    /// A builder with the defaults: table [`DEFAULT_TABLE`] in schema [`DEFAULT_SCHEMA`],
    /// [`NativeCodec`], [`SystemClock`].
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::ConfigError> {
    /// let store = coatcheck::postgres::PostgresStore::builder()
    ///     .connect_lazy("postgres://app@localhost/app")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// The pool the store runs on.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # async fn f(store: coatcheck::postgres::PostgresStore) -> Result<(), sqlx::Error> {
    /// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(store.pool()).await?;
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// `schema.table`, unquoted.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # async fn f(store: coatcheck::postgres::PostgresStore) {
    /// assert_eq!(store.qualified_table_name(), "public.coatcheck_sessions");
    /// # }
    /// ```
    pub fn qualified_table_name(&self) -> &str {
        &self.inner.qualified_name
    }

    /// Creates the schema (if absent), the table and its indexes, idempotently.
    ///
    /// One transaction (one round trip) holding a transaction-scoped advisory lock
    /// (`pg_advisory_xact_lock`), so that instances starting at once run it one after the
    /// other instead of racing in `CREATE ... IF NOT EXISTS` (which can otherwise fail with
    /// a unique violation in the catalogs). The schema is created only when absent (so a
    /// role without the CREATE privilege on the database can migrate into an existing
    /// schema). Run it at startup, or apply the DDL from the README with your own migration
    /// tool instead.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # async fn f(store: coatcheck::postgres::PostgresStore) -> Result<(), coatcheck::postgres::MigrateError> {
    /// store.migrate().await?;
    /// store.migrate().await?; // a no-op the second time
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        // One query string, one round trip: Postgres runs a multi-statement simple query as
        // one implicit transaction, so the advisory lock taken by its first statement is held
        // until the DDL commits, and an error rolls everything back.
        sqlx::raw_sql(&self.inner.sql.migrate)
            .execute(&self.inner.pool)
            .await
            .map_err(MigrateError)?;
        tracing::debug!(table = %self.inner.qualified_name, "session table migrated");
        Ok(())
    }

    /// Spawns a task running [`SessionStore::delete_expired`] every `every` (the first run
    /// right away). An error is logged (`tracing` warning) and the task carries on at the
    /// next tick. The task holds only a weak reference: it ends by itself once every clone
    /// of the store has been dropped; `abort()` the handle to stop it earlier.
    ///
    /// A zero `every` is taken as one millisecond.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod postgres { pub use coatcheck_postgres::*; } }
    /// # async fn f(store: coatcheck::postgres::PostgresStore) {
    /// let cleanup = store.spawn_cleanup(std::time::Duration::from_secs(600));
    /// // ... on shutdown:
    /// cleanup.abort();
    /// # }
    /// ```
    pub fn spawn_cleanup(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                match inner.delete_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(
                        table = %inner.qualified_name, removed = n, "expired sessions removed"
                    ),
                    Err(e) => tracing::warn!(
                        table = %inner.qualified_name, error = %e,
                        "session cleanup failed; retrying at the next interval"
                    ),
                }
            }
            tracing::debug!("session cleanup task ends: the store was dropped");
        })
    }
}

impl Inner {
    fn now(&self) -> PgTs {
        PgTs(self.clock.now())
    }

    /// Runs one statement, re-sending it (on another connection) while its connection turns
    /// out to be one the server terminated: at most `attempts` times in all, and no new
    /// attempt once the pool's acquire timeout has passed since the first.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        retry: Retry,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if attempt < self.attempts
                        && connection_lost(&e, retry)
                        && started.elapsed() < self.retry_window =>
                {
                    tracing::debug!(op, attempt, error = %e, "connection lost; retrying on another");
                    attempt += 1;
                }
                Err(e) => {
                    tracing::debug!(op, error = %e, "session store statement failed");
                    return Err(store_error(e));
                }
            }
        }
    }

    fn decode_row(&self, id: &SessionId, row: &PgRow) -> Result<Record, StoreError> {
        let version: i64 = row.try_get(0).map_err(store_error)?;
        let data: &[u8] = row.try_get(1).map_err(store_error)?;
        if let Some(format) = &self.express {
            let expires_at: PgTs = row.try_get(4).map_err(store_error)?;
            return Ok(format
                .decode(data)?
                .into_record(id.clone(), expires_at.0, version as u64));
        }
        let user_id: Option<String> = row.try_get(2).map_err(store_error)?;
        let created_at: PgTs = row.try_get(3).map_err(store_error)?;
        let expires_at: PgTs = row.try_get(4).map_err(store_error)?;
        let version = u64::try_from(version)
            .map_err(|_| DecodeError::new(format!("negative session version {version}")))?;
        let data = self.codec.decode(data)?;
        let mut record = Record::new(id.clone(), created_at.0, expires_at.0);
        record.data = data;
        record.version = version;
        record.user_id = user_id;
        Ok(record)
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let (sql, pool, batch) = (
            self.sql.delete_expired_batch.as_str(),
            &self.pool,
            self.cleanup_batch,
        );
        let mut total = 0u64;
        loop {
            let done = self
                .run("delete_expired", Retry::IfNotRun, move || {
                    sqlx::query(sql).bind(now).bind(batch).execute(pool)
                })
                .await?
                .rows_affected();
            total += done;
            // Fewer than a full batch: nothing left (or the rest is locked by a concurrent
            // cleanup, which will remove it).
            if done < batch.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

impl Inner {
    /// The bytes of the data column: the codec's, or express-session's JSON.
    fn encode(&self, record: &Record, now: Timestamp) -> Result<Vec<u8>, StoreError> {
        match &self.express {
            Some(f) => Ok(f.encode(record, now)?.into_bytes()),
            None => Ok(self.codec.encode(&record.data)?),
        }
    }

    /// The version as bound: a count (refused past `i64::MAX`), or in express mode a content
    /// hash whose 64 bits travel as they are.
    fn version_param(&self, version: u64) -> Result<i64, StoreError> {
        if self.express.is_some() {
            Ok(version as i64)
        } else {
            version_param(version)
        }
    }

    fn user_index(&self) -> Result<(), StoreError> {
        match &self.express {
            Some(f) if f.user_key.is_none() => Err(StoreError::Unsupported(
                "express mode without a principal key has no user index",
            )),
            _ => Ok(()),
        }
    }

    fn version_from_db(&self, version: i64) -> Result<u64, StoreError> {
        if self.express.is_some() {
            return Ok(version as u64);
        }
        u64::try_from(version).map_err(|_| {
            StoreError::Decode(DecodeError::new(format!(
                "negative session version {version}"
            )))
        })
    }
}

fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Encode(EncodeError(format!("version {version} exceeds bigint"))))
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let bytes = inner.encode(record, now.0)?;
        let version = inner.version_param(record.version)?;
        let (sql, pool, id, data, user) = (
            inner.sql.create.as_str(),
            &inner.pool,
            record.id.as_str(),
            bytes.as_slice(),
            record.user_id.as_deref(),
        );
        let (created, expires) = (PgTs(record.created_at), PgTs(record.expires_at));
        let done = inner
            .run("create", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(id)
                    .bind(version)
                    .bind(data)
                    .bind(user)
                    .bind(created)
                    .bind(expires)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        if done == 0 {
            tracing::debug!(session = %record.id.short_hash(), "create: id taken");
            return Err(StoreError::IdTaken);
        }
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let (sql, pool, key) = (inner.sql.load.as_str(), &inner.pool, id.as_str());
        let row = inner
            .run("load", Retry::ReadOnly, move || {
                sqlx::query(sql).bind(key).bind(now).fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        match inner.decode_row(id, &row) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(session = %id.short_hash(), error = %e, "stored session is unreadable");
                Err(e)
            }
        }
    }

    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let bytes = inner.encode(record, now.0)?;
        let version = inner.version_param(record.version)?;
        let (sql, pool, id, data, user) = (
            inner.sql.save.as_str(),
            &inner.pool,
            record.id.as_str(),
            bytes.as_slice(),
            record.user_id.as_deref(),
        );
        let expires = PgTs(record.expires_at);
        let saved: Option<i64> = inner
            .run("save", Retry::IfNotRun, move || {
                sqlx::query_scalar(sql)
                    .bind(id)
                    .bind(version)
                    .bind(data)
                    .bind(user)
                    .bind(expires)
                    .bind(now)
                    .fetch_optional(pool)
            })
            .await?;
        if let Some(new_version) = saved {
            return inner.version_from_db(new_version);
        }
        // Failure path only: was it a version mismatch on a live row, or no live row?
        let probe = inner.sql.save_probe.as_str();
        let live: Option<i64> = inner
            .run("save", Retry::ReadOnly, move || {
                sqlx::query_scalar(probe)
                    .bind(id)
                    .bind(now)
                    .fetch_optional(pool)
            })
            .await?;
        let short = record.id.short_hash();
        match live {
            Some(stored) => {
                tracing::debug!(session = %short, stored, expected = version, "save: version conflict");
                Err(StoreError::Conflict)
            }
            None => {
                tracing::debug!(session = %short, "save: session gone or expired");
                Err(StoreError::NotFound)
            }
        }
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let (sql, pool, key, expires) = (
            inner.sql.touch.as_str(),
            &inner.pool,
            id.as_str(),
            PgTs(expires_at),
        );
        let done = inner
            .run("touch", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(key)
                    .bind(expires)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let (sql, pool, key) = (inner.sql.delete.as_str(), &inner.pool, id.as_str());
        // The row goes whether live or not (physical cleanup for free); the answer says
        // whether it was live.
        let live: Option<bool> = inner
            .run("delete", Retry::IfNotRun, move || {
                sqlx::query_scalar(sql)
                    .bind(key)
                    .bind(now)
                    .fetch_optional(pool)
            })
            .await?;
        Ok(live.unwrap_or(false))
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let inner = &*self.inner;
        inner.user_index()?;
        let now = inner.now();
        let (sql, pool) = (inner.sql.list_for_user.as_str(), &inner.pool);
        let rows = inner
            .run("list_for_user", Retry::ReadOnly, move || {
                sqlx::query(sql).bind(user_id).bind(now).fetch_all(pool)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw: &str = row.try_get(0).map_err(store_error)?;
            let created_at: PgTs = row.try_get(1).map_err(store_error)?;
            let expires_at: PgTs = row.try_get(2).map_err(store_error)?;
            match SessionId::parse(raw) {
                Ok(id) => out.push(SessionInfo::new(id, created_at.0, expires_at.0)),
                // Not an id coatcheck could have written or looked up: another tool's row.
                // Skipped (it is still revoked by delete_for_user, which works on user_id).
                Err(e) => tracing::warn!(
                    table = %inner.qualified_name, error = %e,
                    "list_for_user: skipping a row whose id is not a session id"
                ),
            }
        }
        Ok(out)
    }

    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        inner.user_index()?;
        let now = inner.now();
        let (sql, pool, keep) = (
            inner.sql.delete_for_user.as_str(),
            &inner.pool,
            except.map(SessionId::as_str),
        );
        // REPEATABLE READ, retried on a serialization failure: under READ COMMITTED the
        // DELETE skips a row a concurrent rotation compare-and-deleted after the statement's
        // snapshot, and never sees the rotation's new row, so the session survived a
        // "log out everywhere" that finished after the rotation (review finding; the
        // history checker's invariant). Under REPEATABLE READ that interleaving is an error
        // (40001), and the retry's fresh snapshot sees the new row.
        let mut conflicts = 0u32;
        loop {
            let attempt = inner
                .run("delete_for_user", Retry::IfNotRun, move || async move {
                    let mut tx = pool
                        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        .await?;
                    let n = sqlx::query(sql)
                        .bind(user_id)
                        .bind(now)
                        .bind(keep)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    tx.commit().await?;
                    Ok(n)
                })
                .await;
            match attempt {
                Err(StoreError::Backend(e)) if conflicts < 16 && is_serialization_failure(&*e) => {
                    conflicts += 1;
                    tracing::debug!(conflicts, "delete_for_user met a concurrent write; again");
                }
                other => return other,
            }
        }
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.inner.delete_expired().await
    }

    fn capabilities(&self) -> Capabilities {
        match &self.inner.express {
            None => Capabilities::new().with_user_index(true),
            Some(f) => Capabilities::new()
                .with_user_index(f.user_key.is_some())
                .with_opaque_versions(true)
                .with_no_creation_time(true),
        }
    }
}
