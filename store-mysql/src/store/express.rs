//! Express-compatible mode: the operations whose statements bind or read differently from
//! the native layout's (express-mysql-session's three columns; seconds; content-hash
//! versions). The others share the native code with [`Inner::now_param`] in seconds.

use coatcheck_core::{
    content_version, DecodeError, EncodeError, ExpressFormat, Record, SessionId, SessionInfo,
    StoreError, Timestamp,
};
use sqlx::Row as _;

use super::{is_duplicate, store_error, Inner, Retry};
use crate::layout::express::{expires_secs, json_depth, MAX_EXPRESS_USER_LEN, MAX_INDEXED_DEPTH};

impl Inner {
    /// The JSON express-session stores, and its expiry in whole seconds.
    fn express_row(
        &self,
        format: &ExpressFormat,
        record: &Record,
        now_ms: i64,
    ) -> Result<(String, i64), StoreError> {
        if let Some(user) = &record.user_id {
            if user.len() > MAX_EXPRESS_USER_LEN {
                return Err(StoreError::Encode(EncodeError(format!(
                    "user id of {} bytes: the express table's user column keeps at most \
                     {MAX_EXPRESS_USER_LEN}",
                    user.len()
                ))));
            }
        }
        let json = format.encode(record, Timestamp::from_millis(now_ms))?;
        if record.user_id.is_some() && json_depth(&json) > MAX_INDEXED_DEPTH {
            // Written, the session would be its user's to every reader but not to the
            // principal column the server computes (NULL past its JSON parser's depth):
            // log out everywhere would miss it. An anonymous session of any depth is fine.
            return Err(StoreError::Encode(EncodeError(format!(
                "a signed-in session nesting {} levels deep: the server's JSON functions \
                 read at most {MAX_INDEXED_DEPTH} (MariaDB), so log out everywhere could not \
                 find it; keep signed-in sessions shallower or use the native layout",
                json_depth(&json)
            ))));
        }
        Ok((json, expires_secs(record.expires_at.as_millis(), now_ms)))
    }

