//! Errors of this crate that are not [`StoreError`](coatcheck_core::StoreError)s.

use std::time::Duration;

/// Building a [`RedisStore`](crate::RedisStore) failed.
///
/// ```
/// use coatcheck::redis::{BuildError, RedisStore};
///
/// // Outside a Tokio runtime the lazy constructors refuse instead of panicking.
/// let lazy = RedisStore::connect_lazy("redis://127.0.0.1");
/// assert!(matches!(lazy, Err(BuildError::NoRuntime)));
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let _inside = rt.enter();
/// let bad = RedisStore::connect_lazy("not a url");
/// assert!(matches!(bad, Err(BuildError::InvalidUrl(_))));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A Redis URL (or the client configuration built from it) was not accepted.
    #[error("invalid Redis URL or client configuration: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// The first connection (eager constructors only) could not be established.
    #[error("could not connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// A cluster constructor was given no node URL.
    #[error("a Redis Cluster needs at least one node URL")]
    NoClusterNodes,
    /// An encrypting codec ([`EncryptedCodec`](coatcheck_core::EncryptedCodec)) with
    /// express-compatible mode: Node reads the session as plain JSON, so it cannot be
    /// encrypted.
    #[error("express-compatible mode stores express-session's JSON and cannot encrypt it; drop the encrypting codec or the express format")]
    EncryptedExpress,
    /// Other options that cannot go together
    /// ([`StoreOptions::validate`](coatcheck_core::StoreOptions::validate)).
    #[error(transparent)]
    Conflict(coatcheck_core::OptionsConflict),
    /// [`connect_sentinel`](crate::RedisStoreBuilder::connect_sentinel) was given no
    /// sentinel URL.
    #[error("connect_sentinel needs at least one sentinel URL")]
    NoSentinels,
    /// No sentinel answered, none knows a master of that name, or the server they name
    /// does not say it is a master.
    #[error("the Redis Sentinels named no reachable master {master:?} (is the name right, and does a sentinel answer?): {source}")]
    Sentinel {
        /// The master name asked for.
        master: String,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
    },
    /// The first connection of a store that dials its own could not be made (eager
    /// terminals only).
    #[error("could not reach the Redis master: {0}")]
    Dial(#[source] coatcheck_core::BoxError),
    /// [`Replicated`](crate::Replicated) asks for more replicas than the master has
    /// attached now (`INFO replication`'s `connected_slaves`); eager terminals only.
    #[error("Replicated asks for {wanted} replicas, but the master has {connected} attached")]
    NotEnoughReplicas {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas the master reports as connected.
        connected: u32,
    },
    /// [`Replicated`](crate::Replicated) with a connection on which `WAIT` cannot be tied
    /// to the socket of the writes (a `ConnectionManager` of yours reconnects underneath;
    /// a cluster routes each command by key).
    #[error("Replicated (WAIT for replicas) is not supported with {connection}: use connect, connect_lazy, connect_sentinel or pool")]
    ReplicationUnsupported {
        /// The connection kind refused.
        connection: &'static str,
    },
    /// [`Replicated`](crate::Replicated)'s `within` is not below the response timeout:
    /// `WAIT` holds its connection for up to `within`, so a slow acknowledgement would end
    /// as a response timeout instead of [`NotReplicated`](crate::NotReplicated).
    #[error("Replicated waits up to {within:?}, not less than the response timeout ({response_timeout:?}): lower it or raise response_timeout")]
    ReplicationTooSlow {
        /// What `Replicated` waits at most.
        within: std::time::Duration,
        /// The builder's response timeout.
        response_timeout: std::time::Duration,
    },
    /// A constructor that spawns background tasks was called outside a Tokio runtime.
    #[error("coatcheck-redis needs a Tokio runtime: build the store inside one")]
    NoRuntime,
}

/// The source of a [`StoreError::Backend`](coatcheck_core::StoreError::Backend) when an
/// operation ran past the store's
/// [`operation_timeout`](crate::RedisStoreBuilder::operation_timeout).
///
/// ```
/// use coatcheck::redis::OperationTimedOut;
/// use std::time::Duration;
///
/// let e = OperationTimedOut::new(Duration::from_secs(5));
/// assert_eq!(e.after(), Duration::from_secs(5));
/// assert_eq!(e.to_string(), "Redis operation did not complete within 5s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis operation did not complete within {after:?}")]
pub struct OperationTimedOut {
    after: Duration,
}

impl OperationTimedOut {
    /// An operation gave up after `after`.
    pub fn new(after: Duration) -> Self {
        OperationTimedOut { after }
    }

    /// How long the operation was given.
    pub fn after(&self) -> Duration {
        self.after
    }
}

/// A reply from Redis that none of this crate's commands or scripts can produce: a protocol
/// or version mismatch, kept as the source of a `Backend` error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unexpected reply from Redis to {what}")]
pub(crate) struct UnexpectedReply {
    pub(crate) what: &'static str,
}

impl From<coatcheck_core::OptionsConflict> for BuildError {
    fn from(conflict: coatcheck_core::OptionsConflict) -> Self {
        match conflict {
            coatcheck_core::OptionsConflict::EncryptedExpress => BuildError::EncryptedExpress,
            // `OptionsConflict` is non-exhaustive; a conflict added there is refused here
            // under its own message until this crate names it.
            _ => BuildError::Conflict(conflict),
        }
    }
}
