//! The history checker over Redis 7, Valkey 8.1 (its `SET … IFEQ` path, and encrypted at
//! rest across a key rotation), both clusters and both layouts
//! (`coatcheck_conformance::history`, the entry point published for store authors: the
//! workload, the invariants and the environment variables are documented there). Each
//! history runs several app instances (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind
//! a load balancer, each with its own store client; the `*_faults` tests run against a
//! private server of their own while a nemesis kills its connections, pauses it past the
//! layer's `store_timeout` and restarts it, keeping its data.

use std::sync::Arc;

use coatcheck_conformance::history::{self, Config, Deployment, Target};
use coatcheck_conformance::servers::Server;
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{EncryptedCodec, ExpressFormat, SessionStore};
use coatcheck_redis::RedisStore;

/// `n` clients of a single Redis or Valkey node at `url` (Valkey 8.1: the `SET … IFEQ`
/// path, each client with its own cache of the bytes it last saw), on one key prefix.
async fn node_stores(
    url: &str,
    express: bool,
    codec: Option<EncryptedCodec>,
    n: usize,
) -> Deployment {
    let prefix = format!("{}:", harness::unique_name("cc-hist"));
    Deployment::of(node_clients(url, &prefix, express, codec, n).await)
}

async fn node_clients(
    url: &str,
    prefix: &str,
    express: bool,
    codec: Option<EncryptedCodec>,
    n: usize,
) -> Vec<Arc<dyn SessionStore>> {
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for _ in 0..n {
        let mut b = RedisStore::builder().prefix(prefix.to_owned());
        if express {
            b = b.express(ExpressFormat::new());
        }
        if let Some(codec) = &codec {
            b = b.codec(codec.clone());
        }
        stores.push(Arc::new(b.connect(url).await.expect("connect to Redis")));
    }
    stores
}

async fn node_store(backend: Backend, express: bool, n: usize) -> Deployment {
    let url = harness::url(backend).await.expect("checked");
    node_stores(&url, express, None, n).await
}

coatcheck_conformance::history!(
    redis,
    config = Config::new("redis").seeds(30),
    requires = Backend::Redis,
    |n| node_store(Backend::Redis, false, n)
);

// connect-redis keeps no user index: no revocation by user (the store says so).
coatcheck_conformance::history!(
    redis_express,
    config = Config::new("redis_express").seeds(30),
    requires = Backend::Redis,
    |n| node_store(Backend::Redis, true, n)
);

coatcheck_conformance::history!(
    valkey,
    config = Config::new("valkey").seeds(30),
    requires = Backend::Valkey,
    |n| node_store(Backend::Valkey, false, n)
);

// Valkey with session data encrypted at rest: the `SET … IFEQ` path compares the bytes it
// last wrote, which now differ at every write (a fresh nonce). Each history deploys four
// configurations in turn, as the README's procedure says: sessions in the clear, then
// encryption with `read_plaintext(true)` (the migration), then a new key first with the
// old one kept (a deploy in which every active user only reads: the sweep), then the old
// key retired — each step after the window in which every active session was used.
// Invariant (with **status**): no request fails (`500`, a `Decode`) for a session written
// under a key in the ring, and retiring the old key (or the plaintext) after the window
// ends no active session.
//
// Without remember-me's policy a read only touches: the rewrite of a session read under
// an old key is the middleware's, not a side effect of the touch being a save.
coatcheck_conformance::history!(
    valkey_encrypted,
    config = Config::new("valkey_encrypted")
        .seeds(15)
        .without_remember_policy(),
    requires = Backend::Valkey,
    |n| async move {
        use coatcheck_conformance::encryption::keys;
        let url = harness::url(Backend::Valkey).await.expect("checked");
        let prefix = format!("{}:", harness::unique_name("cc-hist"));
        let (old, new) = ([0x11; 32], [0x22; 32]);
        let configs = [
            None,
            Some(EncryptedCodec::new(keys(&[old])).read_plaintext(true)),
            Some(EncryptedCodec::new(keys(&[new, old]))),
            Some(EncryptedCodec::new(keys(&[new]))),
        ];
        let mut phases = Vec::new();
        for codec in configs {
            phases.push(node_clients(&url, &prefix, false, codec, n).await);
        }
        let everything = EncryptedCodec::new(keys(&[new, old])).read_plaintext(true);
        let reader = node_clients(&url, &prefix, false, Some(everything), 1).await;
        Deployment::phased(phases, vec![2], reader[0].clone())
    }
);

coatcheck_conformance::history!(valkey_express, requires = Backend::Valkey, |n| node_store(
    Backend::Valkey,
    true,
    n
));

async fn cluster_store(backend: Backend, n: usize) -> Deployment {
    let urls: Vec<String> = harness::url(backend)
        .await
        .expect("checked")
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let prefix = format!("{}:", harness::unique_name("cc-hist"));
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(
            RedisStore::builder()
                .prefix(prefix.clone())
                .connect_cluster(urls.clone())
                .await
                .expect("connect to Redis Cluster"),
        );
    }
    Deployment::instances(stores)
}

coatcheck_conformance::history!(
    redis_cluster,
    config = Config::new("redis_cluster").seeds(30),
    requires = Backend::RedisCluster,
    |n| cluster_store(Backend::RedisCluster, n)
);

coatcheck_conformance::history!(valkey_cluster, requires = Backend::ValkeyCluster, |n| {
    cluster_store(Backend::ValkeyCluster, n)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_faults() {
    let Some(server) = Server::redis_durable() else {
        return;
    };
    let url = server.url().to_owned();
    let config = Config::new("redis_faults")
        .seeds(8)
        .faults(Target::Redis(server));
    history::check(config, |n| {
        let url = url.clone();
        async move { node_stores(&url, false, None, n).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_faults() {
    let Some(server) = Server::valkey_durable() else {
        return;
    };
    let url = server.url().to_owned();
    let config = Config::new("valkey_faults")
        .seeds(8)
        .faults(Target::Redis(server));
    history::check(config, |n| {
        let url = url.clone();
        async move { node_stores(&url, false, None, n).await }
    })
    .await;
}
