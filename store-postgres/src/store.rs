//! [`PostgresStore`] and its [`SessionStore`] implementation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, Codec, DecodeError, EncodeError, ExpressFormat, Record, SessionId,
    SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};

mod cleanup;
pub use cleanup::REPORT_QUEUE;
mod devices;
use devices::{device_columns, device_params, CreateArgs};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};

use crate::builder::PostgresStoreBuilder;
use crate::layout::Statements;
use crate::ts::PgTs;
use crate::MigrateError;
#[cfg(doc)]
use crate::{DEFAULT_SCHEMA, DEFAULT_TABLE};
#[cfg(doc)]
use coatcheck_core::{NativeCodec, SystemClock};

/// A session store in one PostgreSQL table. Cheap to clone (clones share the pool).
///
/// See the [crate docs](crate) for an overview and the crate's README for the exact SQL of
/// each operation.
///
/// ```no_run
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
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) sql: Statements,
    pub(crate) codec: Arc<dyn Codec>,
    /// Express-compatible mode: the session is express-session's JSON in `sess`.
    pub(crate) express: Option<ExpressFormat>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cleanup_batch: i64,
    /// Attempts per statement when connections turn out to be terminated.
    pub(crate) attempts: u32,
    /// No retry starts later than this after the first attempt (the pool's acquire timeout).
    pub(crate) retry_window: Duration,
    /// `schema.table`, for logs.
    pub(crate) qualified_name: String,
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
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::postgres::BuildError> {
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

    /// Drops what earlier builds of this store needed and this one does not (the native
    /// table's `expires_at` index, replaced by the expiry bucket's), without blocking
    /// writes (`DROP INDEX CONCURRENTLY`). Run it once **after every instance runs this
    /// build**: [`migrate`](Self::migrate) keeps the old index so that an earlier build
    /// restarting mid-deploy finds it instead of rebuilding it under a lock that blocks
    /// writes; until it is dropped, saves that move the expiry are not HOT updates.
    /// Idempotent; a no-op in express mode.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::postgres::PostgresStore) -> Result<(), coatcheck::postgres::MigrateError> {
    /// store.migrate().await?;
    /// // … once the last instance of the earlier build is gone:
    /// store.finish_upgrade().await?;
    /// # Ok(()) }
    /// ```
    pub async fn finish_upgrade(&self) -> Result<(), MigrateError> {
        let sql = &self.inner.sql.retire;
        if sql.is_empty() {
            return Ok(());
        }
        sqlx::raw_sql(sql)
            .execute(&self.inner.pool)
            .await
            .map_err(MigrateError)?;
        tracing::info!(table = %self.inner.qualified_name, "earlier build's indexes dropped");
        Ok(())
    }
}

impl Inner {
    fn now(&self) -> PgTs {
        PgTs(self.clock.now())
    }

    /// The failure path of a compare-and-set (`save`, `delete_version`): the version of the
    /// live row (`Conflict`), or `None` (`NotFound`).
    async fn live_version(
        &self,
        op: &'static str,
        id: &SessionId,
        now: PgTs,
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
        let data = self.codec.decode_for(id, data)?;
        let mut record = Record::new(id.clone(), created_at.0, expires_at.0);
        record.data = data;
        record.version = version;
        record.user_id = user_id;
        (record.device, record.last_seen) = device_columns(row, 5)?;
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
            None => Ok(self.codec.encode_for(&record.id, &record.data)?),
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
        let args = CreateArgs::new(inner, record, &bytes, now)?;
        let (sql, pool) = (inner.sql.create.as_str(), &inner.pool);
        let done = inner
            .run("create", Retry::IfNotRun, move || {
                args.query(sql).execute(pool)
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
        let (handle, agent, ip, seen) = device_params(record);
        let saved: Option<i64> = inner
            .run("save", Retry::IfNotRun, move || {
                sqlx::query_scalar(sql)
                    .bind(id)
                    .bind(version)
                    .bind(data)
                    .bind(user)
                    .bind(expires)
                    .bind(now)
                    .bind(handle)
                    .bind(agent)
                    .bind(ip)
                    .bind(seen)
                    .fetch_optional(pool)
            })
            .await?;
        if let Some(new_version) = saved {
            return inner.version_from_db(new_version);
        }
        // Failure path only: was it a version mismatch on a live row, or no live row?
        let live = inner.live_version("save", &record.id, now).await?;
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

    /// One conditional `DELETE` (always durable); only when it removes nothing does the
    /// save probe tell `Conflict` from `NotFound`.
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let expected = inner.version_param(version)?;
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
            let (device, last_seen) = device_columns(&row, 3)?;
            match SessionId::parse(raw) {
                Ok(id) => out.push(
                    SessionInfo::new(id, created_at.0, expires_at.0).with_device(device, last_seen),
                ),
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

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        self.inner.delete_device(user_id, handle).await
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.inner.create_limited(record, limit).await
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new().with_db_system("postgresql");
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
