//! The history checker over SQLite (`coatcheck_conformance::history`, the entry point
//! published for store authors: the workload, the invariants and the environment variables
//! are documented there). Each history runs several app instances
//! (`COATCHECK_HISTORY_INSTANCES`, default 3), as several processes on one machine would,
//! each with its own pools (its own SQLite connections) on one database file, so writes of
//! different instances meet at SQLite's file lock and its busy timeout.

mod common;

use std::time::Duration;

use coatcheck_conformance::history::{Config, Deployment};
use coatcheck_sqlite::SqliteStore;

/// `n` stores, each with pools of its own, on one fresh file.
async fn sqlite_stores(n: usize) -> Deployment {
    let file = common::fresh_file("cc_hist");
    let url = common::url_of(&file);
    let mut stores = Vec::new();
    for i in 0..n {
        let store = SqliteStore::builder()
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .expect("valid config");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        stores.push(store);
    }
    Deployment::instances(stores).guard(file)
}

coatcheck_conformance::history!(
    sqlite,
    config = Config::new("sqlite").seeds(25),
    sqlite_stores
);
