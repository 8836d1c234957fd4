//! The periodic cleanup task, and its opt-in stream of how many expired rows each run
//! removed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use coatcheck_core::ExpiryNotice;
use tokio::sync::mpsc;

use super::{Inner, PostgresStore};

/// How many reports wait for the receiver of
/// [`PostgresStore::spawn_cleanup_reporting`] before new ones are dropped (and logged).
pub const REPORT_QUEUE: usize = 64;

impl PostgresStore {
    /// Spawns a task running [`SessionStore::delete_expired`](coatcheck_core::SessionStore::delete_expired)
    /// every `every` (the first run right away). An error is logged (`tracing` warning) and
    /// the task carries on at the next tick. The task holds only a weak reference: it ends by
    /// itself once every clone of the store has been dropped; `abort()` the handle to stop it
    /// earlier.
    ///
    /// A zero `every` is taken as one millisecond.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::postgres::PostgresStore) {
    /// let cleanup = store.spawn_cleanup(std::time::Duration::from_secs(600));
    /// // ... on shutdown:
    /// cleanup.abort();
    /// # }
    /// ```
    pub fn spawn_cleanup(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        spawn(Arc::downgrade(&self.inner), every, None)
    }

    /// [`spawn_cleanup`](PostgresStore::spawn_cleanup), and a stream of what it did: an
    /// [`ExpiryNotice::Removed`] for each run that removed expired rows (runs that removed
    /// none report nothing). The opt-in expiry stream of this store: expiry is only known
    /// here when the cleanup removes the rows (a read of an expired row finds nothing
    /// without removing it). At most once: when the receiver falls [`REPORT_QUEUE`] reports
    /// behind, new ones are dropped and logged. The cleanup goes on whether anyone reads.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    ///
    /// ```no_run
    /// use coatcheck::core::ExpiryNotice;
    ///
    /// # async fn f(store: coatcheck::postgres::PostgresStore) {
    /// let (_cleanup, mut reports) = store.spawn_cleanup_reporting(std::time::Duration::from_secs(600));
    /// while let Some(ExpiryNotice::Removed { count }) = reports.recv().await {
    ///     tracing::info!(count, "expired sessions removed");
    /// }
    /// # }
    /// ```
    pub fn spawn_cleanup_reporting(
        &self,
        every: Duration,
    ) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<ExpiryNotice>) {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        (spawn(Arc::downgrade(&self.inner), every, Some(tx)), rx)
    }
}

fn spawn(
    weak: Weak<Inner>,
    every: Duration,
    reports: Option<mpsc::Sender<ExpiryNotice>>,
) -> tokio::task::JoinHandle<()> {
    let every = every.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dropped = 0u64;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else {
                break;
            };
            match inner.delete_expired().await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::debug!(
                        table = %inner.qualified_name, removed = count, "expired sessions removed"
                    );
                    if let Some(tx) = &reports {
                        if tx.try_send(ExpiryNotice::Removed { count }).is_err() && !tx.is_closed()
                        {
                            dropped += 1;
                            tracing::warn!(
                                table = %inner.qualified_name, dropped,
                                "cleanup report dropped: the receiver is behind"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    table = %inner.qualified_name, error = %e,
                    "session cleanup failed; retrying at the next interval"
                ),
            }
        }
        tracing::debug!("session cleanup task ends: the store was dropped");
    })
}
