//! [`SqliteStore`] and its [`SessionStore`] implementation.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, Codec, DecodeError, EncodeError, ExpressFormat, Record, SessionId,
    SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Row as _;

mod cleanup;
mod express;
mod limit;
mod row;
pub use cleanup::REPORT_QUEUE;
use row::{device_columns, CreateArgs};

use crate::builder::SqliteStoreBuilder;
use crate::layout::Statements;
use crate::MigrateError;
#[cfg(doc)]
use crate::DEFAULT_TABLE;
#[cfg(doc)]
use coatcheck_core::{NativeCodec, SystemClock};

/// A session store in one SQLite table. Cheap to clone (clones share the pools).
///
/// See the [crate docs](crate) for an overview and the crate's README for the exact SQL of
/// each operation.
///
/// ```no_run
/// use coatcheck::store::SessionStore;
/// use coatcheck::sqlite::SqliteStore;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::builder().connect_lazy("sqlite://sessions.db?mode=rwc")?;
/// store.migrate().await?;
/// for s in store.list_for_user("alice").await? {
///     println!("session created {:?}, expires {:?}", s.created_at, s.expires_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Reads.
    pub(crate) pool: SqlitePool,
    /// Writes (one connection when the store opened the database itself).
    pub(crate) writer: SqlitePool,
    pub(crate) sql: Statements,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cleanup_batch: u32,
    /// The table's name, for logs and errors.
    pub(crate) table: String,
    /// Express-compatible mode: better-sqlite3-session-store's table, the session as its
    /// JSON.
    pub(crate) express: Option<ExpressFormat>,
}

/// sqlx errors to store errors: a value that cannot be read from its column is `Decode`,
/// everything else `Backend` with the source kept (its message says which: "database is
/// locked" after the busy timeout, "attempt to write a readonly database", "database or
/// disk is full").
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Decode(
            DecodeError::with_source("unreadable column in session row", e),
        ),
        e => StoreError::backend(e),
    }
}

