//! The history checker over MongoDB (here the MongoDB-wire test server), native and
//! express layouts
//! (`coatcheck_conformance::history`, the entry point published for store authors: the
//! workload, the invariants and the environment variables are documented there). Each
//! history runs several app instances (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind
//! a load balancer, each with its own store client; the `*_faults` tests run against a
//! private server of their own while a nemesis kills its connections, pauses it past the
//! layer's `store_timeout` and restarts it, keeping its data.

mod common;

use coatcheck_conformance::history::{self, Config, Deployment, Target};
use coatcheck_conformance::servers::Server;
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::ExpressFormat;
use coatcheck_mongo::MongoStore;

/// `n` clients (each its own connection pool) on one collection at `url`.
async fn mongo_stores(url: &str, express: bool, n: usize) -> Deployment {
    let collection = harness::unique_name("cc_hist");
    let mut stores = Vec::new();
    for i in 0..n {
        let mut options = coatcheck_mongo::mongodb::options::ClientOptions::parse(url)
            .await
            .expect("MONGODB_URL parses");
        // The Mongo-wire test server does not deduplicate a retryable write the way MongoDB
        // does (by session and transaction number): a compare-and-set save the driver sent
        // again after a reset connection lands once and then answers "no match", which the
        // middleware takes for a conflict and replays — an increment applied twice (found
        // by the nemesis: `counter`, mongo_faults, seed 69001). Against it, writes are not
        // retried by the driver; a reset is then an indeterminate error, as on the others.
        options.retry_writes = Some(false);
        let client = MongoStore::client_with_defaults(options).expect("client");
        let mut b = MongoStore::builder(&client, "coatcheck_test").collection(collection.clone());
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = if i == 0 {
            b.build_with_indexes().await.expect("store with indexes")
        } else {
            b.build().expect("store")
        };
        stores.push(store);
    }
    // The collection is dropped once the history is checked (the Mongo-wire test server
    // slows down as collections pile up).
    let guard = stores.first().cloned().map(common::Scratch);
    Deployment::instances(stores).guard(guard)
}

async fn mongo_store(express: bool, n: usize) -> Deployment {
    let url = harness::url(Backend::Mongo).await.expect("checked");
    mongo_stores(&url, express, n).await
}

coatcheck_conformance::history!(
    mongo,
    config = Config::new("mongo").seeds(10),
    requires = Backend::Mongo,
    |n| mongo_store(false, n)
);

// connect-mongo keeps no user index: no revocation by user (the store says so).
coatcheck_conformance::history!(
    mongo_express,
    config = Config::new("mongo_express").seeds(10),
    requires = Backend::Mongo,
    |n| mongo_store(true, n)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_faults() {
    let Some(server) = Server::mongo() else {
        return;
    };
    let url = server.url().to_owned();
    let config = Config::new("mongo_faults")
        .seeds(4)
        .faults(Target::Mongo(server));
    history::check(config, |n| {
        let url = url.clone();
        async move { mongo_stores(&url, false, n).await }
    })
    .await;
}
