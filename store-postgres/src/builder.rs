//! [`PostgresStoreBuilder`]: names, codec, clock, pool settings, durability.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, Codec, ExpressFormat, StoreOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

#[cfg(doc)]
use coatcheck_core::{NativeCodec, SessionStore, StoreError, SystemClock};

use crate::layout::{self as sql, Layout, Statements};
use crate::store::{Inner, PostgresStore};
use crate::{
    BuildError, Durability, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_APPLICATION_NAME,
    DEFAULT_CLEANUP_BATCH, DEFAULT_MAX_CONNECTIONS, DEFAULT_SCHEMA, DEFAULT_TABLE, EXPRESS_TABLE,
    EXPRESS_TIME_ZONE_SQL,
};

/// Builder for a [`PostgresStore`]; from [`PostgresStore::builder`].
///
/// ```no_run
/// use coatcheck::core::{JsonCodec, ManualClock, Timestamp};
/// use coatcheck::postgres::PostgresStore;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::BuildError> {
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
    options: StoreOptions,
    acquire_timeout: Duration,
    max_connections: u32,
    application_name: String,
    cleanup_batch: u32,
    durability: Durability,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        PostgresStoreBuilder {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: None,
            options: StoreOptions::new(),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
            durability: Durability::Full,
        }
    }
}

impl PostgresStoreBuilder {
    /// How session writes reach the disk: [`Durability::Full`] (the default: nothing
    /// acknowledged is ever lost) or [`Durability::RelaxedCommit`] (`create`, `save`, `touch`
    /// don't wait for the WAL flush; a database crash can lose their last moments; revocations,
    /// including the evictions of `create_limited`, stay durable).
    ///
    /// ```
    /// use coatcheck::postgres::{Durability, PostgresStore};
    /// let b = PostgresStore::builder().durability(Durability::RelaxedCommit);
    /// ```
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

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

    /// Every shared option at once ([`StoreOptions`]: codec, clock, express layout), as
    /// every coatcheck store builder takes them; replaces what `codec`, `clock` and
    /// `express` set before.
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
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
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), coatcheck::postgres::BuildError> {
    /// let store = coatcheck::postgres::PostgresStore::builder()
    ///     .express(ExpressFormat::new())
    ///     .connect_lazy("postgres://app@localhost/app")?;
    /// assert_eq!(store.qualified_table_name(), "public.session");
    /// assert!(store.capabilities().user_index);
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
    /// let b = coatcheck::postgres::PostgresStore::builder().codec(coatcheck::core::JsonCodec);
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
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, BuildError> {
        let table = match (&self.table, &self.options.express) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) => EXPRESS_TABLE.to_owned(),
            (None, None) => DEFAULT_TABLE.to_owned(),
        };
        sql::validate_ident("schema", &self.schema)?;
        sql::validate_ident("table", &table)?;
        let layout = match &self.options.express {
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
            return Err(BuildError::ZeroCleanupBatch);
        }
        self.options.validate().map_err(BuildError::from)?;
        let attempts = pool.options().get_max_connections().saturating_add(1);
        let retry_window = pool.options().get_acquire_timeout();
        let statements = Statements::new(layout, &self.schema, &table, self.durability);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql: statements,
                codec: self.options.codec,
                express: self.options.express,
                clock: self.options.clock,
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
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::BuildError> {
    /// let store = coatcheck::postgres::PostgresStore::builder()
    ///     .connect_lazy("postgres://app@localhost/app")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        if self.max_connections == 0 {
            return Err(BuildError::ZeroConnections);
        }
        // Validate before building a pool that would only be thrown away.
        sql::validate_ident("schema", &self.schema)?;
        if let Some(table) = &self.table {
            sql::validate_ident("table", table)?;
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(BuildError::InvalidUrl)?
            .application_name(&self.application_name);
        let mut pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false);
        if self.options.express.is_some() {
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
