//! [`Replicated`]: operations acknowledged by replicas (`WAIT`) before the store answers, so
//! that a logout the user was told about cannot be undone by a failover.

use std::time::Duration;

/// Which operations wait for replicas, how many and for how long: give it to
/// [`RedisStoreBuilder::replicated`](crate::RedisStoreBuilder::replicated).
///
/// Redis replicates asynchronously: a primary acknowledges a `DEL` before any replica has
/// it. If the primary dies then, the replica that Sentinel (or the cluster, or the managed
/// service) promotes still holds the session — a logged-out session comes back until its
/// TTL. With `Replicated`, after every operation that ends sessions (`delete`,
/// `delete_version` and so regenerate, `delete_for_user`, `delete_device`, a limited
/// create's eviction) the store sends `WAIT replicas within` on the connection the
/// operation's commands went on, and answers only when at least `replicas` replicas hold
/// them. Fewer within the time: the operation **fails** (a `Backend` error whose source is
/// [`NotReplicated`]; the middleware answers 503) — it may or may not have happened, and
/// the user is not told "logged out" while it may come back. [`Replicated::every_write`]
/// does the same for creates, saves and touches.
///
/// What it does not promise (`WAIT` is not consensus): a write acknowledged by some
/// replicas is lost if the failover promotes one that did not have it. Sentinel promotes
/// the fit replica with the lowest `replica-priority`, then the highest replication
/// offset; so with `replicas` equal to the number of replicas every candidate has it, and
/// with fewer a replica without it is promoted only when those with it are unfit (down,
/// disconnected too long) or rank lower by priority. It is also lost if every replica that
/// had it restarts without persistence, and across a manual `REPLICAOF NO ONE`.
/// A failed (503) revocation may still take effect. Before its `WAIT` the store writes a
/// small fence key (`{prefix}replication:fence`), so that a revocation that found its
/// session already gone — another instance's `DEL`, maybe not replicated yet — also waits
/// for that. `WAIT` holds its connection on the server, so the store keeps one connection
/// apart for the operations that wait (one more than
/// [`pool_connections`](crate::RedisStoreBuilder::pool_connections)): reads and the writes
/// that do not wait never queue behind a `WAIT`; those that wait queue behind each other,
/// each up to `within` when the replicas do not answer. `within` must stay below the
/// response timeout ([`BuildError::ReplicationTooSlow`](crate::BuildError::ReplicationTooSlow)).
/// Expired-session cleanup is exempt
/// (Redis expires keys itself). See SECURITY.md for the figures measured with and without.
///
/// ```no_run
/// use std::time::Duration;
/// use coatcheck::redis::{RedisStore, Replicated};
///
/// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
/// let store = RedisStore::builder()
///     .replicated(Replicated::revocations(1, Duration::from_millis(250)))
///     .connect_sentinel(["redis://127.0.0.1:26379"], "mymaster")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicated {
    replicas: u32,
    within: Duration,
    every_write: bool,
}

impl Replicated {
    /// Operations that end sessions wait until `replicas` replicas hold them, at most
    /// `within` (then fail). `replicas` of 0 is taken as 1.
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = coatcheck::redis::Replicated::revocations(2, Duration::from_millis(100));
    /// assert_eq!(r.replicas(), 2);
    /// assert!(!r.covers_every_write());
    /// ```
    pub fn revocations(replicas: u32, within: Duration) -> Self {
        Replicated {
            replicas: replicas.max(1),
            within,
            every_write: false,
        }
    }

    /// Every write waits, not only revocations: a save acknowledged to the application is
    /// then on `replicas` replicas too. Costs a round trip and the replicas' lag on every
    /// write.
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = coatcheck::redis::Replicated::revocations(1, Duration::from_millis(100)).every_write();
    /// assert!(r.covers_every_write());
    /// ```
    pub fn every_write(mut self) -> Self {
        self.every_write = true;
        self
    }

    /// How many replicas must acknowledge.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// How long the store waits for them.
    pub fn within(&self) -> Duration {
        self.within
    }

    /// Whether every write waits (not only revocations).
    pub fn covers_every_write(&self) -> bool {
        self.every_write
    }

    /// The milliseconds `WAIT` is given (at least 1: `WAIT n 0` would block forever).
    pub(crate) fn wait_ms(&self) -> u64 {
        u64::try_from(self.within.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// The source of a [`StoreError::Backend`](coatcheck_core::StoreError::Backend) when fewer
/// replicas than [`Replicated`] asks for acknowledged an operation in time. The operation
/// reached the primary and may or may not survive a failover: it is reported as failed.
///
/// ```
/// use coatcheck::redis::NotReplicated;
/// use std::time::Duration;
///
/// let e = NotReplicated::new(2, 1, Duration::from_millis(100));
/// assert_eq!((e.wanted(), e.acknowledged()), (2, 1));
/// assert!(e.to_string().contains("1 of 2 replicas"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only {acknowledged} of {wanted} replicas acknowledged the write within {within:?} (WAIT): refused, as it might not survive a failover; are {wanted} replicas attached and in sync?")]
pub struct NotReplicated {
    wanted: u32,
    acknowledged: u32,
    within: Duration,
}

impl NotReplicated {
    /// `acknowledged` of `wanted` replicas answered within `within`.
    pub fn new(wanted: u32, acknowledged: u32, within: Duration) -> Self {
        NotReplicated {
            wanted,
            acknowledged,
            within,
        }
    }

    /// How many replicas were asked for.
    pub fn wanted(&self) -> u32 {
        self.wanted
    }

    /// How many acknowledged in time.
    pub fn acknowledged(&self) -> u32 {
        self.acknowledged
    }
}
