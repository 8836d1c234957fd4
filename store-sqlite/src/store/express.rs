//! Express-compatible mode: the operations whose statements bind or read differently from
//! the native layout's (better-sqlite3-session-store's three columns; content-hash
//! versions, compared inside a `BEGIN IMMEDIATE` transaction since SQLite has no hash
//! function to compare them in one statement).

use coatcheck_core::{
    content_version, ExpressFormat, Record, SessionId, SessionInfo, StoreError, Timestamp,
};
use sqlx::{Connection as _, Row as _};

use super::{run, store_error, Inner};

/// The last instant `toISOString()` and SQLite's `strftime` write with a four-digit year
/// (9999-12-31T23:59:59.999Z): a later expiry is kept as that (past it, `strftime` gives
/// NULL).
const MAX_ISO_MS: i64 = 253_402_300_799_999;

fn iso_ms(t: Timestamp) -> i64 {
    t.as_millis().min(MAX_ISO_MS)
}

/// What a compare-and-set in a transaction came to.
enum Cas<T> {
    Done(T),
    Conflict,
    Gone,
}

impl<T> Cas<T> {
    fn into_result(self) -> Result<T, StoreError> {
        match self {
            Cas::Done(v) => Ok(v),
            Cas::Conflict => Err(StoreError::Conflict),
            Cas::Gone => Err(StoreError::NotFound),
        }
    }
}

impl Inner {
    /// One upsert that replaces only an expired row; `Ok(false)`: the id is live.
    pub(super) async fn express_create(
        &self,
        format: &ExpressFormat,
        record: &Record,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let json = format.encode(record, Timestamp::from_millis(now))?;
        let done = run(
            "create",
            sqlx::query(&self.sql.create)
                .bind(record.id.as_str())
                .bind(json.as_str())
                .bind(iso_ms(record.expires_at))
                .bind(now)
                .execute(&self.writer),
        )
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    pub(super) async fn express_load(
        &self,
        format: &ExpressFormat,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let row = run(
            "load",
            sqlx::query(&self.sql.load)
                .bind(id.as_str())
                .bind(self.now())
                .fetch_optional(&self.pool),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let json: String = row.try_get(0).map_err(store_error)?;
        let expires: i64 = row.try_get(1).map_err(store_error)?;
        Ok(Some(format.decode(json.as_bytes())?.into_record(
            id.clone(),
            Timestamp::from_millis(expires),
            content_version(json.as_bytes()),
        )))
    }

    /// In one `BEGIN IMMEDIATE` transaction (no other writer between the read and the
    /// write): the live JSON, its hash against `expected`, then `write`.
    async fn express_cas(
        &self,
        op: &'static str,
        id: &SessionId,
        expected: u64,
        write: &str,
        json: Option<(&str, i64)>,
    ) -> Result<Cas<()>, StoreError> {
        let probe = self.sql.save_probe.as_str();
        run(op, async {
            let mut conn = self.writer.acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            // "Now" once the write lock is held: a session that expired while this waited
            // for it is gone, not saved back to life.
            let now = self.now();
            let live: Option<String> = sqlx::query_scalar(probe)
                .bind(id.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let outcome = match live {
                None => Cas::Gone,
                Some(live) if content_version(live.as_bytes()) != expected => Cas::Conflict,
                Some(_) => {
                    let q = match json {
                        Some((json, expires)) => sqlx::query(write)
                            .bind(json)
                            .bind(expires)
                            .bind(id.as_str()),
                        None => sqlx::query(write).bind(id.as_str()),
                    };
                    q.execute(&mut *tx).await?;
                    Cas::Done(())
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    pub(super) async fn express_save(
        &self,
        format: &ExpressFormat,
        record: &Record,
    ) -> Result<u64, StoreError> {
        let json = format.encode(record, self.clock.now())?;
        let next = content_version(json.as_bytes());
        let expires = iso_ms(record.expires_at);
        self.express_cas(
            "save",
            &record.id,
            record.version,
            &self.sql.save,
            Some((json.as_str(), expires)),
        )
        .await?
        .into_result()
        .map(|()| next)
    }

    pub(super) async fn express_delete_version(
        &self,
        id: &SessionId,
        version: u64,
    ) -> Result<(), StoreError> {
        self.express_cas(
            "delete_version",
            id,
            version,
            &self.sql.delete_version,
            None,
        )
        .await?
        .into_result()
    }

    pub(super) async fn express_touch(
        &self,
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = run(
            "touch",
            sqlx::query(&self.sql.touch)
                .bind(iso_ms(expires_at))
                .bind(id.as_str())
                .bind(self.now())
                .execute(&self.writer),
        )
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    pub(super) async fn express_list(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let rows = run(
            "list_for_user",
            sqlx::query(&self.sql.list_for_user)
                .bind(user_id)
                .bind(self.now())
                .fetch_all(&self.pool),
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw: String = row.try_get(0).map_err(store_error)?;
            let expires: i64 = row.try_get(1).map_err(store_error)?;
            if let Some(id) = self.listed_id(&raw) {
                out.push(SessionInfo::new(
                    id,
                    Timestamp::from_millis(0),
                    Timestamp::from_millis(expires),
                ));
            }
        }
        Ok(out)
    }
}
