//! [`SqliteStoreBuilder`]: table name, codec, clock, pool settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, Codec, ExpressFormat, StoreOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[cfg(doc)]
use coatcheck_core::{NativeCodec, SessionStore, StoreError, SystemClock};

use crate::layout::{self as sql, Statements};
use crate::store::{Inner, SqliteStore};
use crate::{
    BuildError, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_BUSY_TIMEOUT, DEFAULT_CLEANUP_BATCH,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_TABLE, EXPRESS_TABLE,
};

/// Builder for a [`SqliteStore`]; from [`SqliteStore::builder`].
///
/// ```no_run
/// use coatcheck::store::{JsonCodec, ManualClock, Timestamp};
/// use coatcheck::sqlite::SqliteStore;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), coatcheck::sqlite::BuildError> {
/// let store = SqliteStore::builder()
///     .table("web_sessions")
///     .codec(JsonCodec)
///     .clock(ManualClock::new(Timestamp::from_millis(0)))
///     .acquire_timeout(Duration::from_secs(1))
///     .busy_timeout(Duration::from_secs(10))
///     .max_connections(8)
///     .cleanup_batch_size(500)
///     .connect_lazy("sqlite://sessions.db?mode=rwc")?;
/// # drop(store); Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct SqliteStoreBuilder {
    table: Option<String>,
    options: StoreOptions,
    acquire_timeout: Duration,
    busy_timeout: Duration,
    max_connections: u32,
    cleanup_batch: u32,
}

impl Default for SqliteStoreBuilder {
    fn default() -> Self {
        SqliteStoreBuilder {
            table: None,
            options: StoreOptions::new(),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
        }
    }
}

impl SqliteStoreBuilder {
    /// The table name ([`DEFAULT_TABLE`] by default; [`EXPRESS_TABLE`] in express mode).
    /// Validated as an identifier when the store is built; its indexes are named after it
    /// (`{table}_expires_at_idx`, `{table}_user_id_idx`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// Every shared option at once ([`StoreOptions`]: codec, clock, express layout), as
    /// every coatcheck store builder takes them; replaces what `codec`, `clock` and
    /// `express` set before.
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Express-compatible mode: sessions live in better-sqlite3-session-store's table
    /// (default [`EXPRESS_TABLE`]: `sid`, `sess` the session's JSON, `expire` an ISO-8601
    /// instant), so an Express app using that store on the same file shares them.
    /// [`SqliteStore::migrate`] creates the table as that store does and adds an index on
    /// `expire` and, when the format has a principal key (`userId` by default), an index on
    /// it, for "log out everywhere". Express keeps no creation time, no version (a hash of
    /// the JSON stands in, compared inside a `BEGIN IMMEDIATE` transaction) and no device:
    /// the cap and device revocation are not available in this mode.
    ///
    /// ```no_run
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = coatcheck::sqlite::SqliteStore::builder()
    ///     .express(ExpressFormat::new())
    ///     .connect_lazy("sqlite://sessions.db?mode=rwc")?;
    /// store.migrate().await?;
    /// assert!(store.capabilities().express_layout);
    /// # Ok(()) }
    /// ```
    pub fn express(mut self, format: ExpressFormat) -> Self {
        self.options.express = Some(format);
        self
    }

