//! The history checker over SQLite (`coatcheck_conformance::history`, the entry point
//! published for store authors: the workload, the invariants and the environment variables
//! are documented there). Each history runs several app instances
//! (`COATCHECK_HISTORY_INSTANCES`, default 3), as several processes on one machine would,
//! each with its own pools (its own SQLite connections) on one database file, so writes of
//! different instances meet at SQLite's file lock and its busy timeout.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coatcheck_conformance::history::{self, Config, Deployment, FaultKind, FaultTarget};
use coatcheck_sqlite::SqliteStore;

/// `n` stores, each with pools of its own, on one fresh file (and its URL).
async fn sqlite_stores(n: usize, busy: Duration) -> (Deployment, String) {
    stores_on_file(n, busy, false).await
}

/// The same, in native or express layout.
async fn stores_on_file(n: usize, busy: Duration, express: bool) -> (Deployment, String) {
    let file = common::fresh_file("cc_hist");
    let url = common::url_of(&file);
    let mut stores = Vec::new();
    for i in 0..n {
        let mut builder = SqliteStore::builder();
        if express {
            builder = builder.express(coatcheck_core::ExpressFormat::new());
        }
        let store = builder
            .acquire_timeout(Duration::from_secs(10))
            .busy_timeout(busy)
            .connect_lazy(&url)
            .expect("valid config");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        stores.push(store);
    }
    (Deployment::instances(stores).guard(file), url)
}

coatcheck_conformance::history!(
    sqlite,
    config = Config::new("sqlite").seeds(25),
    |n| async move {
        sqlite_stores(n, coatcheck_sqlite::DEFAULT_BUSY_TIMEOUT)
            .await
            .0
    }
);

// better-sqlite3-session-store's table, with the principal index.
coatcheck_conformance::history!(
    sqlite_express,
    config = Config::new("sqlite_express").seeds(25),
    |n| async move {
        stores_on_file(n, coatcheck_sqlite::DEFAULT_BUSY_TIMEOUT, true)
            .await
            .0
    }
);

/// The fault that applies to an embedded database: another process holding the file's
/// write lock (a backup, a long migration, a stuck job) for longer than the layer's
/// `store_timeout`. Writes wait at SQLite's busy timeout and then fail (`database is
/// locked`), so their requests answer with an error; a write already running when its
/// request gave up may still land (indeterminate). Reads go on (WAL).
struct HeldLock {
    /// The database of the history running now (each history has a file of its own).
    url: Arc<Mutex<String>>,
}

#[async_trait::async_trait]
impl FaultTarget for HeldLock {
    fn kinds(&self) -> Vec<FaultKind> {
        vec![FaultKind::Pause]
    }

    async fn inject(&self, kind: FaultKind, pause: Duration) {
        if kind != FaultKind::Pause {
            return;
        }
        let url = self.url.lock().map(|u| u.clone()).unwrap_or_default();
        // A pool of one: the transaction belongs to its one connection until `ROLLBACK`.
        let Ok(other) = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
        else {
            return;
        };
        if sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&other)
            .await
            .is_ok()
        {
            tokio::time::sleep(pause).await;
            let _ = sqlx::raw_sql("ROLLBACK").execute(&other).await;
        }
        other.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_faults() {
    faults("sqlite_faults", false).await;
}

/// The same fault on better-sqlite3-session-store's table (its compare-and-set in a
/// `BEGIN IMMEDIATE` transaction meets the held lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_express_faults() {
    faults("sqlite_express_faults", true).await;
}

async fn faults(label: &str, express: bool) {
    let url = Arc::new(Mutex::new(String::new()));
    let config = Config::new(label)
        .seeds(6)
        .faults(HeldLock { url: url.clone() });
    history::check(config, |n| {
        let url = url.clone();
        async move {
            // A busy timeout shorter than the layer's store_timeout: writes that meet the
            // held lock fail in the store (`database is locked`), so the store's error path
            // is what the requests see, not only the layer's timeout.
            let deployment = stores_on_file(n, Duration::from_millis(250), express).await;
            if let Ok(mut u) = url.lock() {
                u.clone_from(&deployment.1);
            }
            deployment.0
        }
    })
    .await;
}
