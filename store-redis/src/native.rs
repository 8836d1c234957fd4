//! The native layout: one hash per session, Lua compare-and-set, a set per user.
//!
//! ```text
//! {prefix}{id}            HASH  v = version (decimal)      PEXPIREAT expires_at
//!                               d = codec bytes
//!                               c = created_at (ms, decimal)
//!                               e = expires_at (ms, decimal)
//!                               u = user id (absent when none)
//! {prefix}user:{user id}  SET   session ids                PEXPIREAT >= its longest session
//! ```
//!
//! Session ids only use `A-Z a-z 0-9 - _`, so `{prefix}user:...` can never be a session key.

use std::collections::HashSet;
use std::sync::Arc;

use coatcheck_core::{Codec, DecodeError, Record, SessionId, SessionInfo, StoreError, Timestamp};
use futures_util::stream::{self, StreamExt as _};
use redis::Value;

use crate::conn::Topology;
use crate::error::UnexpectedReply;
use crate::scripts::{self, CONFLICT, MALFORMED, NONE, OK, WRONG_TYPE};
use crate::store::Ctx;

/// How many per-session commands a cluster `list_for_user`/`delete_for_user` keeps in flight.
const CLUSTER_FAN_OUT: usize = 64;

/// Field/value pairs of a hash, raw.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// A listed session, raw: id, created (`c`), expires (`e`).
type RawInfo = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The native format: a hash per session, data through a [`Codec`].
#[derive(Debug, Clone)]
pub(crate) struct Native {
    pub(crate) codec: Arc<dyn Codec>,
}

/// What a session script reports.
#[derive(Debug)]
struct Outcome {
    code: i64,
    /// The user stored in the record before the script ran.
    user: Option<Vec<u8>>,
    /// The `expires_at` stored before the script ran.
    old_expires: Option<i64>,
}

fn unexpected(what: &'static str) -> StoreError {
    StoreError::backend(UnexpectedReply { what })
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

impl Outcome {
    fn parse(v: Value, what: &'static str) -> Result<Outcome, StoreError> {
        let mut it = array(v).ok_or_else(|| unexpected(what))?.into_iter();
        let (Some(code), Some(has_user), Some(user), Some(old_e)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(unexpected(what));
        };
        let code = int(&code).ok_or_else(|| unexpected(what))?;
        let user = match int(&has_user) {
            Some(1) => Some(bytes(user).ok_or_else(|| unexpected(what))?),
            _ => None,
        };
        let old_expires =
            bytes(old_e).and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()));
        Ok(Outcome {
            code,
            user,
            old_expires,
        })
    }
}

fn decode_err(message: &str) -> StoreError {
    StoreError::Decode(DecodeError::new(message))
}

/// The failures every session script shares; `None` for the op-specific codes.
fn common_failure(code: i64) -> Option<StoreError> {
    match code {
        WRONG_TYPE => Some(decode_err(
            "the session key holds a value that is not a coatcheck session hash",
        )),
        MALFORMED => Some(decode_err(
            "the session hash lacks a readable version or expiry field",
        )),
        _ => None,
    }
}

fn parse_num<T: std::str::FromStr>(raw: &[u8], field: &str) -> Result<T, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            StoreError::Decode(DecodeError::new(format!(
                "session field `{field}` is not a number"
            )))
        })
}

/// A reply of field/value pairs (HGETALL: an array in RESP2, a map in RESP3).
fn pairs(v: Value) -> Result<Pairs, StoreError> {
    const WHAT: &str = "HGETALL";
    match v {
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    bytes(k).ok_or_else(|| unexpected(WHAT))?,
                    bytes(v).ok_or_else(|| unexpected(WHAT))?,
                ))
            })
            .collect(),
        other => {
            let flat = array(other).ok_or_else(|| unexpected(WHAT))?;
            if flat.len() % 2 != 0 {
                return Err(unexpected(WHAT));
            }
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((
                    bytes(k).ok_or_else(|| unexpected(WHAT))?,
                    bytes(v).ok_or_else(|| unexpected(WHAT))?,
                ));
            }
            Ok(out)
        }
    }
}

