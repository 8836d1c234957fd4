//! Device details in the native table, revoking one device, and the per-user session
//! limit (a transaction holding an advisory lock per table and user).

use coatcheck_core::{
    Device, DeviceHandle, LimitPolicy, Record, SessionLimit, StoreError, Timestamp,
};
use sqlx::postgres::PgRow;
use sqlx::Row as _;

use super::{store_error, Inner, Retry};
use crate::ts::PgTs;

/// `device_handle, user_agent, ip, last_seen` as bound by `create` and `save`.
pub(super) fn device_params(record: &Record) -> (Option<&str>, Option<&str>, Option<&str>, PgTs) {
    let d = record.device.as_ref();
    (
        d.map(|d| d.handle.as_str()),
        d.and_then(|d| d.user_agent.as_deref()),
        d.and_then(|d| d.ip.as_deref()),
        PgTs(record.last_seen),
    )
}

/// The device and `last_seen` from the four columns starting at `at`. A row without a
/// handle (anonymous, or written before devices) has no device; a handle that is not one
/// is a `Decode` error, not a silently dropped device.
pub(super) fn device_columns(
    row: &PgRow,
    at: usize,
) -> Result<(Option<Device>, Timestamp), StoreError> {
    let handle: Option<&str> = row.try_get(at).map_err(store_error)?;
    let agent: Option<&str> = row.try_get(at + 1).map_err(store_error)?;
    let ip: Option<&str> = row.try_get(at + 2).map_err(store_error)?;
    let seen: PgTs = row.try_get(at + 3).map_err(store_error)?;
    let device = match handle {
        None => None,
        Some(raw) => {
            let handle = DeviceHandle::parse(raw).ok_or_else(|| {
                coatcheck_core::DecodeError::new("stored device handle is not a handle")
            })?;
            Some(
                Device::new()
                    .with_handle(handle)
                    .with_user_agent(agent)
                    .with_ip(ip),
            )
        }
    };
    Ok((device, seen.0))
}

/// The parameters of the `create` statement, bound in its order (`sql.rs`).
#[derive(Clone, Copy)]
pub(super) struct CreateArgs<'a> {
    id: &'a str,
    version: i64,
    data: &'a [u8],
    user: Option<&'a str>,
    created: PgTs,
    expires: PgTs,
    now: PgTs,
    device: (Option<&'a str>, Option<&'a str>, Option<&'a str>, PgTs),
}

impl<'a> CreateArgs<'a> {
    pub(super) fn new(
        inner: &Inner,
        record: &'a Record,
        data: &'a [u8],
        now: PgTs,
    ) -> Result<Self, StoreError> {
        Ok(CreateArgs {
            id: record.id.as_str(),
            version: inner.version_param(record.version)?,
            data,
            user: record.user_id.as_deref(),
            created: PgTs(record.created_at),
            expires: PgTs(record.expires_at),
            now,
            device: device_params(record),
        })
    }

    pub(super) fn query(
        self,
        sql: &'a str,
    ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let (handle, agent, ip, seen) = self.device;
        sqlx::query(sql)
            .bind(self.id)
            .bind(self.version)
            .bind(self.data)
            .bind(self.user)
            .bind(self.created)
            .bind(self.expires)
            .bind(self.now)
            .bind(handle)
            .bind(agent)
            .bind(ip)
            .bind(seen)
    }
}

/// What one limited create came to.
enum Limited {
    Created(u64),
    Refused,
    Taken,
}

impl Inner {
    fn native_only(&self, what: &'static str) -> Result<(), StoreError> {
        match self.express {
            None => Ok(()),
            Some(_) => Err(StoreError::Unsupported(what)),
        }
    }

    /// One `DELETE … WHERE user_id = $1 AND device_handle = $2`: every row of that device
    /// goes (during a rotation the old and the new id share the handle).
    pub(super) async fn delete_device(&self, user: &str, handle: &str) -> Result<bool, StoreError> {
        self.native_only("devices in the express layout (connect-pg-simple's table)")?;
        let now = self.now();
        let (sql, pool) = (self.sql.delete_device.as_str(), &self.pool);
        let live: Vec<bool> = self
            .run("delete_device", Retry::IfNotRun, move || {
                sqlx::query_scalar(sql)
                    .bind(user)
                    .bind(handle)
                    .bind(now)
                    .fetch_all(pool)
            })
            .await?;
        Ok(live.into_iter().any(|l| l))
    }

    /// In one transaction: the advisory lock of this table and user, the user's live
    /// sessions (least recently seen first), the evictions or the refusal, the insert.
    /// Under [`Durability::RelaxedCommit`](crate::Durability::RelaxedCommit) the insert
    /// relaxes the commit only when nothing is evicted: evictions always commit durably.
    /// Every limited create of the user holds the lock from its count to its commit, and
    /// each statement under READ COMMITTED sees what committed before it, so the second of
    /// two concurrent logins counts the first.
    pub(super) async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.native_only("a session limit in the express layout (connect-pg-simple's table)")?;
        let Some(user) = record.user_id.as_deref() else {
            return Err(StoreError::Unsupported(
                "create_limited of a record without user",
            ));
        };
        let now = self.now();
        let bytes = self.encode(record, now.0)?;
        let args = CreateArgs::new(self, record, &bytes, now)?;
        let (pool, sql) = (&self.pool, &self.sql);
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = usize::try_from(limit.max.max(1)).unwrap_or(usize::MAX);
        let outcome = self
            .run("create_limited", Retry::IfNotRun, move || async move {
                let mut tx = pool.begin().await?;
                sqlx::query(&sql.limit_lock)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                let live: Vec<String> = sqlx::query_scalar(&sql.limit_live)
                    .bind(user)
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut evicted = 0;
                let evicting = live.len() >= max;
                if live.len() >= max {
                    if limit.policy == LimitPolicy::Refuse {
                        tx.rollback().await?;
                        return Ok(Limited::Refused);
                    }
                    let victims = &live[..=live.len() - max];
                    evicted = sqlx::query(&sql.delete_ids)
                        .bind(victims)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                // Evictions are revocations: their transaction commits durably even under
                // `Durability::RelaxedCommit` (the insert is then the unrelaxed statement).
                let inserted = args
                    .query(sql.limited_create(evicting))
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
