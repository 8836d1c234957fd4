//! Removing expired rows in bounded batches, the periodic cleanup task, and its opt-in
//! stream of how many expired rows each run removed.

use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::cleanup::{self, Sweep};
use coatcheck_core::{ExpiryNotice, StoreError};
use sqlx::Executor as _;
use tokio::sync::mpsc;

use super::{Inner, MySqlStore, Retry};

pub use coatcheck_core::cleanup::REPORT_QUEUE;

impl Inner {
    /// Batches of `DELETE … WHERE expires_at <= ? ORDER BY expires_at LIMIT ?`, each its own
    /// READ COMMITTED autocommit transaction: it locks only the rows it removes (no gap
    /// locks on the expiry index, so inserts and updates of live sessions never wait for
    /// it), and holds them for one batch. A batch chosen as a deadlock victim runs again.
    pub(super) async fn delete_expired(&self) -> Result<u64, StoreError> {
        let now = self.now_param();
        let (sql, pool, batch) = (
            self.sql.delete_expired_batch.as_str(),
            &self.pool,
            self.cleanup_batch,
        );
        let mut total = 0u64;
        loop {
            let done = self
                .run("delete_expired", Retry::IfNotRun, move || async move {
                    let mut conn = pool.acquire().await?;
                    conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    sqlx::query(sql)
                        .bind(now)
                        .bind(batch)
                        .execute(&mut *conn)
                        .await
                })
                .await?
                .rows_affected();
            total += done;
            if done < u64::from(batch) {
                return Ok(total);
            }
        }
    }
}

impl MySqlStore {
    /// Spawns a task running [`SessionStore::delete_expired`](coatcheck_core::SessionStore::delete_expired)
    /// every `every` (the first run right away). An error is logged (`tracing` warning) and
    /// the task carries on at the next tick. The task holds only a weak reference: it ends
    /// by itself once every clone of the store has been dropped; `abort()` the handle to
    /// stop it earlier. A zero `every` is taken as one millisecond.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn f(store: coatcheck::mysql::MySqlStore) {
    /// let cleanup = store.spawn_cleanup(std::time::Duration::from_secs(600));
    /// // ... on shutdown:
    /// cleanup.abort();
    /// # }
    /// ```
    pub fn spawn_cleanup(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        cleanup::spawn(Arc::downgrade(&self.inner), every)
    }

    /// [`spawn_cleanup`](MySqlStore::spawn_cleanup), and a stream of what it did: an
    /// [`ExpiryNotice::Removed`] for each run that removed expired rows. At most once:
    /// when the receiver falls [`REPORT_QUEUE`] reports behind, new ones are dropped and
    /// logged.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    ///
    /// ```no_run
    /// use coatcheck::core::ExpiryNotice;
    ///
    /// # async fn f(store: coatcheck::mysql::MySqlStore) {
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
        cleanup::spawn_reporting(Arc::downgrade(&self.inner), every)
    }
}

/// The task of [`coatcheck_core::cleanup`] runs [`SessionStore::delete_expired`](coatcheck_core::SessionStore::delete_expired).
impl Sweep for Inner {
    fn label(&self) -> &str {
        &self.qualified_name
    }

    async fn sweep(&self) -> Result<u64, StoreError> {
        self.delete_expired().await
    }
}
