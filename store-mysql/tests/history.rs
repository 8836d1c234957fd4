//! The history checker over MySQL / MariaDB (`coatcheck_conformance::history`, the entry
//! point published for store authors: the workload, the invariants and the environment
//! variables are documented there). Each history runs several app instances
//! (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind a load balancer, each with its own
//! pool on one table.

mod common;

use std::time::Duration;

use coatcheck_conformance::history::{self, Config, Deployment, FaultKind, FaultTarget};
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::ExpressFormat;
use coatcheck_mysql::MySqlStore;

/// `n` pools on one fresh table (express-mysql-session's table when `express`).
async fn mysql_stores(n: usize, express: bool) -> Deployment {
    let url = harness::url(Backend::Mysql).await.expect("checked");
    let table = harness::unique_name("cc_hist");
    let mut stores = Vec::new();
    for i in 0..n {
        let mut builder = MySqlStore::builder();
        if express {
            builder = builder.express(ExpressFormat::new());
        }
        let store = builder
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
    |n| mysql_stores(n, false)
);

// express-mysql-session's table, with the principal's virtual column.
coatcheck_conformance::history!(
    mysql_express,
    config = Config::new("mysql_express").seeds(25),
    requires = Backend::Mysql,
    |n| mysql_stores(n, true)
);

/// Faults on the shared MariaDB, confined to the faults test's own database so that the
/// tests running beside it are untouched: its connections killed (`KILL CONNECTION`, the
/// server's own command), and its tables write-locked past the layer's `store_timeout`
/// (`LOCK TABLES … WRITE` from another connection: every statement of the stores waits, as
/// on a paused server; those waiting a third of the way through are killed, the others run
/// when the lock goes). A restart needs a private server and is not injected here.
struct MysqlFaults {
    admin_url: String,
    database: String,
    /// The tables to lock (the session table, and the native layout's lock table).
    tables: Vec<String>,
}

impl MysqlFaults {
    /// `KILL CONNECTION` of every connection on the faults test's database.
    async fn kill(&self, conn: &sqlx::MySqlPool) {
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
        )
        .bind(&self.database)
        .fetch_all(conn)
        .await
        .unwrap_or_default();
        for id in ids {
            let _ = sqlx::raw_sql(&format!("KILL CONNECTION {id}"))
                .execute(conn)
                .await;
        }
    }
}

#[async_trait::async_trait]
impl FaultTarget for MysqlFaults {
    fn kinds(&self) -> Vec<FaultKind> {
        vec![FaultKind::KillConnections, FaultKind::Pause]
    }

    async fn inject(&self, kind: FaultKind, pause: Duration) {
        // One connection (a pool of one: a `&mut` connection does not make a `Send`
        // future here); the table lock belongs to it until `UNLOCK TABLES`.
        let Ok(conn) = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
        else {
            return;
        };
        match kind {
            FaultKind::KillConnections => self.kill(&conn).await,
            FaultKind::Pause => {
                // The tables locked; a third of the way through, the statements waiting for
                // them killed (their requests see the store's error, not only the layer's
                // timeout); the rest wait until the lock goes.
                let db = &self.database;
                let lock = self
                    .tables
                    .iter()
                    .map(|t| format!("`{db}`.`{t}` WRITE"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let lock = format!("LOCK TABLES {lock}");
                if sqlx::raw_sql(&lock).execute(&conn).await.is_ok() {
                    tokio::time::sleep(pause / 3).await;
                    self.kill(&conn).await;
                    tokio::time::sleep(pause - pause / 3).await;
                    let _ = sqlx::raw_sql("UNLOCK TABLES").execute(&conn).await;
                }
            }
            _ => {}
        }
        conn.close().await;
    }
}

/// The histories under faults: the stores on a database of their own (`cc_faults_…`), each
/// history on a fresh table of one name (the nemesis locks it by that name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_faults() {
    faults("mysql_faults", false).await;
}

/// The same faults on express-mysql-session's table (its compare-and-set on the JSON's
/// hash, retried after killed connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_express_faults() {
    faults("mysql_express_faults", true).await;
}

async fn faults(label: &str, express: bool) {
    if !harness::require(Some(Backend::Mysql)).await {
        return;
    }
    let admin_url = harness::url(Backend::Mysql).await.expect("checked");
    let database = harness::unique_name("cc_faults");
    common::admin(&admin_url, format!("CREATE DATABASE `{database}`")).expect("database");
    let _drop = DropDatabase {
        url: admin_url.clone(),
        name: database.clone(),
    };
    let (base, _) = admin_url.rsplit_once('/').expect("a database in MYSQL_URL");
    let url = format!("{base}/{database}");
    let table = "sessions".to_owned();
    let tables = if express {
        vec![table.clone()]
    } else {
        vec![table.clone(), format!("{table}_locks")]
    };
    let config = Config::new(label).seeds(6).faults(MysqlFaults {
        admin_url: admin_url.clone(),
        database: database.clone(),
        tables,
    });
    history::check(config, |n| {
        let (url, table) = (url.clone(), table.clone());
        async move {
            let mut stores = Vec::new();
            for i in 0..n {
                // An acquire timeout (and so a retry window) well inside the layer's
                // store_timeout: a statement killed while it waited for the locked table
                // is retried a little, then its error reaches the request (the store's
                // error path), rather than only the layer's timeout.
                let mut builder = MySqlStore::builder();
                if express {
                    builder = builder.express(ExpressFormat::new());
                }
                let store = builder
                    .table(&table)
                    .acquire_timeout(Duration::from_millis(300))
                    .connect_lazy(&url)
                    .expect("valid config");
                if i == 0 {
                    store.migrate().await.expect("migrate");
                }
                stores.push(store);
            }
            Deployment::instances(stores).guard(common::TableGuard { url, table })
        }
    })
    .await;
}

/// Drops the faults test's database at the end.
struct DropDatabase {
    url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let _ = common::admin(
            &self.url,
            format!("DROP DATABASE IF EXISTS `{}`", self.name),
        );
    }
}