    /// `INSERT`; on a duplicate key, the id's row removed if it has expired and the insert
    /// made again. `Ok(false)`: the id is a live session's.
    pub(super) async fn express_create(
        &self,
        format: &ExpressFormat,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let now_ms = self.now();
        let (json, expires) = self.express_row(format, record, now_ms)?;
        let (sql, pool, id, now) = (
            self.sql.create.as_str(),
            &self.pool,
            record.id.as_str(),
            self.now_param(),
        );
        let insert = || {
            let json = json.as_str();
            async move {
                match sqlx::query(sql)
                    .bind(id)
                    .bind(expires)
                    .bind(json)
                    .execute(pool)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if is_duplicate(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        };
        if self.run("create", Retry::IfNotRun, insert).await? {
            return Ok(true);
        }
        let clear = self.sql.clear_expired_id.as_str();
        let cleared = self
            .run("create", Retry::IfNotRun, move || {
                sqlx::query(clear).bind(id).bind(now).execute(pool)
            })
            .await?
            .rows_affected();
        if cleared == 0 {
            return Ok(false);
        }
        self.run("create", Retry::IfNotRun, insert).await
    }

    pub(super) async fn express_load(
        &self,
        format: &ExpressFormat,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let (sql, pool, key, now) = (
            self.sql.load.as_str(),
            &self.pool,
            id.as_str(),
            self.now_param(),
        );
        let row = self
            .run("load", Retry::ReadOnly, move || {
                sqlx::query(sql).bind(key).bind(now).fetch_optional(pool)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        // `utf8mb4_bin` columns read as bytes (sqlx takes a binary collation for binary).
        let json: Option<Vec<u8>> = row.try_get(0).map_err(store_error)?;
        let expires: i64 = row.try_get(1).map_err(store_error)?;
        let indexed: Option<Vec<u8>> = row.try_get(2).map_err(store_error)?;
        let json = json.unwrap_or_default();
        let version = content_version(&json);
        let record = format.decode(&json)?.into_record(
            id.clone(),
            Timestamp::from_millis(expires.saturating_mul(1000)),
            version,
        );
        // The session is its user's only if the principal column names that user too: log
        // out everywhere finds sessions by the column. They differ when the server could not
        // read the document (nested past its JSON parser's depth, a lone surrogate escape)
        // or the principal does not fit the column: written by Node (Rust refuses to
        // write such a session), or by any writer on a server that is not in strict mode.
        if let Some(user) = &record.user_id {
            if format.user_key.is_some() && indexed.as_deref() != Some(user.as_bytes()) {
                return Err(StoreError::Decode(DecodeError::new(format!(
                    "the session names a user in its JSON but its principal column {}: the \
                     server cannot index it (too deeply nested, a lone surrogate, an \
                     over-long principal); refused rather than served as a session log out \
                     everywhere would miss",
                    if indexed.is_none() {
                        "is NULL"
                    } else {
                        "names another"
                    }
                ))));
            }
        }
        Ok(Some(record))
    }

    /// One `UPDATE … WHERE session_id = ? AND <hash of data> = ?`; the new version is the
    /// hash of what was written.
    pub(super) async fn express_save(
        &self,
        format: &ExpressFormat,
        record: &Record,
    ) -> Result<u64, StoreError> {
        let now_ms = self.now();
        let (json, expires) = self.express_row(format, record, now_ms)?;
        let next = content_version(json.as_bytes());
        let (sql, pool, id, now, expected) = (
            self.sql.save.as_str(),
            &self.pool,
            record.id.as_str(),
            self.now_param(),
            record.version,
        );
        let json = json.as_str();
        let done = self
            .run("save", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(json)
                    .bind(expires)
                    .bind(id)
                    .bind(expected)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        if done > 0 {
            return Ok(next);
        }
        match self.live_version("save", &record.id, now).await? {
            Some(_) => Err(StoreError::Conflict),
            None => Err(StoreError::NotFound),
        }
    }

    pub(super) async fn express_delete_version(
        &self,
        id: &SessionId,
        version: u64,
    ) -> Result<(), StoreError> {
        let (sql, pool, key, now) = (
            self.sql.delete_version.as_str(),
            &self.pool,
            id.as_str(),
            self.now_param(),
        );
        let removed = self
            .run("delete_version", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(key)
                    .bind(version)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        if removed > 0 {
            return Ok(());
        }
        match self.live_version("delete_version", id, now).await? {
            Some(_) => Err(StoreError::Conflict),
            None => Err(StoreError::NotFound),
        }
    }

    pub(super) async fn express_touch(
        &self,
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let expires = expires_secs(expires_at.as_millis(), self.now());
        let (sql, pool, key, now) = (
            self.sql.touch.as_str(),
            &self.pool,
            id.as_str(),
            self.now_param(),
        );
        let done = self
            .run("touch", Retry::IfNotRun, move || {
                sqlx::query(sql)
                    .bind(expires)
                    .bind(key)
                    .bind(now)
                    .execute(pool)
            })
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    pub(super) async fn express_list(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let (sql, pool, now) = (
            self.sql.list_for_user.as_str(),
            &self.pool,
            self.now_param(),
        );
        let rows = self
            .run("list_for_user", Retry::ReadOnly, move || {
                sqlx::query(sql).bind(user_id).bind(now).fetch_all(pool)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw = super::row::text(&row, 0)?.unwrap_or_default();
            let expires: i64 = row.try_get(1).map_err(store_error)?;
            if let Some(id) = self.listed_id(&raw) {
                out.push(SessionInfo::new(
                    id,
                    Timestamp::from_millis(0),
                    Timestamp::from_millis(expires.saturating_mul(1000)),
                ));
            }
        }
        Ok(out)
    }
}
