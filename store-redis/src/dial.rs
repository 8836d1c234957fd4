//! Connections the store dials itself and redials after a failure: to one fixed URL, or to
//! whichever server the Redis Sentinels name as the master right now (the topology of a
//! replicated deployment that fails over).
//!
//! A dialed connection is a plain redis-rs [`MultiplexedConnection`]: unlike a
//! `ConnectionManager` it never swaps its socket underneath a handle. A handle either reaches
//! the server it was dialed to or fails; after a failure the lease is given back
//! ([`Leases`](crate::conn::Leases)) and the next operation dials again — through the
//! sentinels, so after a failover it reaches the new master. That property is what
//! [`Replicated`](crate::Replicated) needs: `WAIT` counts the replicas that hold *this
//! connection's* writes, so it must travel on the socket the writes went on.

use async_trait::async_trait;
use coatcheck_core::BoxError;
use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelClient;
use redis::AsyncConnectionConfig;

use crate::conn::{Conn, Leasable};

/// Where a dialed connection goes.
pub(crate) enum Target {
    /// One server, always.
    Url(redis::Client),
    /// The master the sentinels name (`SENTINEL get-master-addr-by-name`, then `ROLE` on that
    /// server to make sure it is a master).
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
        /// The master's address at the last dial, to report a failover once.
        last: std::sync::Mutex<Option<String>>,
    },
}

/// Dials [`Target`] with the builder's connection and response timeouts.
pub(crate) struct Dialer {
    pub(crate) target: Target,
    pub(crate) config: AsyncConnectionConfig,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Url(c) => write!(f, "Dialed({})", c.get_connection_info().addr()),
            Target::Sentinel { master, .. } => write!(f, "Sentinel(master {master:?})"),
        }
    }
}

impl Dialer {
    /// A client for the current master.
    async fn client(&self) -> Result<redis::Client, BoxError> {
        match &self.target {
            Target::Url(c) => Ok(c.clone()),
            Target::Sentinel {
                client,
                master,
                last,
            } => {
                let found = client.lock().await.async_get_client().await.map_err(|e| {
                    BoxError::from(SentinelLookup {
                        master: master.clone(),
                        source: e,
                    })
                })?;
                let addr = found.get_connection_info().addr().to_string();
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                match last.as_deref() {
                    Some(before) if before != addr => tracing::warn!(
                        master = %master,
                        from = %before,
                        to = %addr,
                        "coatcheck-redis: the sentinels name a new master (a failover); following it"
                    ),
                    None => {
                        tracing::debug!(master = %master, at = %addr, "coatcheck-redis: master found through the sentinels")
                    }
                    _ => {}
                }
                *last = Some(addr);
                Ok(found)
            }
        }
    }
}

#[async_trait]
impl Leasable for Dialer {
    type Object = MultiplexedConnection;
    async fn checkout(&self) -> Result<Self::Object, BoxError> {
        let client = self.client().await?;
        Ok(client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?)
    }
    fn handle(object: &Self::Object) -> Conn {
        Conn::Multiplexed(object.clone())
    }
}

/// The sentinels could not name a master of that name (none answered, none knows it, or the
/// server they name is not a master): the source of a `Backend` error, or of
/// [`BuildError::Sentinel`](crate::BuildError::Sentinel) at build.
#[derive(Debug, thiserror::Error)]
#[error("the Redis Sentinels named no reachable master {master:?}: {source}")]
pub(crate) struct SentinelLookup {
    pub(crate) master: String,
    #[source]
    pub(crate) source: redis::RedisError,
}
