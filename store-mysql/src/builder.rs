//! [`MySqlStoreBuilder`]: names, codec, clock, pool settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, Codec, StoreOptions};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

#[cfg(doc)]
use coatcheck_core::{NativeCodec, SessionStore, StoreError, SystemClock};

use crate::layout::{self as sql, Statements};
use crate::store::{Inner, MySqlStore};
use crate::{
    BuildError, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_CLEANUP_BATCH, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TABLE,
};

/// Builder for a [`MySqlStore`]; from [`MySqlStore::builder`].
///
/// ```no_run
/// use coatcheck::store::{JsonCodec, ManualClock, Timestamp};
/// use coatcheck::mysql::MySqlStore;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), coatcheck::mysql::BuildError> {
/// let store = MySqlStore::builder()
///     .database("auth")
///     .table("web_sessions")
///     .codec(JsonCodec)
///     .clock(ManualClock::new(Timestamp::from_millis(0)))
///     .acquire_timeout(Duration::from_secs(1))
///     .max_connections(20)
///     .cleanup_batch_size(500)
///     .connect_lazy("mysql://app@localhost/app")?;
/// # drop(store); Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct MySqlStoreBuilder {
    database: Option<String>,
    table: String,
    options: StoreOptions,
    acquire_timeout: Duration,
    max_connections: u32,
    cleanup_batch: u32,
}

impl Default for MySqlStoreBuilder {
    fn default() -> Self {
        MySqlStoreBuilder {
            database: None,
            table: DEFAULT_TABLE.to_owned(),
            options: StoreOptions::new(),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
        }
    }
}

impl MySqlStoreBuilder {
    /// The database (MySQL's word for a schema) holding the table; by default the
    /// connection's own (the URL's path). Validated as an identifier when the store is
    /// built; it must exist ([`MySqlStore::migrate`] creates tables, not databases).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The table name ([`DEFAULT_TABLE`] by default). Validated as an identifier when the
    /// store is built. The per-user limit's lock table is named after it (`{table}_locks`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Every shared option at once ([`StoreOptions`]: codec, clock, express layout), as
    /// every coatcheck store builder takes them; replaces what `codec` and `clock` set
    /// before. An express layout is refused at build ([`BuildError::ExpressUnsupported`]).
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Express-compatible mode (express-mysql-session's table): not built yet in this
    /// store, so [`build`](Self::build) refuses it with [`BuildError::ExpressUnsupported`]
    /// rather than store sessions an Express app cannot read. Here so that every coatcheck
    /// store builder takes the same options.
    pub fn express(mut self, format: coatcheck_core::ExpressFormat) -> Self {
        self.options.express = Some(format);
        self
    }

    /// The codec of the `data` column; default [`NativeCodec`].
    ///
    /// ```
    /// let b = coatcheck::mysql::MySqlStore::builder().codec(coatcheck::store::JsonCodec);
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.options.codec = Arc::new(codec);
        self
    }

    /// Where "now" comes from ([`SystemClock`] by default). Every statement compares
    /// `expires_at` against this clock's time, bound as a parameter: the database's clock
    /// is never used.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options.clock = Arc::new(clock);
        self
    }

    /// How long an operation waits for a connection before it fails with
    /// [`StoreError::Backend`] ([`DEFAULT_ACQUIRE_TIMEOUT`]). Only for
    /// [`connect_lazy`](Self::connect_lazy); a pool given to [`build`](Self::build) keeps
    /// its own.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Pool size ([`DEFAULT_MAX_CONNECTIONS`]). Only for [`connect_lazy`](Self::connect_lazy).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
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
    /// The store retries a statement that the server rolled back for a deadlock (1213) or a
    /// lock wait timeout (1205), or whose connection the server had killed (the statement
    /// did not run), and, for read-only statements, one lost to an I/O error: up to
    /// `max_connections + 1` times, while the pool's acquire timeout has not passed.
    ///
    /// ```no_run
    /// use coatcheck::mysql::MySqlStore;
    /// use sqlx::mysql::MySqlPoolOptions;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = MySqlPoolOptions::new()
    ///     .max_connections(5)
    ///     .connect("mysql://app@localhost/app")
    ///     .await?;
    /// let store = MySqlStore::builder().table("sessions").build(pool)?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn build(self, pool: MySqlPool) -> Result<MySqlStore, BuildError> {
        self.validate()?;
        let attempts = pool.options().get_max_connections().saturating_add(1);
        let retry_window = pool.options().get_acquire_timeout();
        let statements = Statements::native(self.database.as_deref(), &self.table);
        let qualified_name = match &self.database {
            Some(db) => format!("{db}.{}", self.table),
            None => self.table.clone(),
        };
        Ok(MySqlStore {
            inner: Arc::new(Inner {
                pool,
                sql: statements,
                codec: self.options.codec,
                clock: self.options.clock,
                cleanup_batch: self.cleanup_batch,
                attempts,
                retry_window,
                qualified_name,
            }),
        })
    }

    fn validate(&self) -> Result<(), BuildError> {
        if let Some(db) = &self.database {
            sql::validate_ident("database", db)?;
        }
        sql::validate_ident("table", &self.table)?;
        if self.cleanup_batch == 0 {
            return Err(BuildError::ZeroCleanupBatch);
        }
        self.options.validate().map_err(BuildError::from)?;
        if self.options.express.is_some() {
            return Err(BuildError::ExpressUnsupported);
        }
        Ok(())
    }

    /// A store on a new pool for `url` (e.g. `mysql://user:pass@host:3306/db`). Connects
    /// lazily: nothing is sent until the first operation, so this succeeds while the server
    /// is down. Must be called within a Tokio runtime.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::mysql::BuildError> {
    /// let store = coatcheck::mysql::MySqlStore::builder()
    ///     .connect_lazy("mysql://app@localhost/app")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<MySqlStore, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        if self.max_connections == 0 {
            return Err(BuildError::ZeroConnections);
        }
        // Validate before building a pool that would only be thrown away.
        self.validate()?;
        // sqlx parses any scheme; a Postgres URL given here by mistake is refused by name.
        if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
            return Err(BuildError::InvalidUrl(sqlx::Error::Configuration(
                "the URL must start with mysql:// or mariadb://".into(),
            )));
        }
        let options = MySqlConnectOptions::from_str(url).map_err(BuildError::InvalidUrl)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        self.build(pool)
    }
}
