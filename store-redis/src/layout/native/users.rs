//! The user index: listing a user's sessions, revoking all of them, one device, and the
//! per-user session limit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{
    Device, DeviceHandle, LimitPolicy, Record, SessionId, SessionInfo, SessionLimit, StoreError,
    Timestamp,
};
use futures_util::stream::{self, StreamExt as _};

use super::{
    array, bytes, bytes_or_nil, common_failure, decode_err, flag, int, parse_num, unexpected,
    Native, Outcome,
};
use crate::conn::Topology;
use crate::ctx::Ctx;
use crate::scripts::{self, LIMIT_REACHED, NONE, OK};
use crate::value;

/// The single-key delete-if-user script (cluster paths): 0 not that user's (a stale index
/// member), 1 a live session removed, 2 an expired one removed.
async fn delete_if_user(
    cx: &Ctx,
    id: &SessionId,
    user: &str,
    now: Timestamp,
) -> Result<i64, StoreError> {
    let mut inv = scripts::DELETE_IF_USER_SCRIPT.prepare_invoke();
    inv.key(cx.session_key(id)).arg(now.as_millis()).arg(user);
    int(&cx.invoke(&inv).await?).ok_or_else(|| unexpected("delete_if_user script"))
}

/// How many per-session commands a cluster `list_for_user`/`delete_for_user` keeps in flight.
const CLUSTER_FAN_OUT: usize = 64;

/// A listed session, raw.
struct RawInfo {
    id: Vec<u8>,
    created: i64,
    expires: i64,
    /// `C2` values only.
    seen: Option<i64>,
    /// Handle and `{user agent}\n{ip}` block (`C2` values only).
    device: Option<(Vec<u8>, Vec<u8>)>,
}

impl RawInfo {
    fn into_info(self) -> Result<SessionInfo, StoreError> {
        let id = std::str::from_utf8(&self.id)
            .ok()
            .and_then(|s| SessionId::parse(s).ok())
            .ok_or_else(|| decode_err("a user index member is not a session id"))?;
        let created = Timestamp::from_millis(self.created);
        let device = match &self.device {
            Some((h, block)) => Some(device_of(h, block)?),
            None => None,
        };
        let seen = self.seen.map_or(created, Timestamp::from_millis);
        Ok(
            SessionInfo::new(id, created, Timestamp::from_millis(self.expires))
                .with_device(device, seen),
        )
    }
}

/// A [`Device`] from a stored handle and details block.
pub(super) fn device_of(handle: &[u8], block: &[u8]) -> Result<Device, StoreError> {
    let handle = std::str::from_utf8(handle)
        .ok()
        .and_then(DeviceHandle::parse)
        .ok_or_else(|| decode_err("stored device handle is not a handle"))?;
    let raw = value::RawDevice { handle: b"", block };
    let (ua, ip) = raw.details();
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    Ok(Device::new()
        .with_handle(handle)
        .with_user_agent(text(ua).as_deref())
        .with_ip(text(ip).as_deref()))
}

/// The user and the listing of the session at `id` (cluster listing): one `GET`, or one
/// `HMGET` for a hash of the earlier layout.
async fn read_info(
    cx: &Ctx,
    id: &SessionId,
    raw: Vec<u8>,
) -> Result<Option<(Option<Vec<u8>>, RawInfo)>, StoreError> {
    let key = cx.session_key(id);
    match cx.query(redis::cmd("GET").arg(&key)).await {
        Ok(reply) => {
            let Some(stored) = bytes_or_nil(reply, "GET")? else {
                return Ok(None);
            };
            let p =
                value::parse(&stored).ok_or_else(|| decode_err("not a coatcheck session value"))?;
            Ok(Some((
                p.user.map(<[u8]>::to_vec),
                RawInfo {
                    id: raw,
                    created: p.created,
                    expires: p.expires,
                    seen: p.seen,
                    device: p.device.map(|d| (d.handle.to_vec(), d.block.to_vec())),
                },
            )))
        }
        Err(StoreError::Decode(_)) => {
            let reply = cx
                .query(redis::cmd("HMGET").arg(&key).arg("u").arg("c").arg("e"))
                .await?;
            let fields = array(reply).ok_or_else(|| unexpected("HMGET"))?;
            let mut it = fields.into_iter().map(bytes);
            let (u, c, e) = (
                it.next().flatten(),
                it.next().flatten(),
                it.next().flatten(),
            );
            let num = |v: Option<Vec<u8>>, f| v.map_or(Ok(0), |v| parse_num(&v, f));
            Ok(Some((
                u,
                RawInfo {
                    id: raw,
                    created: num(c, "c")?,
                    expires: e.map_or(Ok(i64::MAX), |v| parse_num(&v, "e"))?,
                    seen: None,
                    device: None,
                },
            )))
        }
        Err(e) => Err(e),
    }
}