impl SqliteStore {
    /// A builder with the defaults: table [`DEFAULT_TABLE`], [`NativeCodec`],
    /// [`SystemClock`].
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), coatcheck::sqlite::BuildError> {
    /// let store = coatcheck::sqlite::SqliteStore::builder()
    ///     .connect_lazy("sqlite://sessions.db?mode=rwc")?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder::default()
    }

    /// The pool the store reads through (the one given to
    /// [`build`](SqliteStoreBuilder::build), which it also writes through).
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::sqlite::SqliteStore) -> Result<(), sqlx::Error> {
    /// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(store.pool()).await?;
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The table's name, unquoted.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::sqlite::SqliteStore) {
    /// assert_eq!(store.table_name(), "coatcheck_sessions");
    /// # }
    /// ```
    pub fn table_name(&self) -> &str {
        &self.inner.table
    }

    /// Creates the table and its indexes if they are missing, in one `BEGIN IMMEDIATE`
    /// transaction (processes that start at once take turns; all succeed), then checks that
    /// the table has every column the store uses: a table of that name made by something
    /// else is [`MigrateError::WrongShape`], found here rather than at the first request.
    /// Run it at startup, or apply the DDL from the README with your own migration tool.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::sqlite::SqliteStore) -> Result<(), coatcheck::sqlite::MigrateError> {
    /// store.migrate().await?;
    /// store.migrate().await?; // a no-op the second time
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        use sqlx::Connection as _;
        let inner = &*self.inner;
        let mut conn = inner
            .writer
            .acquire()
            .await
            .map_err(MigrateError::Database)?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(MigrateError::Database)?;
        // The table first, then the check of its columns, then its indexes (an index on a
        // column a foreign table lacks would fail with a less helpful message).
        let (table, indexes) = inner.sql.migrate.split_at(1);
        for ddl in table {
            sqlx::query(ddl)
                .execute(&mut *tx)
                .await
                .map_err(MigrateError::Database)?;
        }
        if let Err(source) = sqlx::query(&inner.sql.shape_probe)
            .fetch_optional(&mut *tx)
            .await
        {
            return Err(MigrateError::WrongShape {
                table: inner.table.clone(),
                source,
            });
        }
        for ddl in indexes {
            sqlx::query(ddl)
                .execute(&mut *tx)
                .await
                .map_err(MigrateError::Database)?;
        }
        tx.commit().await.map_err(MigrateError::Database)?;
        tracing::debug!(table = %inner.table, "session table migrated");
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
                    table = %self.table, error = %e,
                    "list_for_user: skipping a row whose id is not a session id"
                )
            })
            .ok()
    }
    pub(crate) fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// The failure path of a compare-and-set (`save`, `delete_version`): the version of the
    /// live row (`Conflict`), or `None` (`NotFound`). A read begun after the attempt
    /// ended: in WAL mode it sees every write committed before it.
    async fn live_version(
        &self,
        op: &'static str,
        id: &SessionId,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (probe, pool, key) = (self.sql.save_probe.as_str(), &self.pool, id.as_str());
        run(op, async move {
            sqlx::query_scalar(probe)
                .bind(key)
                .bind(now)
                .fetch_optional(pool)
                .await
        })
        .await
    }

    fn decode_row(&self, id: &SessionId, row: &SqliteRow) -> Result<Record, StoreError> {
        let version: i64 = row.try_get(0).map_err(store_error)?;
        let data: &[u8] = row.try_get(1).map_err(store_error)?;
        let user_id: Option<String> = row.try_get(2).map_err(store_error)?;
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

    /// Revocation by user needs the principal mapped to an index.
    fn user_index(&self) -> Result<(), StoreError> {
        match &self.express {
            Some(f) if f.user_key.is_none() => Err(StoreError::Unsupported(
                "express mode without a principal key has no user index",
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn encode(&self, record: &Record) -> Result<Vec<u8>, StoreError> {
        Ok(self.codec.encode_for(&record.id, &record.data)?)
    }
}

/// Runs one statement (or one transaction) and maps its error. Nothing is retried: every
/// write is an autocommit statement or a `BEGIN IMMEDIATE` transaction, which SQLite
/// itself retries against other connections' locks for the busy timeout; what fails after
/// that is reported.
pub(crate) async fn run<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    f.await.map_err(|e| {
        tracing::debug!(op, error = %e, "session store statement failed");
        store_error(e)
    })
}

pub(crate) fn version_param(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version)
        .map_err(|_| StoreError::Encode(EncodeError(format!("version {version} exceeds INTEGER"))))
}

#[async_trait]
impl SessionStore for SqliteStore {
    /// One upsert: inserts, or replaces the row of an expired session of that id; changes
    /// no row when the id is a live session's (`IdTaken`).
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let created = match &inner.express {
            Some(f) => inner.express_create(f, record).await?,
            None => {
                let bytes = inner.encode(record)?;
                let args = CreateArgs::new(record, &bytes, inner.now())?;
                let (sql, pool) = (inner.sql.create.as_str(), &inner.writer);
                run("create", args.query(sql).execute(pool))
                    .await?
                    .rows_affected()
                    > 0
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
        let row = run(
            "load",
            sqlx::query(sql).bind(key).bind(now).fetch_optional(pool),
        )
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
    /// changes one row the new version is the expected one plus one; only when it changes
    /// none does the probe tell `Conflict` from `NotFound`.
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
        let (sql, pool) = (inner.sql.save.as_str(), &inner.writer);
        let done = run("save", args.save_query(sql, version).execute(pool))
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
        let (sql, pool, key) = (
            inner.sql.delete_version.as_str(),
            &inner.writer,
            id.as_str(),
        );
        let removed = run(
            "delete_version",
            sqlx::query(sql)
                .bind(key)
                .bind(expected)
                .bind(now)
                .execute(pool),
        )
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
        let (sql, pool) = (inner.sql.touch.as_str(), &inner.writer);
        let done = run(
            "touch",
            sqlx::query(sql)
                .bind(expires_at.as_millis())
                .bind(now)
                .bind(id.as_str())
                .bind(now)
                .execute(pool),
        )
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let now = inner.now();
        let (sql, pool) = (inner.sql.delete.as_str(), &inner.writer);
        let done = run(
            "delete",
            sqlx::query(sql).bind(id.as_str()).bind(now).execute(pool),
        )
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
        let rows = run(
            "list_for_user",
            sqlx::query(sql).bind(user_id).bind(now).fetch_all(pool),
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw: String = row.try_get(0).map_err(store_error)?;
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

    /// One `DELETE … WHERE user_id = ?`: SQLite runs writes one at a time, so no rotation
    /// commits in the middle of it.
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
            &inner.writer,
            except.map(SessionId::as_str),
        );
        Ok(run(
            "delete_for_user",
            sqlx::query(sql)
                .bind(user_id)
                .bind(now)
                .bind(keep)
                .bind(keep)
                .execute(pool),
        )
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
        let caps = Capabilities::new().with_db_system("sqlite");
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
