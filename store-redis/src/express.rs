//! The express-compatible layout: what connect-redis writes, so an Express app and a Rust
//! app share sessions.
//!
//! ```text
//! {prefix}{id}   STRING  express-session's JSON     EX ttl (whole seconds, rounded up)
//! ```
//!
//! - `create`: `SET key json EX ttl NX` (one command; Redis has already dropped an expired key).
//! - `load`: one script: `GET`, `PTTL` and the SHA-1 of the stored text. The key's TTL is the
//!   expiry (Express's touch does not rewrite the JSON); a key without TTL falls back to
//!   `cookie.expires`. The version is the first 64 bits of the SHA-1.
//! - `save`: one script: compare-and-set on that hash (so two Rust requests never lose each
//!   other's update), then `SET key json EX ttl`. A ttl ≤ 0 deletes the key, as connect-redis
//!   does. A Node write in between is simply overwritten or overwrites: last-write-wins.
//! - `touch`: `EXPIRE key ttl`, as connect-redis does.
//! - `delete`: `DEL key`.
//! - No user index: connect-redis keeps none. `list_for_user`/`delete_for_user` return
//!   [`StoreError::Unsupported`].

use std::sync::LazyLock;

use coatcheck_core::{ExpressFormat, Record, SessionId, StoreError, Timestamp};
use redis::{Script, Value};

use crate::error::UnexpectedReply;
use crate::store::Ctx;

/// KEYS[1]; returns nil or {json, pttl, sha1-prefix}.
const LOAD: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1]), string.sub(redis.sha1hex(v), 1, 16)}
"#;

/// KEYS[1]; ARGV: expected version (16 hex), json, ttl seconds. Returns 0 (missing),
/// -1 (conflict) or the new version (16 hex).
const SAVE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.sub(redis.sha1hex(v), 1, 16) ~= ARGV[1] then return -1 end
local ttl = tonumber(ARGV[3])
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
end
return string.sub(redis.sha1hex(ARGV[2]), 1, 16)
"#;

static LOAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD));
static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE));

/// The express-session layout.
#[derive(Debug, Clone)]
pub(crate) struct Express {
    pub(crate) format: ExpressFormat,
}

fn unexpected(what: &'static str) -> StoreError {
    StoreError::backend(UnexpectedReply { what })
}

/// The longest TTL written: 100 years. Redis refuses an `EX` whose expiry overflows its
/// millisecond clock (a far-future `set_expiry` answered 500), and no session needs more.
const MAX_TTL_SECS: i64 = 100 * 365 * 86_400;

/// connect-redis's ttl: whole seconds until `expires_at`, rounded up, at most
/// [`MAX_TTL_SECS`].
fn ttl_secs(expires_at: Timestamp, now: Timestamp) -> i64 {
    let ms = expires_at.as_millis().saturating_sub(now.as_millis());
    ms.saturating_add(999).div_euclid(1000).min(MAX_TTL_SECS)
}

fn text(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn version_of(hex: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl Express {
    pub(crate) async fn create(&self, cx: &Ctx, r: &Record) -> Result<(), StoreError> {
        let now = cx.now();
        let json = self.format.encode(r, now)?;
        let ttl = ttl_secs(r.expires_at, now);
        if ttl <= 0 {
            // Already expired: as connect-redis, store nothing (expired = absent).
            return Ok(());
        }
        let reply = cx
            .query(
                redis::cmd("SET")
                    .arg(cx.session_key(&r.id))
                    .arg(json)
                    .arg("EX")
                    .arg(ttl)
                    .arg("NX"),
            )
            .await?;
        match reply {
            Value::Okay | Value::SimpleString(_) => Ok(()),
            Value::Nil => Err(StoreError::IdTaken),
            _ => Err(unexpected("SET NX")),
        }
    }

    pub(crate) async fn load(
        &self,
        cx: &Ctx,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let mut inv = LOAD_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(id));
        let reply = cx.invoke(&inv).await?;
        let parts = match reply {
            Value::Nil => return Ok(None),
            Value::Array(a) if a.len() == 3 => a,
            _ => return Err(unexpected("express load script")),
        };
        let mut it = parts.into_iter();
        let (Some(json), Some(pttl), Some(hash)) = (it.next(), it.next(), it.next()) else {
            return Err(unexpected("express load script"));
        };
        let json = text(json).ok_or_else(|| unexpected("express load script"))?;
        let pttl = match pttl {
            Value::Int(i) => i,
            _ => return Err(unexpected("express load script")),
        };
        let version = text(hash)
            .as_deref()
            .and_then(version_of)
            .ok_or_else(|| unexpected("express load script"))?;
        let now = cx.now();
        let session = self.format.decode(&json)?;
        let expires_at = if pttl >= 0 {
            Timestamp::from_millis(now.as_millis().saturating_add(pttl))
        } else {
            // A key without TTL (not written by connect-redis or coatcheck): the cookie says.
            session
                .cookie_expires
                .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400))
        };
        if expires_at <= now {
            return Ok(None);
        }
        Ok(Some(session.into_record(id.clone(), expires_at, version)))
    }

    pub(crate) async fn save(&self, cx: &Ctx, r: &Record) -> Result<u64, StoreError> {
        let now = cx.now();
        let json = self.format.encode(r, now)?;
        let mut inv = SAVE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(format!("{:016x}", r.version))
            .arg(json)
            .arg(ttl_secs(r.expires_at, now));
        match cx.invoke(&inv).await? {
            Value::Int(0) => Err(StoreError::NotFound),
            Value::Int(-1) => Err(StoreError::Conflict),
            other => text(other)
                .as_deref()
                .and_then(version_of)
                .ok_or_else(|| unexpected("express save script")),
        }
    }

    pub(crate) async fn touch(
        &self,
        cx: &Ctx,
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let ttl = ttl_secs(expires_at, cx.now());
        let reply = cx
            .query(redis::cmd("EXPIRE").arg(cx.session_key(id)).arg(ttl))
            .await?;
        match reply {
            Value::Int(n) => Ok(n == 1),
            _ => Err(unexpected("EXPIRE")),
        }
    }

    pub(crate) async fn delete(&self, cx: &Ctx, id: &SessionId) -> Result<bool, StoreError> {
        match cx.query(redis::cmd("DEL").arg(cx.session_key(id))).await? {
            Value::Int(n) => Ok(n > 0),
            _ => Err(unexpected("DEL")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_like_connect_redis() {
        let now = Timestamp::from_millis(10_000);
        assert_eq!(ttl_secs(Timestamp::from_millis(10_001), now), 1);
        assert_eq!(ttl_secs(Timestamp::from_millis(11_000), now), 1);
        assert_eq!(ttl_secs(Timestamp::from_millis(11_001), now), 2);
        assert_eq!(ttl_secs(now, now), 0);
        assert_eq!(ttl_secs(Timestamp::from_millis(0), now), -10);
        assert_eq!(
            ttl_secs(Timestamp::from_millis(i64::MAX), now),
            MAX_TTL_SECS
        );
    }

    #[test]
    fn versions_are_sixteen_hex_digits_both_ways() {
        let v = version_of(b"00ff00ff00ff00ff").unwrap();
        assert_eq!(format!("{v:016x}"), "00ff00ff00ff00ff");
        assert_eq!(version_of(b"zz"), None);
    }
}
