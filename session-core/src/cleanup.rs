//! A periodic cleanup task for stores whose expired records stay until something removes
//! them (SQL tables: Postgres, MySQL, SQLite), and its opt-in stream of reports. One task
//! for every such store, so each behaves the same: the first run right away, a failed run
//! logged and retried at the next tick, missed ticks not bunched up, the task ending by
//! itself once the store is dropped, reports delivered at most once.
//!
//! A store implements [`Sweep`] on the state its clones share and offers
//! `spawn_cleanup` / `spawn_cleanup_reporting` over [`spawn`]:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use coatcheck::core::cleanup::{self, Sweep};
//! use coatcheck::store::StoreError;
//!
//! /// What every clone of a store shares.
//! struct Inner {
//!     expired: Mutex<Vec<u64>>,
//! }
//!
//! impl Sweep for Inner {
//!     fn label(&self) -> &str {
//!         "toy_sessions"
//!     }
//!     async fn sweep(&self) -> Result<u64, StoreError> {
//!         let mut expired = self.expired.lock().expect("not poisoned");
//!         let removed = expired.len() as u64;
//!         expired.clear();
//!         Ok(removed)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let inner = Arc::new(Inner { expired: Mutex::new(vec![1, 2, 3]) });
//! let (task, mut reports) = cleanup::spawn_reporting(Arc::downgrade(&inner), Duration::from_secs(600));
//! assert_eq!(
//!     reports.recv().await,
//!     Some(coatcheck::core::ExpiryNotice::Removed { count: 3 })
//! );
//! drop(inner); // the task ends at its next tick, or now:
//! task.abort();
//! # }
//! ```

use std::future::Future;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{ExpiryNotice, StoreError};

/// How many reports wait for the receiver of [`spawn_reporting`] before new ones are
/// dropped (and logged).
pub const REPORT_QUEUE: usize = 64;

/// What a cleanup task runs: removing every expired record, once.
///
/// ```
/// # use coatcheck::core::cleanup::Sweep;
/// # use coatcheck::store::StoreError;
/// struct NothingExpires;
/// impl Sweep for NothingExpires {
///     fn label(&self) -> &str { "nothing" }
///     async fn sweep(&self) -> Result<u64, StoreError> { Ok(0) }
/// }
/// ```
pub trait Sweep: Send + Sync + 'static {
    /// What the logs name (the table, for example).
    fn label(&self) -> &str;

    /// Removes every expired record; how many were removed.
    fn sweep(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Spawns a task running [`Sweep::sweep`] every `every` (the first run right away; a zero
/// `every` is taken as one millisecond). An error is logged (`tracing` warning) and the task
/// carries on at the next tick. The task holds only `target`, a weak reference: it ends by
/// itself once the target has been dropped; `abort()` the handle to stop it earlier.
///
/// # Panics
///
/// When called outside a Tokio runtime.
pub fn spawn<T: Sweep>(target: Weak<T>, every: Duration) -> JoinHandle<()> {
    run(target, every, None)
}

/// [`spawn`], and a stream of what it did: an [`ExpiryNotice::Removed`] for each run that
/// removed records. At most once: when the receiver falls [`REPORT_QUEUE`] reports behind,
/// new ones are dropped and logged.
///
/// # Panics
///
/// When called outside a Tokio runtime.
pub fn spawn_reporting<T: Sweep>(
    target: Weak<T>,
    every: Duration,
) -> (JoinHandle<()>, mpsc::Receiver<ExpiryNotice>) {
    let (tx, rx) = mpsc::channel(REPORT_QUEUE);
    (run(target, every, Some(tx)), rx)
}

fn run<T: Sweep>(
    target: Weak<T>,
    every: Duration,
    reports: Option<mpsc::Sender<ExpiryNotice>>,
) -> JoinHandle<()> {
    let every = every.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dropped = 0u64;
        loop {
            tick.tick().await;
            let Some(target) = target.upgrade() else {
                break;
            };
            match target.sweep().await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::debug!(table = %target.label(), removed = count, "expired sessions removed");
                    if let Some(tx) = &reports {
                        if tx.try_send(ExpiryNotice::Removed { count }).is_err() && !tx.is_closed()
                        {
                            dropped += 1;
                            tracing::warn!(
                                table = %target.label(), dropped,
                                "cleanup report dropped: the receiver is behind"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    table = %target.label(), error = %e,
                    "session cleanup failed; retrying at the next interval"
                ),
            }
        }
        tracing::debug!("session cleanup task ends: the store was dropped");
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{spawn_reporting, Sweep};
    use crate::{ExpiryNotice, StoreError};

    /// Fails its first run, then removes two records a run.
    #[derive(Default)]
    struct Flaky {
        runs: AtomicU32,
    }

    impl Sweep for Flaky {
        fn label(&self) -> &str {
            "flaky"
        }
        async fn sweep(&self) -> Result<u64, StoreError> {
            match self.runs.fetch_add(1, Ordering::SeqCst) {
                0 => Err(StoreError::backend("the server went away")),
                _ => Ok(2),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_run_is_retried_and_the_task_ends_with_its_target() {
        let target = Arc::new(Flaky::default());
        let (task, mut reports) =
            spawn_reporting(Arc::downgrade(&target), Duration::from_millis(5));
        // The failed first run reported nothing; the second reported its count.
        assert_eq!(
            reports.recv().await,
            Some(ExpiryNotice::Removed { count: 2 })
        );
        assert!(target.runs.load(Ordering::SeqCst) >= 2);
        drop(target);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once its target is dropped")
            .expect("the task did not panic");
        // The task's sender went with it: the stream ends.
        while reports.recv().await.is_some() {}
    }
}
