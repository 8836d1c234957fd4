//! The connections a store talks through: a sealed enum over the supported kinds.
//!
//! Every kind ends up as a *multiplexed* connection handle ([`Conn`]) that is cheap to clone
//! and pipelines concurrent requests over one socket (per node, for a cluster):
//!
//! - [`ConnectionManager`]: one multiplexed socket that reconnects by itself.
//! - a deadpool-redis [`Pool`](deadpool_redis::Pool): the store *leases* a few pooled
//!   connections (one by default) once and keeps them; every operation clones the lease's
//!   [`MultiplexedConnection`] handle. A checkout (which costs deadpool-redis's
//!   `UNWATCH` + `PING` recycle round trip) happens only on first use and after a connection
//!   error, never per operation. The leased connections are held exclusively by the store, so
//!   nobody else's `WATCH`/`MULTI` on a pooled connection can interleave with its commands.
//! - a [`ClusterConnection`] (multiplexed per node, follows `MOVED`/`ASK` and reconnects).
//! - a deadpool-redis cluster pool, leased the same way as the single-node pool.
//! - connections the store dials itself ([`Dialer`]): to one URL, or to the master the
//!   Redis Sentinels name, leased the same way and redialed after a failure.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use coatcheck_core::{BoxError, StoreError};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::dial::Dialer;

/// A cloneable multiplexed connection handle.
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether one script may touch the session key and the user index key together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One node: scripts keep the session hash and the user index in step atomically.
    Single,
    /// A cluster: the index set lives in another hash slot, so it is a separate command.
    Cluster,
}

/// Where the store gets its connection from.
pub(crate) enum Source {
    Manager(ConnectionManager),
    Pool(Leases<deadpool_redis::Pool>),
    Cluster(ClusterConnection),
    ClusterPool(Leases<deadpool_redis::cluster::Pool>),
    Dialed(Box<Leases<Dialer>>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Manager(_) => f.write_str("ConnectionManager"),
            Source::Pool(l) => write!(f, "Pool(leases: {})", l.slots.len()),
            Source::Cluster(_) => f.write_str("ClusterConnection"),
            Source::ClusterPool(l) => write!(f, "ClusterPool(leases: {})", l.slots.len()),
            Source::Dialed(l) => write!(f, "{:?}", l.pool),
        }
    }
}

/// Identifies the lease a connection came from, so that a broken one can be given back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseRef {
    slot: usize,
    generation: u64,
}

impl Source {
    pub(crate) fn topology(&self) -> Topology {
        match self {
            Source::Manager(_) | Source::Pool(_) | Source::Dialed(_) => Topology::Single,
            Source::Cluster(_) | Source::ClusterPool(_) => Topology::Cluster,
        }
    }

    /// A connection handle for one operation; `waits`: one that will end in `WAIT` (on a
    /// lease of its own where the source keeps one, see [`Leases::with_a_lease_for_waits`]).
    pub(crate) async fn conn(&self, waits: bool) -> Result<(Conn, Option<LeaseRef>), StoreError> {
        match self {
            Source::Manager(m) => Ok((Conn::Manager(m.clone()), None)),
            Source::Cluster(c) => Ok((Conn::Cluster(c.clone()), None)),
            Source::Pool(l) => l.get(waits).await.map(|(c, r)| (c, Some(r))),
            Source::ClusterPool(l) => l.get(waits).await.map(|(c, r)| (c, Some(r))),
            Source::Dialed(l) => l.get(waits).await.map(|(c, r)| (c, Some(r))),
        }
    }

    /// Called with every failed command: a connection that cannot recover is given back to
    /// its pool (whose recycle check then drops it) and replaced on the next operation.
    pub(crate) async fn failed(&self, lease: Option<LeaseRef>, err: &RedisError) {
        let Some(lease) = lease else { return };
        let broken =
            err.is_unrecoverable_error() || err.is_io_error() || err.is_connection_dropped();
        // A connection the store dialed itself is also given up after `READONLY` (a write
        // reached a master that has since become a replica: a failover) or a timeout (the
        // server may be gone without a reset): the next operation dials again, through the
        // sentinels where there are some. Not a pooled one: it is still alive, and given
        // back to a pool it could be handed to somebody else while we still use it.
        let dial_again = matches!(self, Source::Dialed(_))
            && (err.code() == Some("READONLY") || err.is_timeout());
        if !(broken || dial_again) {
            return;
        }
        match self {
            Source::Pool(l) => l.invalidate(lease).await,
            Source::ClusterPool(l) => l.invalidate(lease).await,
            Source::Dialed(l) => l.invalidate_all().await,
            Source::Manager(_) | Source::Cluster(_) => {}
        }
    }
}

