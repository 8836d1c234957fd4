//! Revoking one device, and the per-user session limit: one `BEGIN IMMEDIATE` transaction
//! from its count to its commit.

use coatcheck_core::{LimitPolicy, Record, SessionLimit, StoreError};
use sqlx::Connection as _;

use super::row::CreateArgs;
use super::{run, Inner};

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
        let (sql, pool) = (self.sql.delete_device.as_str(), &self.writer);
        let done = run(
            "delete_device",
            sqlx::query(sql)
                .bind(user)
                .bind(handle)
                .bind(now)
                .execute(pool),
        )
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// In one `BEGIN IMMEDIATE` transaction, which takes the database's write lock at its
    /// start (so no other writer, in this process or another, runs until it ends, and no
    /// read lock has to be upgraded later, which is where "database is locked" comes from):
    /// the user's live sessions (least recently seen first), the evictions or the refusal,
    /// the insert.
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
        let (pool, sql) = (&self.writer, &self.sql);
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = usize::try_from(limit.max.max(1)).unwrap_or(usize::MAX);
        let outcome = run("create_limited", async move {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let live: Vec<String> = sqlx::query_scalar(&sql.limit_live)
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
                    q = q.bind(v.as_str());
                }
                evicted = q.execute(&mut *tx).await?.rows_affected();
            }
            let inserted = args
                .query(&sql.create)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
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
