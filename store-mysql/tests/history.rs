//! The history checker over MySQL / MariaDB (`coatcheck_conformance::history`, the entry
//! point published for store authors: the workload, the invariants and the environment
//! variables are documented there). Each history runs several app instances
//! (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind a load balancer, each with its own
//! pool on one table.

mod common;

use std::time::Duration;

use coatcheck_conformance::history::{Config, Deployment};
use coatcheck_conformance::{harness, Backend};
use coatcheck_mysql::MySqlStore;

/// `n` pools on one fresh table.
async fn mysql_stores(n: usize) -> Deployment {
    let url = harness::url(Backend::Mysql).await.expect("checked");
    let table = harness::unique_name("cc_hist");
    let mut stores = Vec::new();
    for i in 0..n {
        let store = MySqlStore::builder()
            .table(&table)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .expect("valid config");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        stores.push(store);
    }
    Deployment::instances(stores).guard(common::TableGuard { url, table })
}

coatcheck_conformance::history!(
    mysql,
    config = Config::new("mysql").seeds(25),
    requires = Backend::Mysql,
    mysql_stores
);