impl Native {
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
                if flat.len() % 6 != 0 {
                    return Err(unexpected("list script"));
                }
                let mut out = Vec::with_capacity(flat.len() / 6);
                let mut it = flat.into_iter().map(bytes);
                while let Some(id) = it.next() {
                    let fields: Option<Vec<Vec<u8>>> =
                        std::iter::once(id).chain(it.by_ref().take(5)).collect();
                    let Some([id, c, e, s, h, d]) =
                        fields.and_then(|f| <[Vec<u8>; 6]>::try_from(f).ok())
                    else {
                        return Err(unexpected("list script"));
                    };
                    out.push(RawInfo {
                        id,
                        created: parse_num(&c, "c")?,
                        expires: parse_num(&e, "e")?,
                        seen: if s.is_empty() {
                            None
                        } else {
                            Some(parse_num(&s, "s")?)
                        },
                        device: (!h.is_empty()).then_some((h, d)),
                    });
                }
                out
            }
            Topology::Cluster => self.cluster_list(cx, user, &index, now).await?,
        };
        triples.into_iter().map(RawInfo::into_info).collect()
    }

    /// Cluster `list_for_user`: SMEMBERS, then one GET per member (fanned out, each to
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
                let (u, info) = match read_info(cx, &id, raw.clone()).await {
                    Ok(Some(found)) => found,
                    // Nothing there, or something else lives at that key: not a session of
                    // this user.
                    Ok(None) | Err(StoreError::Decode(_)) => return Ok((raw, None)),
                    Err(e) => return Err(e),
                };
                if u.as_deref() != Some(user.as_bytes()) || info.expires <= now.as_millis() {
                    return Ok((raw, None));
                }
                Ok((raw, Some(info)))
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
                            let code = delete_if_user(cx, &id, user, now).await?;
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

    /// Revokes every session of `user` with device handle `handle`: one script on a single
    /// node; on a cluster (the index and the sessions live in other slots) the index's
    /// members are read and each session of that device is deleted if it is still the
    /// user's (a session's handle never changes, so reading it first is safe).
    pub(crate) async fn delete_device(
        &self,
        cx: &Ctx,
        user: &str,
        handle: &str,
    ) -> Result<bool, StoreError> {
        let now = cx.now();
        let index = cx.index_key(user.as_bytes());
        if cx.topology() == Topology::Single {
            let mut inv = scripts::DELETE_DEVICE_SCRIPT.prepare_invoke();
            inv.key(index)
                .arg(now.as_millis())
                .arg(cx.prefix())
                .arg(user)
                .arg(handle);
            let n =
                int(&cx.invoke(&inv).await?).ok_or_else(|| unexpected("delete_device script"))?;
            return Ok(n > 0);
        }
        let members = self.members(cx, &index).await?;
        let results = stream::iter(members)
            .map(|(raw, id)| async move {
                let Some(id) = id else {
                    return Ok::<_, StoreError>(None);
                };
                match read_info(cx, &id, raw.clone()).await {
                    Ok(Some((u, info)))
                        if u.as_deref() == Some(user.as_bytes())
                            && info
                                .device
                                .as_ref()
                                .is_some_and(|(h, _)| h == handle.as_bytes()) => {}
                    Ok(_) | Err(StoreError::Decode(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
                let code = delete_if_user(cx, &id, user, now).await?;
                Ok(Some((raw, code == 1)))
            })
            .buffer_unordered(CLUSTER_FAN_OUT)
            .collect::<Vec<_>>()
            .await;
        let mut gone = Vec::new();
        let mut live = false;
        for r in results {
            if let Some((raw, was_live)) = r? {
                live |= was_live;
                gone.push(raw);
            }
        }
        if !gone.is_empty() {
            cx.query(redis::cmd("SREM").arg(&index).arg(gone)).await?;
        }
        Ok(live)
    }

    /// `create` of a signed-in session under a per-user limit: one script (count, evict or
    /// refuse, create, index) on a single node. On a cluster no script can see the index
    /// and the sessions (other slots): a per-user lease serialises the limited creates
    /// instead (see `create_limited_cluster`).
    pub(crate) async fn create_limited(
        &self,
        cx: &Arc<Ctx>,
        r: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let Some(user) = r.user_id.as_deref() else {
            return Err(StoreError::Unsupported(
                "create_limited of a record without user",
            ));
        };
        if cx.topology() == Topology::Cluster {
            return self.create_limited_cluster(cx, r, user, limit).await;
        }
        let value = self.value_of(r, 1)?;
        let now = cx.now();
        let policy = match limit.policy {
            LimitPolicy::Refuse => "refuse",
            _ => "evict",
        };
        let mut inv = scripts::CREATE_LIMITED_SCRIPT.prepare_invoke();
        inv.key(cx.session_key(&r.id))
            .key(cx.index_key(user.as_bytes()))
            .arg(now.as_millis())
            .arg(r.id.as_str())
            .arg(&value)
            .arg(r.expires_at.as_millis())
            .arg(flag(true))
            .arg(user)
            .arg(cx.index_prefix())
            .arg(flag(true))
            .arg(limit.max.max(1))
            .arg(policy)
            .arg(cx.prefix());
        let out = Outcome::parse(cx.invoke(&inv).await?, "create_limited script")?;
        match out.code {
            OK => Ok(out
                .old_expires
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)),
            NONE => Err(StoreError::IdTaken),
            LIMIT_REACHED => Err(StoreError::LimitReached),
            code => {
                Err(common_failure(code).unwrap_or_else(|| unexpected("create_limited script")))
            }
        }
    }

    /// Redis Cluster: a lease `SET {prefix}limit:{user} token NX PX 10000` (retried for up
    /// to [`lease_wait`], then a backend error), under it the cluster listing, the evictions
    /// (the single-key delete-if-user script) or the refusal, the create, then the lease
    /// removed by a compare-and-delete on its token. Limited creates of one user are
    /// serialised as long as a holder finishes within the lease (each step is bounded by the
    /// store's timeouts); a lease a crashed process left expires by itself. The caller runs
    /// this as a task of its own (`to_completion`), so that a caller dropped while the lease
    /// is held does not leave it behind.
    async fn create_limited_cluster(
        &self,
        cx: &Arc<Ctx>,
        r: &Record,
        user: &str,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let lease = format!("{}limit:{user}", cx.prefix());
        let token = SessionId::generate();
        let started = std::time::Instant::now();
        let wait = lease_wait(cx.operation_timeout());
        let mut attempt = 0u64;
        loop {
            let reply = cx
                .query(
                    redis::cmd("SET")
                        .arg(&lease)
                        .arg(token.as_str())
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE.as_millis() as u64),
                )
                .await?;
            if matches!(reply, redis::Value::Okay | redis::Value::SimpleString(_)) {
                break;
            }
            if started.elapsed() > wait {
                return Err(StoreError::backend(LeaseBusy(wait)));
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(attempt.min(20))).await;
        }
        let outcome = self.create_under_lease(cx, r, user, limit).await;
        let mut release = scripts::RELEASE_SCRIPT.prepare_invoke();
        release.key(&lease).arg(token.as_str());
        if let Err(e) = cx.invoke(&release).await {
            tracing::warn!(error = %e, "could not release a session-limit lease; it expires by itself");
        }
        outcome
    }

    async fn create_under_lease(
        &self,
        cx: &Arc<Ctx>,
        r: &Record,
        user: &str,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let now = cx.now();
        // A create that cannot happen (its id is a live session's) evicts nobody.
        if self.load(cx, &r.id).await?.is_some() {
            return Err(StoreError::IdTaken);
        }
        let index = cx.index_key(user.as_bytes());
        let mut live = self.cluster_list(cx, user, &index, now).await?;
        live.sort_by(|a, b| {
            (a.seen.unwrap_or(a.created), &a.id).cmp(&(b.seen.unwrap_or(b.created), &b.id))
        });
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = usize::try_from(limit.max.max(1)).unwrap_or(usize::MAX);
        let mut evicted = 0;
        if live.len() >= max {
            if limit.policy == LimitPolicy::Refuse {
                return Err(StoreError::LimitReached);
            }
            for victim in &live[..=live.len() - max] {
                let Some(id) = std::str::from_utf8(&victim.id)
                    .ok()
                    .and_then(|s| SessionId::parse(s).ok())
                else {
                    continue;
                };
                let code = delete_if_user(cx, &id, user, now).await?;
                cx.query(redis::cmd("SREM").arg(&index).arg(&victim.id))
                    .await?;
                if code == 1 {
                    evicted += 1;
                }
            }
        }
        self.create(cx, r).await?;
        Ok(evicted)
    }
}

