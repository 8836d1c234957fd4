//! [`MySqlStore`] and its [`SessionStore`] implementation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, Codec, DecodeError, EncodeError, ExpressFormat, Record, SessionId,
    SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::Row as _;

mod cleanup;
mod express;
mod express_migrate;
mod limit;
mod row;
pub use cleanup::REPORT_QUEUE;
use row::{device_columns, text, CreateArgs};

use crate::builder::MySqlStoreBuilder;
use crate::layout::express::ExpressStatements;
use crate::layout::native::MAX_USER_ID_LEN;
use crate::layout::Statements;
use crate::MigrateError;
#[cfg(doc)]
use crate::DEFAULT_TABLE;
#[cfg(doc)]
use coatcheck_core::{NativeCodec, SystemClock};

/// A session store in one MySQL or MariaDB table. Cheap to clone (clones share the pool).
///
/// See the [crate docs](crate) for an overview and the crate's README for the exact SQL of
/// each operation.
///
/// ```no_run
/// use coatcheck::store::SessionStore;
/// use coatcheck::mysql::MySqlStore;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MySqlStore::builder().connect_lazy("mysql://app@localhost/app")?;
/// store.migrate().await?;
/// for s in store.list_for_user("alice").await? {
///     println!("session created {:?}, expires {:?}", s.created_at, s.expires_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: MySqlPool,
    pub(crate) sql: Statements,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cleanup_batch: u32,
    /// Attempts per statement when it was rolled back or its connection was gone.
    pub(crate) attempts: u32,
    /// No retry starts later than this after the first attempt (the pool's acquire timeout).
    pub(crate) retry_window: Duration,
    /// `database.table` (or `table`), for logs.
    pub(crate) qualified_name: String,
    /// The database (`None`: the connection's) and the table, unquoted.
    pub(crate) database: Option<String>,
    pub(crate) table: String,
    /// Express-compatible mode: express-mysql-session's table, the session as its JSON.
    pub(crate) express: Option<ExpressFormat>,
    pub(crate) express_sql: Option<ExpressStatements>,
}

/// Whether a statement may be re-sent after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only when the server said the statement did not take effect: a deadlock or lock
    /// wait timeout rolled it back, or the server had killed the connection.
    IfNotRun,
    /// Also after an I/O error: the statement reads only.
    ReadOnly,
}

/// Server errors after which the statement did not take effect: `ER_LOCK_DEADLOCK` (the
/// transaction was rolled back), `ER_LOCK_WAIT_TIMEOUT` (the statement was), and the
/// connection ended by the server before running it: `ER_SERVER_SHUTDOWN`,
/// `ER_CONNECTION_KILLED` (MariaDB), `ER_CLIENT_INTERACTION_TIMEOUT` (MySQL 8).
const NOT_RUN: [u16; 5] = [1213, 1205, 1053, 1927, 4031];

/// The MySQL error number of a database error.
pub(crate) fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// A duplicate primary key (`ER_DUP_ENTRY`, 1062).
pub(crate) fn is_duplicate(e: &sqlx::Error) -> bool {
    error_number(e) == Some(1062)
}

fn retryable(e: &sqlx::Error, retry: Retry) -> bool {
    match e {
        sqlx::Error::Database(_) => error_number(e).is_some_and(|n| NOT_RUN.contains(&n)),
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
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Decode(
            DecodeError::with_source("unreadable column in session row", e),
        ),
        e => StoreError::backend(e),
    }
}

impl MySqlStore {
    /// A builder with the defaults: table [`DEFAULT_TABLE`] in the connection's database,
    /// [`NativeCodec`], [`SystemClock`].
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::mysql::BuildError> {
    /// let store = coatcheck::mysql::MySqlStore::builder()
    ///     .connect_lazy("mysql://app@localhost/app")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn builder() -> MySqlStoreBuilder {
        MySqlStoreBuilder::default()
    }

