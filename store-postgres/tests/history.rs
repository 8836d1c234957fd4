//! The history checker over PostgreSQL, native and express layouts
//! (`coatcheck_conformance::history`, the entry point published for store authors: the
//! workload, the invariants and the environment variables are documented there). Each
//! history runs several app instances (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind
//! a load balancer, each with its own store client; the `*_faults` tests run against a
//! private server of their own while a nemesis kills its connections, pauses it past the
//! layer's `store_timeout` and restarts it, keeping its data.

use std::time::Duration;

use coatcheck_conformance::history::{self, Config, Deployment, Target};
use coatcheck_conformance::servers::PostgresServer;
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::ExpressFormat;
use coatcheck_postgres::PostgresStore;

/// Drops the test's schema when the history is done.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, sql) = (
            self.url.clone(),
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
        let _ = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::raw_sql(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// `n` pools on one schema of the database at `url`.
async fn postgres_stores(url: &str, express: bool, n: usize) -> Deployment {
    let name = harness::unique_name("cc_hist");
    let mut stores = Vec::new();
    for i in 0..n {
        let mut b = PostgresStore::builder()
            .schema(&name)
            .table("sessions")
            .acquire_timeout(Duration::from_secs(10));
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = b.connect_lazy(url).expect("valid config");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        stores.push(store);
    }
    Deployment::instances(stores).guard(Schema {
        url: url.to_owned(),
        name,
    })
}

async fn postgres_store(express: bool, n: usize) -> Deployment {
    let url = harness::url(Backend::Postgres).await.expect("checked");
    postgres_stores(&url, express, n).await
}

coatcheck_conformance::history!(
    postgres,
    config = Config::new("postgres").seeds(25),
    requires = Backend::Postgres,
    |n| postgres_store(false, n)
);

// express-session's connect-pg-simple table, with the user column coatcheck adds.
coatcheck_conformance::history!(
    postgres_express,
    config = Config::new("postgres_express").seeds(25),
    requires = Backend::Postgres,
    |n| postgres_store(true, n)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_faults() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let url = server.url();
    let config = Config::new("postgres_faults")
        .seeds(6)
        .faults(Target::Postgres(server));
    history::check(config, |n| {
        let url = url.clone();
        async move { postgres_stores(&url, false, n).await }
    })
    .await;
}