/// How long a cluster limit lease holds before it expires by itself.
const LEASE: Duration = Duration::from_secs(10);
/// The longest a limited create waits for a user's lease (see [`lease_wait`]).
const LEASE_WAIT: Duration = Duration::from_secs(3);

/// How long a limited create waits for a user's lease before failing with [`LeaseBusy`]:
/// [`LEASE_WAIT`], and at most half the store's operation timeout (2.5 s at the default
/// 5 s), which leaves the other half for the last attempt and the work under the lease. So
/// the wait is always strictly shorter than the operation timeout (and than the layer's
/// `store_timeout`, 5 s by default): a create that cannot get the lease fails with this
/// store's own error instead of being cut by a timeout. Both are far shorter than [`LEASE`].
fn lease_wait(operation_timeout: Option<Duration>) -> Duration {
    operation_timeout.map_or(LEASE_WAIT, |t| LEASE_WAIT.min(t / 2))
}

#[derive(Debug, thiserror::Error)]
#[error("the per-user session limit lease of this user stayed taken for {0:?}")]
struct LeaseBusy(Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_wait_is_shorter_than_the_operation_timeout() {
        assert_eq!(lease_wait(None), LEASE_WAIT);
        for ms in [1, 10, 1_000, 5_000, 6_000, 60_000] {
            let t = Duration::from_millis(ms);
            assert!(lease_wait(Some(t)) < t, "{t:?}");
        }
        assert!(
            lease_wait(Some(crate::DEFAULT_OPERATION_TIMEOUT)) < crate::DEFAULT_OPERATION_TIMEOUT
        );
        assert!(LEASE_WAIT < LEASE);
    }
}
