//! The express-compatible layout: what connect-redis writes, so an Express app and a Rust
//! app share sessions.
//!
//! ```text
//! {prefix}{id}   STRING  express-session's JSON     EX ttl (whole seconds, rounded up)
//! ```
//!
//! - `create`: `SET key json EX ttl NX` (one command; Redis has already dropped an expired key).
//! - `load`: `MULTI`, `GET`, `PTTL`, `EXEC` (one round trip, no Lua). The key's TTL is the
//!   expiry (Express's touch does not rewrite the JSON); a key without TTL falls back to
//!   `cookie.expires`. The version is the first 64 bits of the SHA-1 of the stored text.
//! - `save`: on a server with `SET … IFEQ`, right after a load of the same version: `SET key
//!   json IFEQ <the JSON loaded> EX ttl`, one ordinary command (comparing the text is exactly
//!   the compare-and-set on its hash). Otherwise, or when that finds other text, one script:
//!   compare-and-set on the hash (so two Rust requests never lose each other's update), then
//!   `SET key json EX ttl`. A ttl ≤ 0 deletes the key, as connect-redis does. A Node write in
//!   between is simply overwritten or overwrites: last-write-wins.
//! - `touch`: `EXPIRE key ttl`, as connect-redis does.
//! - `delete`: `DEL key`.
//! - No user index: connect-redis keeps none. `list_for_user`/`delete_for_user` return
//!   [`StoreError::Unsupported`].

use std::sync::LazyLock;

use coatcheck_core::{ExpressFormat, Record, SessionId, StoreError, Timestamp};
use redis::{Script, Value};

use crate::ctx::Ctx;
use crate::error::UnexpectedReply;

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

/// The version of a stored text: the first 64 bits of its SHA-1 (what the save script
/// computes with `redis.sha1hex`).
fn version_of_text(json: &[u8]) -> u64 {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(json);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
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
        // Before the write: a probe after it could time out an operation that succeeded.
        let cas = cx.cas().await;
        let reply = cx
            .query(
                redis::cmd("SET")
                    .arg(cx.session_key(&r.id))
                    .arg(&json)
                    .arg("EX")
                    .arg(ttl)
                    .arg("NX"),
            )
            .await?;
        match reply {
            Value::Okay | Value::SimpleString(_) => {
                // The caller holds this record at `r.version` (1), not at the hash of the
                // text: remembering the text under that version lets its first save compare
                // the text itself (the script, comparing hashes, would refuse it once).
                if cas {
                    cx.seen().put(&r.id, r.version, json.into_bytes());
                }
                Ok(())
            }
            Value::Nil => Err(StoreError::IdTaken),
            _ => Err(unexpected("SET NX")),
        }
    }

    pub(crate) async fn load(
        &self,
        cx: &Ctx,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let key = cx.session_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let reply = cx.query_pipe(&pipe).await?;
        let mut parts = match reply {
            Value::Array(a) if a.len() == 2 => a.into_iter(),
            _ => return Err(unexpected("MULTI GET PTTL EXEC")),
        };
        let (Some(json), Some(pttl)) = (parts.next(), parts.next()) else {
            return Err(unexpected("MULTI GET PTTL EXEC"));
        };
        let json = match json {
            Value::Nil => return Ok(None),
            other => text(other).ok_or_else(|| unexpected("GET"))?,
        };
        let pttl = match pttl {
            Value::Int(i) => i,
            _ => return Err(unexpected("PTTL")),
        };
        let version = version_of_text(&json);
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
        if cx.cas().await {
            cx.seen().put(id, version, json);
        }
        Ok(Some(session.into_record(id.clone(), expires_at, version)))
    }

    pub(crate) async fn save(&self, cx: &Ctx, r: &Record) -> Result<u64, StoreError> {
        let now = cx.now();
        let json = self.format.encode(r, now)?;
        let ttl = ttl_secs(r.expires_at, now);
        let cas = cx.cas().await;
        if cas && ttl > 0 {
            if let Some(seen) = cx.seen().get(&r.id).filter(|e| e.version == r.version) {
                let mut set = redis::cmd("SET");
                set.arg(cx.session_key(&r.id))
                    .arg(&json)
                    .arg("IFEQ")
                    .arg(&seen.bytes)
                    .arg("EX")
                    .arg(ttl);
                if let Some(Value::Okay | Value::SimpleString(_)) = cx.query_ifeq(&set).await? {
                    let version = version_of_text(json.as_bytes());
                    cx.seen().put(&r.id, version, json.into_bytes());
                    return Ok(version);
                }
            }
        }
        let mut inv = SAVE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(format!("{:016x}", r.version))
            .arg(&json)
            .arg(ttl);
        let reply = cx.invoke(&inv).await;
        if cas {
            cx.seen().forget(&r.id);
        }
        match reply? {
            Value::Int(0) => Err(StoreError::NotFound),
            Value::Int(-1) => Err(StoreError::Conflict),
            other => {
                let version = text(other)
                    .as_deref()
                    .and_then(version_of)
                    .ok_or_else(|| unexpected("express save script"))?;
                if cas && ttl > 0 {
                    cx.seen().put(&r.id, version, json.into_bytes());
                }
                Ok(version)
            }
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
        cx.seen().forget(id);
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
    fn the_version_of_a_text_is_the_first_64_bits_of_its_sha1() {
        // SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
        assert_eq!(version_of_text(b"abc"), 0xa999_3e36_4706_816a);
    }

    #[test]
    fn versions_are_sixteen_hex_digits_both_ways() {
        let v = version_of(b"00ff00ff00ff00ff").unwrap();
        assert_eq!(format!("{v:016x}"), "00ff00ff00ff00ff");
        assert_eq!(version_of(b"zz"), None);
    }
}
