//! Rows to records and records to parameters: the device columns, and the parameters of
//! `create` and `save` in their statements' order.

use coatcheck_core::{DecodeError, Device, DeviceHandle, Record, StoreError, Timestamp};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row as _, Sqlite};

use super::{store_error, version_param};

/// The device and `last_seen` from the four columns starting at `at`. A row without a
/// handle (anonymous) has no device; a handle that is not one is a `Decode` error, not a
/// silently dropped device.
pub(super) fn device_columns(
    row: &SqliteRow,
    at: usize,
) -> Result<(Option<Device>, Timestamp), StoreError> {
    let handle: Option<String> = row.try_get(at).map_err(store_error)?;
    let agent: Option<String> = row.try_get(at + 1).map_err(store_error)?;
    let ip: Option<String> = row.try_get(at + 2).map_err(store_error)?;
    let seen: i64 = row.try_get(at + 3).map_err(store_error)?;
    let device = match handle {
        None => None,
        Some(raw) => {
            let handle = DeviceHandle::parse(&raw)
                .ok_or_else(|| DecodeError::new("stored device handle is not a handle"))?;
            Some(
                Device::new()
                    .with_handle(handle)
                    .with_user_agent(agent.as_deref())
                    .with_ip(ip.as_deref()),
            )
        }
    };
    Ok((device, Timestamp::from_millis(seen)))
}

/// What `create` and `save` bind, taken from a record once.
#[derive(Clone, Copy)]
pub(super) struct CreateArgs<'a> {
    id: &'a str,
    version: i64,
    data: &'a [u8],
    user: Option<&'a str>,
    created: i64,
    expires: i64,
    now: i64,
    handle: Option<&'a str>,
    agent: Option<&'a str>,
    ip: Option<&'a str>,
    seen: i64,
}

type Query<'a> = sqlx::query::Query<'a, Sqlite, SqliteArguments<'a>>;

impl<'a> CreateArgs<'a> {
    pub(super) fn new(record: &'a Record, data: &'a [u8], now: i64) -> Result<Self, StoreError> {
        let d = record.device.as_ref();
        Ok(CreateArgs {
            id: record.id.as_str(),
            version: version_param(record.version)?,
            data,
            user: record.user_id.as_deref(),
            created: record.created_at.as_millis(),
            expires: record.expires_at.as_millis(),
            now,
            handle: d.map(|d| d.handle.as_str()),
            agent: d.and_then(|d| d.user_agent.as_deref()),
            ip: d.and_then(|d| d.ip.as_deref()),
            seen: record.last_seen.as_millis(),
        })
    }

    /// `create`: `id, version, data, user_id, created_at, expires_at, device handle, user
    /// agent, ip, last_seen, now`.
    pub(super) fn query(self, sql: &'a str) -> Query<'a> {
        sqlx::query(sql)
            .bind(self.id)
            .bind(self.version)
            .bind(self.data)
            .bind(self.user)
            .bind(self.created)
            .bind(self.expires)
            .bind(self.handle)
            .bind(self.agent)
            .bind(self.ip)
            .bind(self.seen)
            .bind(self.now)
    }

    /// `save`: `data, user_id, expires_at, device handle, user agent, ip, last_seen, id,
    /// expected version, now`.
    pub(super) fn save_query(self, sql: &'a str, expected: i64) -> Query<'a> {
        sqlx::query(sql)
            .bind(self.data)
            .bind(self.user)
            .bind(self.expires)
            .bind(self.handle)
            .bind(self.agent)
            .bind(self.ip)
            .bind(self.seen)
            .bind(self.id)
            .bind(expected)
            .bind(self.now)
    }
}
