//! The native layout: one string per session (`value.rs`), a set per user; compare-and-set
//! by `SET … IFEQ` where the server has it (`cas.rs`), by Lua scripts otherwise.
//!
//! ```text
//! {prefix}{id}            STRING  C1 {v} {c} {e} {user length or -}:{user}{data}   PXAT e
//! {prefix}user:{user id}  SET     session ids        PEXPIREAT >= its longest session
//! ```
//!
//! Records of coatcheck-redis 0.1 (a hash per session, fields v, d, c, e, u) are still read,
//! listed, touched and deleted; their first save writes the string.
//!
//! Session ids only use `A-Z a-z 0-9 - _`, so `{prefix}user:...` (and the IFEQ probe key
//! `{prefix}probe:ifeq`) can never be a session key.

use std::sync::Arc;

use coatcheck_core::{Codec, DecodeError, Record, SessionId, StoreError, Timestamp};
use redis::Value;

use crate::conn::Topology;
use crate::ctx::Ctx;
use crate::error::UnexpectedReply;
use crate::scripts::{self, CONFLICT, MALFORMED, NONE, OK, WRONG_TYPE};
use crate::value;

mod users;

/// Field/value pairs of a hash, raw.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

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

/// A bulk string, or `None` for nil.
fn bytes_or_nil(v: Value, what: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        other => bytes(other).map(Some).ok_or_else(|| unexpected(what)),
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
            "the session key holds a value of another type (neither a session string nor a 0.1 session hash)",
        )),
        MALFORMED => Some(decode_err(
            "the session key holds a string that is not a coatcheck session value, or a hash without a readable version or expiry",
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
    /// The stored value of `r` at `version`, and its codec bytes' owner.
    fn value_of(&self, r: &Record, version: u64) -> Result<Vec<u8>, StoreError> {
        let data = self.codec.encode_for(&r.id, &r.data)?;
        let block = r
            .device
            .as_ref()
            .map(|d| value::device_block(d.user_agent.as_deref(), d.ip.as_deref()));
        let device = r
            .device
            .as_ref()
            .zip(block.as_deref())
            .map(|(d, block)| value::RawDevice {
                handle: d.handle.as_str().as_bytes(),
                block,
            });
        Ok(value::encode(
            version,
            r.created_at.as_millis(),
            r.expires_at.as_millis(),
            r.last_seen.as_millis(),
            r.user_id.as_deref().map(str::as_bytes),
            device,
            &data,
        ))
    }

    pub(crate) async fn create(&self, cx: &Arc<Ctx>, r: &Record) -> Result<(), StoreError> {
        let value = self.value_of(r, 1)?;
        let now = cx.now();
        let user = r.user_id.as_deref();
        let cas = cx.cas().await;
        // Without a user there is no index to keep in step: `SET … NX` is the whole create.
        // Refused (the id is taken, or holds a record only our clock calls expired): the
        // script decides.
        if cas && user.is_none() && r.expires_at > now {
            let reply = cx
                .query(
                    redis::cmd("SET")
                        .arg(cx.session_key(&r.id))
                        .arg(&value)
                        .arg("NX")
                        .arg("PXAT")
                        .arg(r.expires_at.as_millis()),
                )
                .await?;
            if matches!(reply, Value::Okay | Value::SimpleString(_)) {
                cx.seen().put(&r.id, 1, value);
                return Ok(());
            }
        }
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::CREATE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(now.as_millis())
            .arg(r.id.as_str())
            .arg(&value)
            .arg(r.expires_at.as_millis())
            .arg(flag(user.is_some()))
            .arg(user.unwrap_or(""))
            .arg(cx.index_prefix())
            .arg(flag(!cluster));
        let out = Outcome::parse(cx.invoke(&inv).await?, "create script")?;
        match out.code {
            OK => {
                if let (true, Some(user)) = (cluster && r.expires_at > now, user) {
                    cx.index_add(user.as_bytes(), &r.id, r.expires_at).await?;
                }
                if cas {
                    cx.seen().put(&r.id, 1, value);
                }
                Ok(())
            }
            NONE => Err(StoreError::IdTaken),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("create script"))),
        }
    }

    /// A record from a stored value; `None` when it expired by the store's clock.
    fn record_of(
        &self,
        id: &SessionId,
        p: &value::Parsed<'_>,
        now: Timestamp,
    ) -> Result<Option<Record>, StoreError> {
        let expires_at = Timestamp::from_millis(p.expires);
        if expires_at <= now {
            return Ok(None);
        }
        let user_id = match p.user {
            Some(u) => Some(String::from_utf8(u.to_vec()).map_err(|e| {
                StoreError::Decode(DecodeError::with_source("session user id is not UTF-8", e))
            })?),
            None => None,
        };
        let mut record = Record::new(id.clone(), Timestamp::from_millis(p.created), expires_at);
        record.data = self.codec.decode_for(id, p.data)?;
        record.version = p.version;
        record.user_id = user_id;
        if let Some(d) = &p.device {
            record.device = Some(users::device_of(d.handle, d.block)?);
        }
        if let Some(seen) = p.seen {
            record.last_seen = Timestamp::from_millis(seen);
        }
        Ok(Some(record))
    }

    pub(crate) async fn load(
        &self,
        cx: &Ctx,
        id: &SessionId,
    ) -> Result<Option<Record>, StoreError> {
        let cas = cx.cas().await;
        let reply = match cx.query(redis::cmd("GET").arg(cx.session_key(id))).await {
            Ok(reply) => reply,
            // A hash of the earlier layout (until its first write moves it).
            Err(StoreError::Decode(_)) => return self.load_hash(cx, id).await,
            Err(e) => return Err(e),
        };
        let Some(stored) = bytes_or_nil(reply, "GET")? else {
            return Ok(None);
        };
        let p = value::parse(&stored).ok_or_else(|| {
            decode_err("the session key holds a string that is not a coatcheck session value")
        })?;
        let record = self.record_of(id, &p, cx.now())?;
        if cas && record.is_some() {
            cx.seen().put(id, p.version, stored);
        }
        Ok(record)
    }

    /// `load` of a record stored by coatcheck-redis 0.1 (a hash with fields v, d, c, e, u).
    async fn load_hash(&self, cx: &Ctx, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let reply = cx
            .query(redis::cmd("HGETALL").arg(cx.session_key(id)))
            .await?;
        let fields = pairs(reply)?;
        if fields.is_empty() {
            return Ok(None);
        }
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
        let p = value::Parsed {
            version: parse_num(&v, "v")?,
            created: parse_num(&c, "c")?,
            expires: parse_num(&e, "e")?,
            seen: None,
            user: u.as_deref(),
            device: None,
            data: &d,
        };
        self.record_of(id, &p, cx.now())
    }

    /// The fast path of `save` and `touch` on a server with `SET … IFEQ`: replaces the
    /// remembered bytes `old` with `value` in one ordinary command. `index`: the session's
    /// user (unchanged by this write) and whether its expiry moves later. `Ok(false)`: not
    /// done, the script decides.
    ///
    /// The index gets what the script's `index_add` would do, first ([`Ctx::push_index_add`];
    /// its `SADD` brings back a member lost to an eviction, a failed cluster index write or
    /// a prune by a process whose clock runs ahead, as the script path does). On a single node in
    /// the same round trip, always, as the script does; on a cluster (another slot, another
    /// round trip) when the expiry moves later, as the script path does there. A member added
    /// for a write that then fails is pruned by the next read of the index.
    async fn replace(
        &self,
        cx: &Ctx,
        id: &SessionId,
        old: &[u8],
        value: &[u8],
        expires: i64,
        index: Option<(&[u8], bool)>,
    ) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(cx.session_key(id))
            .arg(value)
            .arg("IFEQ")
            .arg(old)
            .arg("PXAT")
            .arg(expires);
        let reply = match (index, cx.topology()) {
            (Some((user, _)), Topology::Single) => {
                let mut pipe = redis::pipe();
                cx.push_index_add(&mut pipe, user, id, expires);
                pipe.add_command(set);
                cx.query_ifeq_pipe(&pipe).await?
            }
            (Some((user, true)), Topology::Cluster) => {
                // Another slot: the index first, so that it never expires before the session.
                cx.index_add(user, id, Timestamp::from_millis(expires))
                    .await?;
                cx.query_ifeq(&set).await?
            }
            (None | Some((_, false)), _) => cx.query_ifeq(&set).await?,
        };
        Ok(matches!(
            reply,
            Some(Value::Okay) | Some(Value::SimpleString(_))
        ))
    }

    pub(crate) async fn save(&self, cx: &Arc<Ctx>, r: &Record) -> Result<u64, StoreError> {
        let next = r.version.saturating_add(1);
        let value = self.value_of(r, next)?;
        let now = cx.now();
        let user = r.user_id.as_deref();
        let cas = cx.cas().await;
        if cas && r.expires_at > now {
            if let Some(seen) = cx.seen().get(&r.id).filter(|e| e.version == r.version) {
                // Only when the user stays the same (a change of user is the script's).
                let old = value::parse(&seen.bytes).filter(|old| {
                    old.expires > now.as_millis() && old.user == user.map(str::as_bytes)
                });
                if let Some(old) = old {
                    let e = r.expires_at.as_millis();
                    let index = user.map(|u| (u.as_bytes(), e > old.expires));
                    if self
                        .replace(cx, &r.id, &seen.bytes, &value, e, index)
                        .await?
                    {
                        cx.seen().put(&r.id, next, value);
                        return Ok(next);
                    }
                }
            }
        }
        let cluster = cx.topology() == Topology::Cluster;
        let mut inv = scripts::SAVE_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .arg(now.as_millis())
            .arg(r.id.as_str())
            .arg(r.version.to_string())
            .arg(&value)
            .arg(r.expires_at.as_millis())
            .arg(flag(user.is_some()))
            .arg(user.unwrap_or(""))
            .arg(cx.index_prefix())
            .arg(flag(!cluster));
        let out = Outcome::parse(cx.invoke(&inv).await?, "save script");
        if cas {
            cx.seen().forget(&r.id);
        }
        let out = out?;
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
                        cx.index_add(user.as_bytes(), &r.id, r.expires_at).await?;
                    }
                }
                if cas && r.expires_at > now {
                    cx.seen().put(&r.id, next, value);
                }
                Ok(next)
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
        let cas = cx.cas().await;
        if cas && expires_at > now {
            if let Some(seen) = cx.seen().get(id) {
                if let Some(old) =
                    value::parse(&seen.bytes).filter(|old| old.expires > now.as_millis())
                {
                    let e = expires_at.as_millis();
                    let value = value::with_expiry(&old, e, now.as_millis());
                    let index = old.user.map(|u| (u, e > old.expires));
                    if self.replace(cx, id, &seen.bytes, &value, e, index).await? {
                        cx.seen().put(id, seen.version, value);
                        return Ok(true);
                    }
                }
            }
        }
        if cas {
            cx.seen().forget(id);
        }
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
                        cx.index_add(user, id, expires_at).await?;
                    }
                }
                Ok(true)
            }
            NONE => Ok(false),
            code => Err(common_failure(code).unwrap_or_else(|| unexpected("touch script"))),
        }
    }

    /// The fast path of `delete` (after a load, on a server with `SET … IFEQ`): `GETDEL`,
    /// and `SREM` from the index of the user the deleted value names. Whether it was live and
    /// whose it was come from the value the server removed, never from the remembered bytes
    /// (`remembered_user` only lets a single node send the `SREM` in the same round trip; a
    /// value that turns out to name another user gets one more `SREM`). `None`: the key holds
    /// something `GETDEL` cannot take (a hash of the 0.1 layout), the script decides.
    async fn getdel(
        &self,
        cx: &Ctx,
        id: &SessionId,
        remembered_user: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        let key = cx.session_key(id);
        let mut pipe = redis::pipe();
        pipe.cmd("GETDEL").arg(&key);
        let sent_srem = match (remembered_user, cx.topology()) {
            (Some(user), Topology::Single) => {
                pipe.cmd("SREM").arg(cx.index_key(user)).arg(id.as_str());
                Some(user)
            }
            _ => None,
        };
        let mut replies = cx.query_pipe_each(&pipe).await?.into_iter();
        let removed = match replies.next() {
            Some(Ok(v)) => bytes_or_nil(v, "GETDEL")?,
            Some(Err(StoreError::Decode(_))) => return Ok(None),
            Some(Err(e)) => return Err(e),
            None => return Err(unexpected("GETDEL")),
        };
        if let Some(Err(e)) = replies.next() {
            return Err(e);
        }
        let Some(removed) = removed else {
            return Ok(Some(false));
        };
        // Something that was not a session value was removed: as the script does.
        let Some(old) = value::parse(&removed) else {
            return Ok(Some(false));
        };
        if let Some(user) = old.user.filter(|u| Some(*u) != sent_srem) {
            cx.query(redis::cmd("SREM").arg(cx.index_key(user)).arg(id.as_str()))
                .await?;
        }
        Ok(Some(old.expires > now.as_millis()))
    }

    pub(crate) async fn delete(&self, cx: &Ctx, id: &SessionId) -> Result<bool, StoreError> {
        let now = cx.now();
        let cluster = cx.topology() == Topology::Cluster;
        if cx.cas().await {
            if let Some(seen) = cx.seen().get(id) {
                cx.seen().forget(id);
                let user = value::parse(&seen.bytes).and_then(|p| p.user);
                if let Some(removed) = self.getdel(cx, id, user, now).await? {
                    return Ok(removed);
                }
            }
        }
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
}
