//! What every operation needs: the connection and its topology, the key layout, the
//! clock, the operation timeout and the `SET … IFEQ` probe with its remembered bytes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, DecodeError, SessionId, StoreError, Timestamp};
use redis::{Cmd, Pipeline, RedisError, ScriptInvocation, Value};

use crate::cas::{self, Seen, Support};
use crate::conn::{Conn, LeaseRef, Source, Topology};
use crate::error::OperationTimedOut;
use crate::layout::express::Express;
use crate::layout::native::Native;
use crate::replication::{NotReplicated, Replicated};

/// How stored sessions look, chosen at construction: the native hash layout, or
/// connect-redis's (a string `sess:<id>` holding express-session's JSON).
#[derive(Debug, Clone)]
pub(crate) enum Format {
    Native(Native),
    Express(Express),
}

/// What every operation needs: the connection, the key layout, the clock.
pub(crate) struct Ctx {
    pub(crate) source: Source,
    pub(crate) topology: Topology,
    pub(crate) prefix: String,
    pub(crate) index_prefix: String,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) operation_timeout: Option<Duration>,
    /// Whether the server has `SET … IFEQ`.
    pub(crate) support: Support,
    /// The bytes of the sessions last read or written (only kept when it has).
    pub(crate) seen: Seen,
    /// Operations acknowledged by replicas before they answer ([`Ctx::acknowledged`]).
    pub(crate) replicated: Option<Replicated>,
    /// `{prefix}replication:fence`, written before each `WAIT` ([`Ctx::acknowledged`]).
    pub(crate) fence_key: String,
}

/// What [`Ctx::raw_send`] sends.
#[derive(Clone, Copy)]
enum Sent<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
}

/// How often [`Ctx::reroute`] sends a command again on a cluster.
const CLUSTER_REROUTES: u32 = 4;

tokio::task_local! {
    /// The connection every command of an acknowledged operation goes on, so that its
    /// `WAIT` counts the replicas holding exactly those writes (see [`Ctx::acknowledged`]).
    static PINNED: std::cell::RefCell<Option<(Conn, Option<LeaseRef>)>>;
}

fn map_redis_error(e: RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        StoreError::Decode(DecodeError::with_source(
            "a key of this store holds a value of the wrong type (not a session hash or user index set)",
            e,
        ))
    } else {
        StoreError::backend(e)
    }
}