    /// The codec of the `data` column; default [`NativeCodec`]. Ignored in express mode,
    /// except that an encrypting one is refused there ([`BuildError::EncryptedExpress`]).
    ///
    /// ```
    /// let b = coatcheck::sqlite::SqliteStore::builder().codec(coatcheck::store::JsonCodec);
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.options.codec = Arc::new(codec);
        self
    }

    /// Where "now" comes from ([`SystemClock`] by default). Every statement compares
    /// `expires_at` against this clock's time, bound as a parameter.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options.clock = Arc::new(clock);
        self
    }

    /// How long an operation waits for a pool connection before it fails with
    /// [`StoreError::Backend`] ([`DEFAULT_ACQUIRE_TIMEOUT`]); a write waits up to this plus
    /// the [busy timeout](Self::busy_timeout), since the write queued ahead of it may spend
    /// that waiting for another process's lock. Only for
    /// [`connect_lazy`](Self::connect_lazy); a pool given to [`build`](Self::build) keeps
    /// its own.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a write waits for another connection's write lock on the file (SQLite's
    /// busy timeout, [`DEFAULT_BUSY_TIMEOUT`]) before it fails with
    /// [`StoreError::Backend`]. Only for [`connect_lazy`](Self::connect_lazy).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Reading connections ([`DEFAULT_MAX_CONNECTIONS`]); writes have one connection of
    /// their own besides. Only for [`connect_lazy`](Self::connect_lazy).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Rows removed per `DELETE` by [`SessionStore::delete_expired`]
    /// ([`DEFAULT_CLEANUP_BATCH`]); smaller batches hold the write lock for less time.
    pub fn cleanup_batch_size(mut self, rows: u32) -> Self {
        self.cleanup_batch = rows;
        self
    }

    /// A store on an existing pool, used for reads and writes alike. No I/O.
    ///
    /// Open the pool's connections in WAL mode with a busy timeout (as below): in SQLite's
    /// default rollback-journal mode a reader and a writer block each other, and without a
    /// busy timeout a write that meets another fails at once with "database is locked".
    ///
    /// ```no_run
    /// use coatcheck::sqlite::SqliteStore;
    /// use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = SqliteConnectOptions::new()
    ///     .filename("sessions.db")
    ///     .create_if_missing(true)
    ///     .journal_mode(SqliteJournalMode::Wal)
    ///     .busy_timeout(Duration::from_secs(5));
    /// let pool = SqlitePoolOptions::new().connect_with(options).await?;
    /// let store = SqliteStore::builder().table("sessions").build(pool)?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn build(self, pool: SqlitePool) -> Result<SqliteStore, BuildError> {
        self.build_with(pool.clone(), pool)
    }

    fn build_with(self, pool: SqlitePool, writer: SqlitePool) -> Result<SqliteStore, BuildError> {
        self.validate()?;
        let table = self.table_name().to_owned();
        let sql = match &self.options.express {
            None => Statements::native(&table),
            Some(f) => Statements::express(&table, f.user_key.as_deref()),
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool,
                writer,
                sql,
                codec: self.options.codec,
                clock: self.options.clock,
                cleanup_batch: self.cleanup_batch,
                table,
                express: self.options.express,
            }),
        })
    }

    fn validate(&self) -> Result<(), BuildError> {
        sql::validate_ident("table", self.table_name())?;
        if self.cleanup_batch == 0 {
            return Err(BuildError::ZeroCleanupBatch);
        }
        self.options.validate().map_err(BuildError::from)?;
        if let Some(key) = self
            .options
            .express
            .as_ref()
            .and_then(|f| f.user_key.as_deref())
        {
            // A literal in the user index's JSON path.
            sql::validate_ident("express user key", key)?;
        }
        Ok(())
    }

    fn table_name(&self) -> &str {
        match (&self.table, &self.options.express) {
            (Some(t), _) => t,
            (None, Some(_)) => EXPRESS_TABLE,
            (None, None) => DEFAULT_TABLE,
        }
    }

    /// A store on the database at `url`, a sqlx SQLite URL such as
    /// `sqlite://sessions.db?mode=rwc` (`mode=rwc` creates the file when it is missing;
    /// without it a missing file is an error at the first operation). Opens lazily: nothing
    /// is touched until the first operation. Every connection runs in WAL mode with the
    /// busy timeout; reads share [`max_connections`](Self::max_connections) connections,
    /// writes go through one of their own. Must be called within a Tokio runtime.
    ///
    /// An in-memory URL (`sqlite::memory:`) works, shared by the store's connections, and
    /// lives as long as the store: for tests; `coatcheck-memory` is the faster in-memory
    /// store.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::sqlite::BuildError> {
    /// let store = coatcheck::sqlite::SqliteStore::builder()
    ///     .connect_lazy("sqlite://sessions.db?mode=rwc")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<SqliteStore, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        if self.max_connections == 0 {
            return Err(BuildError::ZeroConnections);
        }
        // Validate before building pools that would only be thrown away.
        self.validate()?;
        // sqlx takes any string as a file name; a server URL given here by mistake is
        // refused by name instead of becoming a file called "postgres:...".
        if !url.starts_with("sqlite:") {
            return Err(BuildError::InvalidUrl(sqlx::Error::Configuration(
                "the URL must start with sqlite: (e.g. sqlite://sessions.db?mode=rwc)".into(),
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(BuildError::InvalidUrl)?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(self.busy_timeout);
        // An in-memory database is shared through SQLite's shared cache, whose table locks
        // a busy timeout does not cover: every operation goes through the one connection.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // One writing connection: the store's writes take turns in the pool's queue (no
        // polling for SQLite's lock); other stores and processes on the file meet it at
        // the busy timeout.
        // A write queued behind another one may wait for that one's whole busy wait (the
        // file locked by another process) before its own turn: its acquire timeout covers
        // that, so it meets the documented busy timeout, not the pool's (a review found
        // the second of two writes failing with `PoolTimedOut` after 3 s, behind a 4 s
        // lock, before the 5 s busy timeout).
        let mut writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.acquire_timeout.saturating_add(self.busy_timeout));
        if in_memory {
            // The database lives as long as a connection to it: keep the one open.
            writer = writer.idle_timeout(None).max_lifetime(None);
        }
        let writer = writer.connect_lazy_with(options.clone());
        if in_memory {
            return self.build_with(writer.clone(), writer);
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options);
        self.build_with(readers, writer)
    }
}
