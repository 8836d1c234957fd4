//! Revoking one device, and the per-user session limit: one transaction holding the
//! user's row lock in the lock table from its count to its commit.

use coatcheck_core::{LimitPolicy, Record, SessionLimit, StoreError};
use sqlx::{Connection as _, Executor as _};

use super::row::CreateArgs;
use super::{is_duplicate, Inner, Retry};

/// What one limited create came to.
enum Limited {
    Created(u64),
    Refused,
    Taken,
}

impl Inner {
    /// One `DELETE … WHERE user_id = ? AND device_handle = ?` of the live rows: every row
    /// of that device goes (during a rotation the old and the new id share the handle).
    pub(super) async fn delete_device(&self, user: &str, handle: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let (sql, pool) = (self.sql.delete_device.as_str(), &self.pool);
        let done = self
            .run("delete_device", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(user)
                    .bind(handle)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    /// In one READ COMMITTED transaction: the user's lock row, the user's live sessions
    /// (least recently seen first, each statement seeing what committed before it), the
    /// evictions or the refusal, the insert. Every limited create of the user holds the
    /// lock row from its count to its commit, so the second of two concurrent logins counts
    /// the first. A deadlock rolls the whole transaction back and it runs again.
    pub(super) async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let Some(user) = record.user_id.as_deref() else {
            return Err(StoreError::Unsupported(
                "create_limited of a record without user",
            ));
        };
        let now = self.now();
        let bytes = self.encode(record)?;
        let args = CreateArgs::new(record, &bytes, now)?;
        let (pool, sql) = (&self.pool, &self.sql);
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = usize::try_from(limit.max.max(1)).unwrap_or(usize::MAX);
        let outcome = self
            .run("create_limited", Retry::IfNotRun, move || async move {
                let mut conn = pool.acquire().await?;
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                let mut tx = conn.begin().await?;
                sqlx::query(&sql.limit_lock)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                let live: Vec<Vec<u8>> = sqlx::query_scalar(&sql.limit_live)
                    .bind(user)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut evicted = 0;
                if live.len() >= max {
                    if limit.policy == LimitPolicy::Refuse {
                        tx.rollback().await?;
                        return Ok(Limited::Refused);
                    }
                    let victims = &live[..=live.len() - max];
                    let marks = vec!["?"; victims.len()].join(", ");
                    let stmt = format!("{}{marks})", sql.delete_ids_prefix);
                    let mut q = sqlx::query(&stmt);
                    for v in victims {
                        q = q.bind(v.as_slice());
                    }
                    evicted = q.execute(&mut *tx).await?.rows_affected();
                }
                let mut inserted = insert_in(&mut tx, sql, args).await?;
                if !inserted {
                    let cleared = sqlx::query(&sql.clear_expired_id)
                        .bind(args.id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if cleared > 0 {
                        inserted = insert_in(&mut tx, sql, args).await?;
                    }
                }
                if !inserted {
                    tx.rollback().await?;
                    return Ok(Limited::Taken);
                }
                tx.commit().await?;
                Ok(Limited::Created(evicted))
            })
            .await?;
        match outcome {
            Limited::Created(n) => Ok(n),
            Limited::Refused => Err(StoreError::LimitReached),
            Limited::Taken => Err(StoreError::IdTaken),
        }
    }
}

/// The insert inside a transaction: `Ok(false)` on a duplicate key. InnoDB rolls back only
/// the failed statement, so the transaction goes on.
async fn insert_in(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    sql: &crate::layout::Statements,
    args: CreateArgs<'_>,
) -> Result<bool, sqlx::Error> {
    match args.query(&sql.create).execute(&mut **tx).await {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
