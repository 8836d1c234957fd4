//! [`MySqlStoreBuilder`]: names, codec, clock, pool settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, Codec, ExpressFormat, StoreOptions};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

#[cfg(doc)]
use coatcheck_core::{NativeCodec, SessionStore, StoreError, SystemClock};

use crate::layout::{self as sql, Statements};
use crate::store::{Inner, MySqlStore};
use crate::{
    BuildError, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_CLEANUP_BATCH, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TABLE, EXPRESS_TABLE,
};

/// A pooled connection idle this long is pinged before a statement is sent on it (MariaDB's
/// shortest `wait_timeout` is one second).
const IDLE_PING: Duration = Duration::from_secs(1);

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
    table: Option<String>,
    options: StoreOptions,
    acquire_timeout: Duration,
    max_connections: u32,
    cleanup_batch: u32,
}

impl Default for MySqlStoreBuilder {
    fn default() -> Self {
        MySqlStoreBuilder {
            database: None,
            table: None,
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

    /// The table name ([`DEFAULT_TABLE`] by default; [`EXPRESS_TABLE`] in express mode).
    /// Validated as an identifier when the store is built. The per-user limit's lock table
    /// is named after it (`{table}_locks`).
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

    /// Express-compatible mode: sessions live in express-mysql-session's table (default
    /// [`EXPRESS_TABLE`]: `session_id`, `expires` in whole seconds, `data` the session's
    /// JSON), so an Express app using express-mysql-session on the same table shares them.
    /// [`MySqlStore::migrate`] creates the table as express-mysql-session does, adds an
    /// index on `expires` and, when the format has a principal key (`userId` by default), a
    /// virtual column holding it with its index, for "log out everywhere". Express keeps no
    /// creation time, no version (a hash of the JSON stands in) and no device: the cap and
    /// device revocation are not available in this mode (`Capabilities` says so).
    ///
    /// ```no_run
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = coatcheck::mysql::MySqlStore::builder()
    ///     .express(ExpressFormat::new())
    ///     .connect_lazy("mysql://app@localhost/app")?;
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
    /// The pool's settings are yours: keep sqlx's default `test_before_acquire(true)`, or
    /// test idle connections as [`connect_lazy`](Self::connect_lazy) does, if the server's
    /// `wait_timeout` may close a pooled connection: a write on a connection the server
    /// closed fails with an I/O error, which the store does not retry (it cannot tell
    /// whether the statement ran).
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
        let table = self.table_name().to_owned();
        let (statements, express_sql) = match &self.options.express {
            None => (Statements::native(self.database.as_deref(), &table), None),
            Some(f) => {
                let (s, x) =
                    Statements::express(self.database.as_deref(), &table, f.user_key.as_deref());
                (s, Some(x))
            }
        };
        let qualified_name = match &self.database {
            Some(db) => format!("{db}.{table}"),
            None => table.clone(),
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
                database: self.database,
                table,
                express: self.options.express,
                express_sql,
            }),
        })
    }

    fn validate(&self) -> Result<(), BuildError> {
        if let Some(db) = &self.database {
            sql::validate_ident("database", db)?;
        }
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
            // A literal in the virtual column's JSON path.
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
            // A ping before every statement would double the round trips; a connection
            // idle for a second or more may have been closed by the server (its
            // `wait_timeout`; MariaDB sends no error packet then, so a write on it fails
            // with an I/O error the store cannot safely retry): those are pinged first,
            // and a dead one is replaced before the statement is sent.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < IDLE_PING {
                        return Ok(true);
                    }
                    Ok(sqlx::Connection::ping(conn).await.is_ok())
                })
            })
            .connect_lazy_with(options);
        self.build(pool)
    }
}