impl Native {
    pub(crate) async fn create(&self, cx: &Arc<Ctx>, r: &Record) -> Result<(), StoreError> {
        let data = self.codec.encode(&r.data)?;
        let now = cx.now();
        let user = r.user_id.as_deref();
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::CREATE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(now.as_millis())
            .arg(r.id.as_str())
            .arg(data)
            .arg(r.created_at.as_millis())
            .arg(r.expires_at.as_millis())
            .arg(flag(user.is_some()))
            .arg(user.unwrap_or(""))
            .arg(cx.index_prefix())
            .arg(flag(!cluster));
        let out = Outcome::parse(cx.invoke(&inv).await?, "create script")?;
        match out.code {
            OK => {
                if let (true, Some(user)) = (cluster && r.expires_at > now, user) {
                    cx.index_add(user.as_bytes(), &r.id, r.expires_at, now)
                        .await?;
                }
                Ok(())
            }
            NONE => Err(StoreError::IdTaken),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("create script"))),
        }
    }

    pub(crate) async fn load(
        &self,
        cx: &Ctx,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let reply = cx
            .query(redis::cmd("HGETALL").arg(cx.session_key(id)))
            .await?;
        let fields = pairs(reply)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let now = cx.now();
        let mut v = None;
        let mut d = None;
        let mut c = None;
        let mut e = None;
        let mut u = None;
        for (name, value) in fields {
            match name.as_slice() {
                b"v" => v = Some(value),
                b"d" => d = Some(value),
                b"c" => c = Some(value),
                b"e" => e = Some(value),
                b"u" => u = Some(value),
                _ => {}
            }
        }
        let (Some(v), Some(d), Some(c), Some(e)) = (v, d, c, e) else {
            return Err(decode_err(
                "the session hash lacks one of the fields v, d, c, e",
            ));
        };
        let expires_at = Timestamp::from_millis(parse_num(&e, "e")?);
        if expires_at <= now {
            return Ok(None);
        }
        let created_at = Timestamp::from_millis(parse_num(&c, "c")?);
        let version: u64 = parse_num(&v, "v")?;
        let data = self.codec.decode(&d)?;
        let user_id = match u {
            Some(u) => Some(String::from_utf8(u).map_err(|e| {
                StoreError::Decode(DecodeError::with_source("session user id is not UTF-8", e))
            })?),
            None => None,
        };
        let mut record = Record::new(id.clone(), created_at, expires_at);
        record.data = data;
        record.version = version;
        record.user_id = user_id;
        Ok(Some(record))
    }

    pub(crate) async fn save(&self, cx: &Arc<Ctx>, r: &Record) -> Result<u64, StoreError> {
        let data = self.codec.encode(&r.data)?;
        let now = cx.now();
        let user = r.user_id.as_deref();
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::SAVE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(now.as_millis())
            .arg(r.id.as_str())
            .arg(r.version.to_string())
            .arg(data)
            .arg(r.expires_at.as_millis())
            .arg(flag(user.is_some()))
            .arg(user.unwrap_or(""))
            .arg(cx.index_prefix())
            .arg(flag(!cluster))
            .arg(r.version.saturating_add(1).to_string());
        let out = Outcome::parse(cx.invoke(&inv).await?, "save script")?;
        match out.code {
            OK => {
                if let (true, Some(user)) = (cluster && r.expires_at > now, user) {
                    // The index must hold the session and outlive it. If neither the user
                    // nor a later expiry changed anything, it already does. (A session that
                    // moved away from a user stays in that user's set until a read prunes
                    // it.)
                    let same_user = out.user.as_deref() == Some(user.as_bytes());
                    let not_later = out
                        .old_expires
                        .is_some_and(|old| r.expires_at.as_millis() <= old);
                    if !(same_user && not_later) {
                        cx.index_add(user.as_bytes(), &r.id, r.expires_at, now)
                            .await?;
                    }
                }
                Ok(r.version.saturating_add(1))
            }
            NONE => Err(StoreError::NotFound),
            CONFLICT => Err(StoreError::Conflict),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("save script"))),
        }
    }

    pub(crate) async fn touch(
        &self,
        cx: &Arc<Ctx>,
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let now = cx.now();
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::TOUCH_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(id))
            .arg(now.as_millis())
            .arg(id.as_str())
            .arg(expires_at.as_millis())
            .arg(cx.index_prefix())
            .arg(flag(!cluster));
        let out = Outcome::parse(cx.invoke(&inv).await?, "touch script")?;
        match out.code {
            OK => {
                if let (true, Some(user)) = (cluster && expires_at > now, out.user.as_deref()) {
                    let later = out
                        .old_expires
                        .is_none_or(|old| expires_at.as_millis() > old);
                    if later {
                        cx.index_add(user, id, expires_at, now).await?;
                    }
                }
                Ok(true)
            }
            NONE => Ok(false),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("touch script"))),
        }
    }

    pub(crate) async fn delete(&self, cx: &Ctx, id: &SessionId) -> Result<bool, StoreError> {
        let now = cx.now();
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::DELETE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(id))
            .arg(now.as_millis())
            .arg(id.as_str())
            .arg(cx.index_prefix())
            .arg(flag(!cluster));
        let out = Outcome::parse(cx.invoke(&inv).await?, "delete script")?;
        if let (true, Some(user)) = (cluster, out.user.as_deref()) {
            cx.query(redis::cmd("SREM").arg(cx.index_key(user)).arg(id.as_str()))
                .await?;
        }
        match out.code {
            OK => Ok(true),
            NONE => Ok(false),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("delete script"))),
        }
    }

    pub(crate) async fn list_for_user(
        &self,
        cx: &Ctx,
        user: &str,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let now = cx.now();
        let index = cx.index_key(user.as_bytes());
        let triples: Vec<RawInfo> = match cx.topology() {
            Topology::Single => {
                let mut inv = scripts::LIST_FOR_USER_SCRIPT.prepare_invoke();
                inv.key(index)
                    .arg(now.as_millis())
                    .arg(cx.prefix())
                    .arg(user);
                let flat =
                    array(cx.invoke(&inv).await?).ok_or_else(|| unexpected("list script"))?;
                if flat.len() % 3 != 0 {
                    return Err(unexpected("list script"));
                }
                let mut out = Vec::with_capacity(flat.len() / 3);
                let mut it = flat.into_iter().map(bytes);
                while let (Some(id), Some(c), Some(e)) = (it.next(), it.next(), it.next()) {
                    match (id, c, e) {
                        (Some(id), Some(c), Some(e)) => out.push((id, c, e)),
                        _ => return Err(unexpected("list script")),
                    }
                }
                out
            }
            Topology::Cluster => self.cluster_list(cx, user, &index, now).await?,
        };
        triples
            .into_iter()
            .map(|(id, c, e)| {
                let id = std::str::from_utf8(&id)
                    .ok()
                    .and_then(|s| SessionId::parse(s).ok())
                    .ok_or_else(|| decode_err("a user index member is not a session id"))?;
                let created = Timestamp::from_millis(parse_num(&c, "c")?);
                let expires = Timestamp::from_millis(parse_num(&e, "e")?);
                Ok(SessionInfo::new(id, created, expires))
            })
            .collect()
    }

    /// Cluster `list_for_user`: SMEMBERS, then one HMGET per member (fanned out, each to
    /// the member's own slot), then one SREM of the stale members.
    async fn cluster_list(
        &self,
        cx: &Ctx,
        user: &str,
        index: &[u8],
        now: Timestamp,
    ) -> Result<Vec<RawInfo>, StoreError> {
        let members = self.members(cx, index).await?;
        let checks = stream::iter(members)
            .map(|(raw, id)| async move {
                let Some(id) = id else {
                    return Ok::<_, StoreError>((raw, None));
                };
                let reply = cx
                    .query(
                        redis::cmd("HMGET")
                            .arg(cx.session_key(&id))
                            .arg("u")
                            .arg("c")
                            .arg("e"),
                    )
                    .await;
                let fields = match reply {
                    Ok(v) => array(v).ok_or_else(|| unexpected("HMGET"))?,
                    // Something else lives at that key: not a session of this user.
                    Err(StoreError::Decode(_)) => return Ok((raw, None)),
                    Err(e) => return Err(e),
                };
                let mut it = fields.into_iter().map(bytes);
                let (u, c, e) = (
                    it.next().flatten(),
                    it.next().flatten(),
                    it.next().flatten(),
                );
                if u.as_deref() != Some(user.as_bytes()) {
                    return Ok((raw, None));
                }
                let live = e
                    .as_deref()
                    .and_then(|e| std::str::from_utf8(e).ok())
                    .and_then(|e| e.parse::<i64>().ok())
                    .is_none_or(|e| e > now.as_millis());
                if !live {
                    return Ok((raw, None));
                }
                Ok((
                    raw.clone(),
                    Some((raw, c.unwrap_or_default(), e.unwrap_or_default())),
                ))
            })
            .buffer_unordered(CLUSTER_FAN_OUT)
            .collect::<Vec<_>>()
            .await;
        let mut keep = Vec::new();
        let mut stale = Vec::new();
        for check in checks {
            match check? {
                (_, Some(found)) => keep.push(found),
                (raw, None) => stale.push(raw),
            }
        }
        if !stale.is_empty() {
            cx.query(redis::cmd("SREM").arg(index).arg(stale)).await?;
        }
        Ok(keep)
    }

    /// The members of a user index, each with its parsed id (`None`: not a session id).
    async fn members(
        &self,
        cx: &Ctx,
        index: &[u8],
    ) -> Result<Vec<(Vec<u8>, Option<SessionId>)>, StoreError> {
        let reply = cx.query(redis::cmd("SMEMBERS").arg(index)).await?;
        let members = array(reply).ok_or_else(|| unexpected("SMEMBERS"))?;
        members
            .into_iter()
            .map(|m| {
                let raw = bytes(m).ok_or_else(|| unexpected("SMEMBERS"))?;
                let id = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| SessionId::parse(s).ok());
                Ok((raw, id))
            })
            .collect()
    }

    pub(crate) async fn delete_for_user(
        &self,
        cx: &Ctx,
        user: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let now = cx.now();
        let index = cx.index_key(user.as_bytes());
        match cx.topology() {
            Topology::Single => {
                let mut inv = scripts::DELETE_FOR_USER_SCRIPT.prepare_invoke();
                inv.key(index)
                    .arg(now.as_millis())
                    .arg(cx.prefix())
                    .arg(user)
                    .arg(flag(except.is_some()))
                    .arg(except.map_or("", SessionId::as_str));
                let n = cx.invoke(&inv).await?;
                int(&n)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| unexpected("delete_for_user script"))
            }
            Topology::Cluster => {
                // Pass after pass until the index holds nothing but `except`: one pass over
                // a snapshot of the set misses the new id of a rotation that replaced a
                // listed session after the SMEMBERS (review finding; the history checker's
                // revocation invariant).
                let mut removed = 0u64;
                loop {
                    let members: Vec<_> = self
                        .members(cx, &index)
                        .await?
                        .into_iter()
                        .filter(|(_, id)| id.is_none() || id.as_ref() != except)
                        .collect();
                    if members.is_empty() {
                        return Ok(removed);
                    }
                    let results = stream::iter(members)
                        .map(|(raw, id)| async move {
                            let Some(id) = id else {
                                return Ok::<_, StoreError>((raw, 0));
                            };
                            let mut inv = scripts::DELETE_IF_USER_SCRIPT.prepare_invoke();
                            inv.key(cx.session_key(&id)).arg(now.as_millis()).arg(user);
                            let code = int(&cx.invoke(&inv).await?)
                                .ok_or_else(|| unexpected("delete_if_user script"))?;
                            Ok((raw, code))
                        })
                        .buffer_unordered(CLUSTER_FAN_OUT)
                        .collect::<Vec<_>>()
                        .await;
                    let mut gone = HashSet::new();
                    let mut first_err = None;
                    for r in results {
                        match r {
                            Ok((raw, code)) => {
                                if code == 1 {
                                    removed += 1;
                                }
                                gone.insert(raw);
                            }
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    if !gone.is_empty() {
                        cx.query(
                            redis::cmd("SREM")
                                .arg(&index)
                                .arg(gone.into_iter().collect::<Vec<_>>()),
                        )
                        .await?;
                    }
                    if let Some(e) = first_err {
                        return Err(e);
                    }
                }
            }
        }
    }
}