    /// The pool the store runs on.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::mysql::MySqlStore) -> Result<(), sqlx::Error> {
    /// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(store.pool()).await?;
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// `database.table` (or the table alone when the connection's database is used),
    /// unquoted.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::mysql::MySqlStore) {
    /// assert_eq!(store.qualified_table_name(), "coatcheck_sessions");
    /// # }
    /// ```
    pub fn qualified_table_name(&self) -> &str {
        &self.inner.qualified_name
    }

    /// Creates the table (with its indexes) and the per-user lock table, idempotently:
    /// two `CREATE TABLE IF NOT EXISTS`, each atomic, so instances that start at once all
    /// succeed. Run it at startup, or apply the DDL from the README with your own migration
    /// tool instead.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::mysql::MySqlStore) -> Result<(), coatcheck::mysql::MigrateError> {
    /// store.migrate().await?;
    /// store.migrate().await?; // a no-op the second time
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let inner = &*self.inner;
        for ddl in &inner.sql.migrate {
            sqlx::raw_sql(ddl)
                .execute(&inner.pool)
                .await
                .map_err(MigrateError::Database)?;
        }
        let wrong_shape = |source| MigrateError::WrongShape {
            table: inner.qualified_name.clone(),
            source,
        };
        sqlx::raw_sql(&inner.sql.shape_probe)
            .execute(&inner.pool)
            .await
            .map_err(wrong_shape)?;
        if let Some(x) = &inner.express_sql {
            inner.express_additions(x).await?;
        }
        tracing::debug!(table = %self.inner.qualified_name, "session table migrated");
        Ok(())
    }
}

impl Inner {
    /// A listed row's id; `None` (logged) for a row another tool wrote under an id coatcheck
    /// never accepts: skipped by `list_for_user`, still revoked by `delete_for_user` (which
    /// works on the user column).
    pub(crate) fn listed_id(&self, raw: &str) -> Option<SessionId> {
        SessionId::parse(raw)
            .inspect_err(|e| {
                tracing::warn!(
                    table = %self.qualified_name, error = %e,
                    "list_for_user: skipping a row whose id is not a session id"
                )
            })
            .ok()
    }
    pub(crate) fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// "Now" in the unit of the table's expiry column: milliseconds, or whole seconds in
    /// express mode (live means `expires > ⌊now / 1 s⌋` there).
    pub(crate) fn now_param(&self) -> i64 {
        let now = self.now();
        if self.express.is_some() {
            now.div_euclid(1000)
        } else {
            now
        }
    }

    /// Revocation by user needs the principal mapped to a column.
    fn user_index(&self) -> Result<(), StoreError> {
        match &self.express {
            Some(f) if f.user_key.is_none() => Err(StoreError::Unsupported(
                "express mode without a principal key has no user index",
            )),
            _ => Ok(()),
        }
    }

    /// The failure path of a compare-and-set (`save`, `delete_version`): the version of the
    /// live row (`Conflict`), or `None` (`NotFound`).
    async fn live_version(
        &self,
        op: &'static str,
        id: &SessionId,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (probe, pool, key) = (self.sql.save_probe.as_str(), &self.pool, id.as_str());
        self.run(op, Retry::ReadOnly, move || {
            sqlx::query_scalar(probe)
                .bind(key)
                .bind(now)
                .fetch_optional(pool)
        })
        .await
    }