impl Ctx {
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(crate) fn topology(&self) -> Topology {
        self.topology
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}user:`, the start of every user index key.
    pub(crate) fn index_prefix(&self) -> &str {
        &self.index_prefix
    }

    pub(crate) fn session_key(&self, id: &SessionId) -> String {
        let mut k = String::with_capacity(self.prefix.len() + id.as_str().len());
        k.push_str(&self.prefix);
        k.push_str(id.as_str());
        k
    }

    /// `{prefix}user:{user}`, byte for byte: any user id is a literal part of one key,
    /// never a pattern.
    pub(crate) fn index_key(&self, user: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.index_prefix.len() + user.len());
        k.extend_from_slice(self.index_prefix.as_bytes());
        k.extend_from_slice(user);
        k
    }

    /// `connected_slaves` of `INFO replication` (one round trip; checked at build when
    /// [`Replicated`] is set, and as the first dial of an eager terminal).
    pub(crate) async fn connected_replicas(&self) -> Result<u32, StoreError> {
        let cmd = redis::cmd("INFO").arg("replication").clone();
        let info: String = match self.query(&cmd).await? {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            _ => {
                return Err(StoreError::backend(crate::error::UnexpectedReply {
                    what: "INFO replication",
                }))
            }
        };
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// A connection for one command: the source's, or inside [`Ctx::acknowledged`] the one
    /// the operation's first command went on.
    async fn conn(&self) -> Result<(Conn, Option<LeaseRef>), StoreError> {
        let pinned = PINNED.try_with(|p| p.borrow().clone());
        if let Ok(Some(pinned)) = pinned {
            return Ok(pinned);
        }
        // Inside `acknowledged` (the task-local is set): a lease kept for waits.
        let got = self.source.conn(pinned.is_ok()).await?;
        let _ = PINNED.try_with(|p| {
            p.borrow_mut().get_or_insert_with(|| got.clone());
        });
        Ok(got)
    }

    /// Runs `op` and, when [`Replicated`] covers it (`revokes`: it ends sessions), waits
    /// with `WAIT n ms` on the connection its commands went on until `n` replicas hold its
    /// writes; fewer in time is an error ([`NotReplicated`]). The connection is pinned for
    /// the whole operation: the sources the builder allows with [`Replicated`] (dialed,
    /// pooled) hand out handles that reach one socket or fail — never a fresh socket
    /// whose `WAIT` would count nothing (a `ConnectionManager` may swap its socket, so it
    /// is refused).
    pub(crate) async fn acknowledged<T>(
        &self,
        revokes: bool,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(rep) = self
            .replicated
            .filter(|r| revokes || r.covers_every_write())
        else {
            return op.await;
        };
        PINNED
            .scope(std::cell::RefCell::new(None), async move {
                let value = op.await?;
                let Some((mut conn, lease)) = PINNED.with(|p| p.borrow().clone()) else {
                    return Ok(value); // no command was sent
                };
                // The fence: `WAIT` counts the replicas that hold this connection's last
                // *propagated* write. An operation that found its session already gone
                // (another instance's `DEL`, maybe not replicated yet) wrote nothing, and its
                // `WAIT` would answer at once. One write of its own, after what it read,
                // makes the `WAIT` cover everything it saw (the replication stream is in
                // order). Same round trip as the `WAIT`.
                let mut fence = redis::pipe();
                fence
                    .cmd("SET")
                    .arg(&self.fence_key)
                    .arg(1)
                    .arg("PX")
                    .arg(60_000)
                    .ignore()
                    .cmd("WAIT")
                    .arg(rep.replicas())
                    .arg(rep.wait_ms());
                let acked = match fence.query_async::<(i64,)>(&mut conn).await {
                    Ok((n,)) => u32::try_from(n).unwrap_or(0),
                    Err(e) => {
                        self.source.failed(lease, &e).await;
                        return Err(map_redis_error(e));
                    }
                };
                if acked < rep.replicas() {
                    let e = NotReplicated::new(rep.replicas(), acked, rep.within());
                    tracing::warn!(error = %e, "coatcheck-redis: an operation was not replicated in time; failing it");
                    return Err(StoreError::backend(e));
                }
                Ok(value)
            })
            .await
    }

    /// On a cluster, whether to send again a command the cluster answered with an error
    /// that says it did not run (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) after redis-rs's
    /// own retries: right after a failover its redirects can run out before its slot map is
    /// rebuilt (tests/failover.rs, `cluster_with_replicas_through_failovers`: 8–9 requests
    /// failed in its kill phase with this, 11–12 without). At most
    /// [`CLUSTER_REROUTES`] times, after a pause that grows; the operation timeout bounds
    /// it all.
    async fn reroute(&self, e: &RedisError, tries: &mut u32) -> bool {
        let not_run = matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"));
        if self.source.topology() != Topology::Cluster || !not_run || *tries >= CLUSTER_REROUTES {
            return false;
        }
        *tries += 1;
        tracing::debug!(error = %e, tries = *tries, "coatcheck-redis: the cluster is moving a slot; sending again");
        tokio::time::sleep(Duration::from_millis(50 * u64::from(*tries))).await;
        true
    }

    pub(crate) async fn invoke(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut tries = 0;
        loop {
            let (mut conn, lease) = self.conn().await?;
            match inv.invoke_async::<Value>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if self.reroute(&e, &mut tries).await {
                        continue;
                    }
                    self.source.failed(lease, &e).await;
                    return Err(map_redis_error(e));
                }
            }
        }
    }

    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.raw_query(cmd).await?.map_err(map_redis_error)
    }

    /// The server's reply or error; the outer error: no connection to send it on.
    async fn raw_query(&self, cmd: &Cmd) -> Result<Result<Value, RedisError>, StoreError> {
        self.raw_send(Sent::Cmd(cmd)).await
    }

    async fn raw_pipe(&self, pipe: &Pipeline) -> Result<Result<Value, RedisError>, StoreError> {
        self.raw_send(Sent::Pipe(pipe)).await
    }

    /// Sends a command or a pipeline: on a connection of [`Ctx::conn`], sent again where
    /// [`Ctx::reroute`] says so, the connection reported when it failed.
    async fn raw_send(&self, sent: Sent<'_>) -> Result<Result<Value, RedisError>, StoreError> {
        let mut tries = 0;
        loop {
            let (mut conn, lease) = self.conn().await?;
            let r = match sent {
                Sent::Cmd(cmd) => cmd.query_async::<Value>(&mut conn).await,
                Sent::Pipe(pipe) => pipe.query_async::<Value>(&mut conn).await,
            };
            // A pipeline's replies may hold a "not run" error of one of its commands. On a
            // cluster the store's pipelines hold commands on one key that may run twice
            // (`SADD`, `PEXPIREAT … NX|GT`; `GETDEL` alone; reads): sending one again is
            // safe even if others ran.
            let not_run = match &r {
                Err(e) => Some(e.clone()),
                Ok(Value::Array(replies)) => replies.iter().find_map(|v| match v {
                    Value::ServerError(e) => Some(RedisError::from(e.clone())),
                    _ => None,
                }),
                Ok(_) => None,
            };
            if let Some(e) = not_run {
                if self.reroute(&e, &mut tries).await {
                    continue;
                }
            }
            if let Err(e) = &r {
                self.source.failed(lease, e).await;
            }
            return Ok(r);
        }
    }

    /// A pipeline (not a transaction): the replies of its commands not marked `ignore`.
    pub(crate) async fn query_pipe(&self, pipe: &Pipeline) -> Result<Value, StoreError> {
        self.raw_pipe(pipe).await?.map_err(map_redis_error)
    }

    /// A pipeline whose replies are each the command's answer or its server error, in order
    /// (`ignore`d commands left out): redis-rs reports an error inside a pipeline without
    /// its code, so the replies are read one by one.
    async fn raw_pipe_each(
        &self,
        pipe: &Pipeline,
    ) -> Result<Vec<Result<Value, RedisError>>, StoreError> {
        let mut pipe = pipe.clone();
        pipe.ignore_errors();
        match self.raw_pipe(&pipe).await?.map_err(map_redis_error)? {
            Value::Array(replies) => Ok(replies
                .into_iter()
                .map(|r| match r {
                    Value::ServerError(e) => Err(RedisError::from(e)),
                    v => Ok(v),
                })
                .collect()),
            _ => Err(StoreError::backend(crate::error::UnexpectedReply {
                what: "pipeline",
            })),
        }
    }

    /// [`Ctx::raw_pipe_each`], errors mapped as [`Ctx::query`] maps them.
    pub(crate) async fn query_pipe_each(
        &self,
        pipe: &Pipeline,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        Ok(self
            .raw_pipe_each(pipe)
            .await?
            .into_iter()
            .map(|r| r.map_err(map_redis_error))
            .collect())
    }

    /// A command using `IFEQ`: `None` when the server turns out not to know it (it is then
    /// never used again by this store).
    pub(crate) async fn query_ifeq(&self, cmd: &Cmd) -> Result<Option<Value>, StoreError> {
        self.unsupported_is_none(self.raw_query(cmd).await?)
    }

    /// A pipeline ending with a command using `IFEQ`: that command's reply, or `None` as in
    /// [`Ctx::query_ifeq`]; an error of an earlier command is that error.
    pub(crate) async fn query_ifeq_pipe(
        &self,
        pipe: &Pipeline,
    ) -> Result<Option<Value>, StoreError> {
        let mut replies = self.raw_pipe_each(pipe).await?;
        let last = replies.pop().ok_or_else(|| {
            StoreError::backend(crate::error::UnexpectedReply { what: "pipeline" })
        })?;
        if let Some(Err(e)) = replies.into_iter().find(Result::is_err) {
            return Err(map_redis_error(e));
        }
        self.unsupported_is_none(last)
    }

    fn unsupported_is_none(
        &self,
        r: Result<Value, RedisError>,
    ) -> Result<Option<Value>, StoreError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if cas::is_unsupported(&e) => {
                tracing::warn!("coatcheck-redis: the server refused SET … IFEQ; using the Lua scripts from now on");
                self.support.set(false);
                Ok(None)
            }
            Err(e) => Err(map_redis_error(e)),
        }
    }

    /// Whether to take the `SET … IFEQ` path: probes the server on first use (one
    /// `SET {prefix}probe:ifeq "" IFEQ ""`, which never creates the key; Redis before 8.4
    /// answers a syntax error). Any other error reply (an ACL refusing the key, a proxy's own
    /// error) also settles it: the scripts. Only a probe that could not reach the server is
    /// repeated, by the next operation.
    pub(crate) async fn cas(&self) -> bool {
        if let Some(known) = self.support.known() {
            return known;
        }
        let probe = redis::cmd("SET")
            .arg(format!("{}probe:ifeq", self.prefix))
            .arg("")
            .arg("IFEQ")
            .arg("")
            .clone();
        match self.raw_query(&probe).await {
            Ok(Ok(_)) => {
                self.support.set(true);
                tracing::debug!("coatcheck-redis: the server has SET … IFEQ");
                true
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => false,
            Ok(Err(e)) => {
                self.support.set(false);
                tracing::debug!(error = %e, "coatcheck-redis: no SET … IFEQ on this server; Lua scripts");
                false
            }
            Err(_) => false,
        }
    }

    /// The bytes of sessions last read or written, for `SET … IFEQ`.
    pub(crate) fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Appends to `pipe` what the scripts' `index_add` does, as three plain commands on the
    /// index key: `SADD` the id, `PEXPIREAT … NX` (a set just created has no TTL) and
    /// `PEXPIREAT … GT` (never shorten it), so the set lives at least until `expires_at`.
    pub(crate) fn push_index_add(
        &self,
        pipe: &mut Pipeline,
        user: &[u8],
        id: &SessionId,
        expires_at: i64,
    ) {
        let key = self.index_key(user);
        pipe.cmd("SADD").arg(&key).arg(id.as_str()).ignore();
        for when in ["NX", "GT"] {
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires_at)
                .arg(when)
                .ignore();
        }
    }

    /// Cluster only (the index is in another slot than the session): [`Ctx::push_index_add`]
    /// as one pipeline to the index's node.
    pub(crate) async fn index_add(
        &self,
        user: &[u8],
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.push_index_add(&mut pipe, user, id, expires_at.as_millis());
        self.query_pipe(&pipe).await.map(drop)
    }

    /// The bound on one whole store operation ([`RedisStoreBuilder::operation_timeout`]).
    pub(crate) fn operation_timeout(&self) -> Option<Duration> {
        self.operation_timeout
    }

    /// A write: [`Ctx::acknowledged`] by replicas where [`Replicated`] covers it, the whole
    /// within [`Ctx::bounded`].
    pub(crate) async fn write<T>(
        &self,
        revokes: bool,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded(self.acknowledged(revokes, op)).await
    }

    pub(crate) async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.operation_timeout {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::backend(OperationTimedOut::new(limit))),
            },
        }
    }
}