/// A pool the store can lease long-lived multiplexed connections from.
#[async_trait]
pub(crate) trait Leasable: Send + Sync + 'static {
    type Object: Send + Sync + 'static;
    async fn checkout(&self) -> Result<Self::Object, BoxError>;
    fn handle(object: &Self::Object) -> Conn;
}

#[async_trait]
impl Leasable for deadpool_redis::Pool {
    type Object = deadpool_redis::Connection;
    async fn checkout(&self) -> Result<Self::Object, BoxError> {
        Ok(self.get().await?)
    }
    fn handle(object: &Self::Object) -> Conn {
        Conn::Multiplexed(MultiplexedConnection::clone(object))
    }
}

#[async_trait]
impl Leasable for deadpool_redis::cluster::Pool {
    type Object = deadpool_redis::cluster::Connection;
    async fn checkout(&self) -> Result<Self::Object, BoxError> {
        Ok(self.get().await?)
    }
    fn handle(object: &Self::Object) -> Conn {
        Conn::Cluster(ClusterConnection::clone(object))
    }
}

struct Leased<O> {
    // Held so that the pooled connection stays checked out (exclusively ours) while we
    // multiplex over the cloned handle; dropping it hands it back to the pool.
    _object: O,
    conn: Conn,
    generation: u64,
}

/// A fixed number of pooled connections held by the store and used round-robin.
pub(crate) struct Leases<P: Leasable> {
    pool: P,
    slots: Vec<tokio::sync::Mutex<Option<Leased<P::Object>>>>,
    next: AtomicUsize,
    generation: AtomicU64,
    /// The first slot, kept for operations that end in `WAIT` (with
    /// [`Replicated`](crate::Replicated)): `WAIT` holds its connection on the server, and
    /// the other operations must not queue behind it.
    waits_apart: bool,
}

impl<P: Leasable> Leases<P> {
    pub(crate) fn new(pool: P, count: usize) -> Self {
        Leases {
            pool,
            slots: (0..count.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            waits_apart: false,
        }
    }

    /// One more lease, used only by operations that end in `WAIT`.
    pub(crate) fn with_a_lease_for_waits(mut self) -> Self {
        self.slots.insert(0, tokio::sync::Mutex::new(None));
        self.waits_apart = true;
        self
    }

    async fn get(&self, waits: bool) -> Result<(Conn, LeaseRef), StoreError> {
        let slot = match (self.waits_apart, waits) {
            (true, true) => 0,
            (true, false) => 1 + self.next.fetch_add(1, Ordering::Relaxed) % (self.slots.len() - 1),
            (false, _) => self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len(),
        };
        // Held across a checkout, so that concurrent operations wait for one new lease
        // instead of each checking out their own.
        let mut guard = self.slots[slot].lock().await;
        if let Some(l) = guard.as_ref() {
            let lease = LeaseRef {
                slot,
                generation: l.generation,
            };
            return Ok((l.conn.clone(), lease));
        }
        let object = self.pool.checkout().await.map_err(StoreError::Backend)?;
        let conn = P::handle(&object);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *guard = Some(Leased {
            _object: object,
            conn: conn.clone(),
            generation,
        });
        tracing::debug!(slot, "coatcheck-redis: leased a pooled connection");
        Ok((conn, LeaseRef { slot, generation }))
    }

    async fn invalidate(&self, lease: LeaseRef) {
        let Some(slot) = self.slots.get(lease.slot) else {
            return;
        };
        let mut guard = slot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|l| l.generation == lease.generation)
        {
            *guard = None;
            tracing::debug!(
                slot = lease.slot,
                "coatcheck-redis: gave back a broken pooled connection"
            );
        }
    }

    /// Every lease: after a failover all of them reach the old master, and an idle one
    /// (the lease kept for waits, say) would otherwise fail the next operation that uses
    /// it. A failure reported late by a handle of an old lease may drop fresh ones too: they
    /// are dialed again, nothing worse.
    async fn invalidate_all(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let mut guard = slot.lock().await;
            if guard.take().is_some() {
                tracing::debug!(slot = i, "coatcheck-redis: dropped a dialed connection");
            }
        }
    }
}
