//! The opt-in expiry stream: Redis keyspace notifications of expired session keys.

use coatcheck_core::{ExpiryNotice, SessionId};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::RedisStore;

/// How many notices wait for the receiver before new ones are dropped (and counted in the
/// log).
pub const NOTICE_QUEUE: usize = 1024;

/// Whether [`RedisStore::expiry_notices`] may change the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notifications {
    /// Use the server as configured: an error if it does not publish expired-key events
    /// (`notify-keyspace-events` needs `E` and `x`, or `A`). For servers whose `CONFIG` is
    /// closed (most managed services): set the parameter in their console.
    AsConfigured,
    /// Add `Ex` to `notify-keyspace-events` with `CONFIG SET` when missing (keeping the
    /// flags already there). Every client of the server then pays for the events.
    EnableIfOff,
}

/// Why [`RedisStore::expiry_notices`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    /// The server does not publish expired-key events.
    #[error("the server does not publish expired-key events (notify-keyspace-events is {0:?}; it needs E and x, or A)")]
    NotificationsOff(String),
    /// The URL names a cluster node: each primary publishes only its own keys' events, and
    /// subscribing to all of them is not supported.
    #[error("expiry notices need a single Redis node; a cluster node publishes only its own keys' events")]
    Cluster,
    /// The URL was not accepted, or the server failed a command.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Whether these `notify-keyspace-events` flags publish `__keyevent@…__:expired`.
fn publishes_expired(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('x') || flags.contains('A'))
}

impl RedisStore {
    /// A stream of this store's sessions that expire in Redis by themselves, from keyspace
    /// notifications: one [`ExpiryNotice::Expired`] per session key of this store's prefix
    /// (user index keys and other keys are skipped). `url` names the single node the store
    /// uses (the stream needs a connection of its own, for `SUBSCRIBE`).
    ///
    /// Redis publishes the event when it removes the key — at once if a client reads it, or
    /// within about a second by its active expiry cycle on a lightly loaded server, later on a
    /// busy one. At most once: events published while the connection is down are lost (the
    /// stream then ends — call again), and when the receiver falls
    /// [`NOTICE_QUEUE`] behind, new notices are dropped and logged. Dropping the receiver
    /// ends the subscription.
    ///
    /// ```no_run
    /// use coatcheck::core::ExpiryNotice;
    /// use coatcheck::redis::{Notifications, RedisStore};
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let url = "redis://127.0.0.1:6379";
    /// let store = RedisStore::connect(url).await?;
    /// let mut notices = store.expiry_notices(url, Notifications::EnableIfOff).await?;
    /// tokio::spawn(async move {
    ///     while let Some(ExpiryNotice::Expired(id)) = notices.recv().await {
    ///         tracing::info!(session = %id.short_hash(), "session expired");
    ///     }
    /// });
    /// # Ok(()) }
    /// ```
    pub async fn expiry_notices(
        &self,
        url: &str,
        notifications: Notifications,
    ) -> Result<mpsc::Receiver<ExpiryNotice>, NoticeError> {
        let client = redis::Client::open(url)?;
        let db = client.get_connection_info().redis_settings().db();
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        if info.contains("cluster_enabled:1") {
            return Err(NoticeError::Cluster);
        }
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let flags = got.get(1).cloned().unwrap_or_default();
        if !publishes_expired(&flags) {
            if notifications == Notifications::AsConfigured {
                return Err(NoticeError::NotificationsOff(flags));
            }
            let mut wanted = flags.clone();
            wanted.extend(['E', 'x'].into_iter().filter(|c| !flags.contains(*c)));
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(&wanted)
                .query_async::<()>(&mut conn)
                .await?;
            tracing::info!(flags = %wanted, "Redis keyspace notifications enabled for expired keys");
        }
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub
            .subscribe(format!("__keyevent@{db}__:expired"))
            .await?;
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let prefix = self.prefix().to_owned();
        let index_prefix = format!("{prefix}user:");
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            let mut dropped = 0u64;
            loop {
                let msg = tokio::select! {
                    () = tx.closed() => break,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else {
                    tracing::warn!(
                        "Redis expiry notices end: the subscription's connection closed"
                    );
                    break;
                };
                let key = msg.get_payload_bytes();
                let Some(id) = std::str::from_utf8(key)
                    .ok()
                    .filter(|k| !k.starts_with(&index_prefix))
                    .and_then(|k| k.strip_prefix(prefix.as_str()))
                    .and_then(|rest| SessionId::parse(rest).ok())
                else {
                    continue;
                };
                match tx.try_send(ExpiryNotice::Expired(id)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                dropped,
                                "Redis expiry notices dropped: the receiver is behind"
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::publishes_expired;

    #[test]
    fn which_flags_publish_expired_keys() {
        assert!(publishes_expired("Ex"));
        assert!(publishes_expired("xE"));
        assert!(publishes_expired("AE"));
        assert!(publishes_expired("KEA"));
        assert!(!publishes_expired(""));
        assert!(!publishes_expired("Kx"), "keyspace, not keyevent, channel");
        assert!(!publishes_expired("E$g"));
    }
}