    /// Runs one statement (or one transaction), re-sending it while the server reports that
    /// it did not take effect: at most `attempts` times in all, and no new attempt once the
    /// pool's acquire timeout has passed since the first.
    pub(crate) async fn run<T, F, Fut>(
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
                        && retryable(&e, retry)
                        && started.elapsed() < self.retry_window =>
                {
                    tracing::debug!(op, attempt, error = %e, "statement did not run; again");
                    attempt += 1;
                }
                Err(e) => {
                    tracing::debug!(op, error = %e, "session store statement failed");
                    return Err(store_error(e));
                }
            }
        }
    }

    fn decode_row(&self, id: &SessionId, row: &MySqlRow) -> Result<Record, StoreError> {
        let version: i64 = row.try_get(0).map_err(store_error)?;
        let data: &[u8] = row.try_get(1).map_err(store_error)?;
        let user_id = text(row, 2)?;
        let created_at: i64 = row.try_get(3).map_err(store_error)?;
        let expires_at: i64 = row.try_get(4).map_err(store_error)?;
        let version = u64::try_from(version)
            .map_err(|_| DecodeError::new(format!("negative session version {version}")))?;
        let data = self.codec.decode_for(id, data)?;
        let mut record = Record::new(
            id.clone(),
            Timestamp::from_millis(created_at),
            Timestamp::from_millis(expires_at),
        );
        record.data = data;
        record.version = version;
        record.user_id = user_id;
        (record.device, record.last_seen) = device_columns(row, 5)?;
        Ok(record)
    }

    pub(crate) fn encode(&self, record: &Record) -> Result<Vec<u8>, StoreError> {
        if let Some(user) = &record.user_id {
            if user.len() > MAX_USER_ID_LEN {
                return Err(StoreError::Encode(EncodeError(format!(
                    "user id of {} bytes: this store keeps at most {MAX_USER_ID_LEN}",
                    user.len()
                ))));
            }
        }
        Ok(self.codec.encode_for(&record.id, &record.data)?)
    }

    /// One `INSERT`; only on a duplicate key, removes that id's row if it has expired and
    /// inserts again. `Ok(false)`: the id belongs to a live session.
    async fn insert(&self, args: CreateArgs<'_>) -> Result<bool, StoreError> {
        let (sql, pool) = (self.sql.create.as_str(), &self.pool);
        let first = self
            .run("create", Retry::IfNotRun, move || async move {
                match args.query(sql).execute(pool).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_duplicate(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if first {
            return Ok(true);
        }
        let (clear, id, now) = (self.sql.clear_expired_id.as_str(), args.id, args.now);
        let cleared = self
            .run("create", Retry::IfNotRun, move || {
                sqlx::query(clear).bind(id).bind(now).execute(pool)
            })
            .await?
            .rows_affected();
        if cleared == 0 {
            return Ok(false);
        }
        self.run("create", Retry::IfNotRun, move || async move {
            match args.query(sql).execute(pool).await {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

pub(crate) fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Encode(EncodeError(format!("version {version} exceeds BIGINT"))))
}

#[async_trait]
impl SessionStore for MySqlStore {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let created = match &inner.express {
            Some(f) => inner.express_create(f, record).await?,
            None => {
                let bytes = inner.encode(record)?;
                let args = CreateArgs::new(record, &bytes, inner.now())?;
                inner.insert(args).await?
            }
        };
        if created {
            Ok(())
        } else {
            tracing::debug!(session = %record.id.short_hash(), "create: id taken");
            Err(StoreError::IdTaken)
        }
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let inner = &*self.inner;
        if let Some(f) = &inner.express {
            return inner.express_load(f, id).await.inspect_err(|e| {
                tracing::warn!(session = %id.short_hash(), error = %e, "stored session is unreadable");
            });
        }
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

    /// One `UPDATE … WHERE id = ? AND version = ?` that also moves the version: when it
    /// matches one row the new version is the expected one plus one (MySQL has no
    /// `RETURNING` on `UPDATE`); only when it matches none does the probe tell `Conflict`
    /// from `NotFound`.
    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        if let Some(f) = &inner.express {
            return inner.express_save(f, record).await;
        }
        let now = inner.now();
        let bytes = inner.encode(record)?;
        let version = version_param(record.version)?;
        let next = version_param(record.version.saturating_add(1))?;
        let args = CreateArgs::new(record, &bytes, now)?;
        let sql = inner.sql.save.as_str();
        let pool = &inner.pool;
        let done = inner
            .run("save", Retry::IfNotRun, move || {
                args.save_query(sql, version).execute(pool)
            })
            .await?
            .rows_affected();
        if done > 0 {
            return Ok(next.unsigned_abs());
        }
        let short = record.id.short_hash();
        match inner.live_version("save", &record.id, now).await? {
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

    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        let inner = &*self.inner;
        if inner.express.is_some() {
            return inner.express_delete_version(id, version).await;
        }
        let now = inner.now();
        let expected = version_param(version)?;
        let (sql, pool, key) = (inner.sql.delete_version.as_str(), &inner.pool, id.as_str());
        let removed = inner
            .run("delete_version", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(key)
                    .bind(expected)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        if removed > 0 {
            return Ok(());
        }
        match inner.live_version("delete_version", id, now).await? {
            Some(_) => Err(StoreError::Conflict),
            None => Err(StoreError::NotFound),
        }
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        if inner.express.is_some() {
            return inner.express_touch(id, expires_at).await;
        }
        let now = inner.now();
        let (sql, pool, key, expires) = (
            inner.sql.touch.as_str(),
            &inner.pool,
            id.as_str(),
            expires_at.as_millis(),
        );
        let done = inner
            .run("touch", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(expires)
                    .bind(now)
                    .bind(key)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let now = inner.now_param();
        let (sql, pool, key) = (inner.sql.delete.as_str(), &inner.pool, id.as_str());
        let done = inner
            .run("delete", Retry::IfNotRun, move || {
                sqlx::query(sql).bind(key).bind(now).execute(pool)
            })
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let inner = &*self.inner;
        inner.user_index()?;
        if inner.express.is_some() {
            return inner.express_list(user_id).await;
        }
        let now = inner.now();
        let (sql, pool) = (inner.sql.list_for_user.as_str(), &inner.pool);
        let rows = inner
            .run("list_for_user", Retry::ReadOnly, move || {
                sqlx::query(sql).bind(user_id).bind(now).fetch_all(pool)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw = text(&row, 0)?.unwrap_or_default();
            let created_at: i64 = row.try_get(1).map_err(store_error)?;
            let expires_at: i64 = row.try_get(2).map_err(store_error)?;
            let (device, last_seen) = device_columns(&row, 3)?;
            if let Some(id) = inner.listed_id(&raw) {
                out.push(
                    SessionInfo::new(
                        id,
                        Timestamp::from_millis(created_at),
                        Timestamp::from_millis(expires_at),
                    )
                    .with_device(device, last_seen),
                );
            }
        }
        Ok(out)
    }

    /// One `DELETE … WHERE user_id = ?`: a locking read in InnoDB, so it sees every row
    /// committed before it reaches it and waits for rows being written (under the default
    /// REPEATABLE READ its next-key locks on the user index also hold back inserts for the
    /// user until it commits): a rotation cannot slip a session past it.
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        inner.user_index()?;
        let now = inner.now_param();
        let (sql, pool, keep) = (
            inner.sql.delete_for_user.as_str(),
            &inner.pool,
            except.map(SessionId::as_str),
        );
        Ok(inner
            .run("delete_for_user", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(user_id)
                    .bind(now)
                    .bind(keep)
                    .bind(keep)
                    .execute(pool)
            })
            .await?
            .rows_affected())
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.inner.delete_expired().await
    }

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        if self.inner.express.is_some() {
            return Err(StoreError::Unsupported("express mode keeps no devices"));
        }
        self.inner.delete_device(user_id, handle).await
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        if self.inner.express.is_some() {
            return Err(StoreError::Unsupported(
                "express mode has no per-user session limit",
            ));
        }
        self.inner.create_limited(record, limit).await
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new().with_db_system("mysql");
        match &self.inner.express {
            None => caps
                .with_user_index(true)
                .with_devices(true)
                .with_session_limit(true),
            Some(f) => caps
                .with_user_index(f.user_key.is_some())
                .with_opaque_versions(true)
                .with_no_creation_time(true)
                .with_express_layout(true),
        }
    }
}
