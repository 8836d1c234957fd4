//! The coatcheck conformance suite against real Redis servers.
//!
//! - `redis`, `redis_pool`: a single node at `REDIS_URL` (or a testcontainers Redis 7), over
//!   the default `ConnectionManager` and over a deadpool-redis pool.
//! - `redis_cluster`, `redis_cluster_pool`: a cluster at `REDIS_CLUSTER_URLS` (comma-separated
//!   node URLs; `.ci/redis-cluster.sh` starts one), over a `ClusterConnection` and over a
//!   deadpool-redis cluster pool.
//!
//! - `valkey*`: the same on Valkey 8.1 at `VALKEY_URL` / `VALKEY_CLUSTER_URLS`
//!   (`.ci/valkey.sh` starts both), where the store takes its `SET … IFEQ` path; and
//!   `valkey_lua`, Valkey with that path turned off (the scripts alone).
//!
//! Every test gets its own key prefix, so they run in parallel and share nothing.

use coatcheck_conformance::{harness, Backend};
use coatcheck_redis::RedisStore;

fn prefix() -> String {
    format!("{}:", harness::unique_name("cc-test"))
}

async fn single_url() -> String {
    url_of(Backend::Redis).await
}

async fn url_of(backend: Backend) -> String {
    harness::url(backend).await.expect("checked by `requires`")
}

async fn cluster_urls() -> Vec<String> {
    urls_of(Backend::RedisCluster).await
}

async fn urls_of(backend: Backend) -> Vec<String> {
    harness::url(backend)
        .await
        .expect("checked by `requires`")
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

async fn managed() -> RedisStore {
    managed_on(Backend::Redis).await
}

async fn managed_on(backend: Backend) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix())
        .connect(&url_of(backend).await)
        .await
        .expect("connect to Redis")
}

async fn pooled() -> RedisStore {
    pooled_on(Backend::Redis).await
}

async fn pooled_on(backend: Backend) -> RedisStore {
    let pool = deadpool_redis::Config::from_url(url_of(backend).await)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool");
    RedisStore::builder()
        .prefix(prefix())
        .pool(pool)
        .expect("no conflicting options")
}

async fn cluster() -> RedisStore {
    cluster_on(Backend::RedisCluster).await
}

async fn cluster_on(backend: Backend) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix())
        .connect_cluster(urls_of(backend).await)
        .await
        .expect("connect to Redis Cluster")
}

async fn cluster_pooled() -> RedisStore {
    cluster_pooled_on(Backend::RedisCluster).await
}

async fn cluster_pooled_on(backend: Backend) -> RedisStore {
    let pool = deadpool_redis::cluster::Config::from_urls(urls_of(backend).await)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("cluster pool");
    RedisStore::builder()
        .prefix(prefix())
        .cluster_pool(pool)
        .expect("no conflicting options")
}

coatcheck_conformance::suite!(
    redis,
    requires = Backend::Redis,
    managed(),
    unreachable = async { RedisStore::connect_lazy("redis://127.0.0.1:1").expect("valid URL") }
);

coatcheck_conformance::suite!(
    redis_pool,
    requires = Backend::Redis,
    pooled(),
    unreachable = async {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("pool");
        RedisStore::from_pool(pool)
    }
);

coatcheck_conformance::suite!(
    redis_cluster,
    requires = Backend::RedisCluster,
    cluster(),
    unreachable = async {
        RedisStore::builder()
            .connect_cluster_lazy(["redis://127.0.0.1:1"])
            .expect("valid URL")
    }
);

coatcheck_conformance::suite!(
    redis_cluster_pool,
    requires = Backend::RedisCluster,
    cluster_pooled(),
    unreachable = async {
        let pool =
            deadpool_redis::cluster::Config::from_urls(vec!["redis://127.0.0.1:1".to_owned()])
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .expect("cluster pool");
        RedisStore::from_cluster_pool(pool)
    }
);

// A single node driven as if it were a cluster (index kept by separate commands), as behind a
// sharding proxy.
coatcheck_conformance::suite!(redis_single_key_scripts, requires = Backend::Redis, async {
    RedisStore::builder()
        .prefix(prefix())
        .single_key_scripts(true)
        .connect(&single_url().await)
        .await
        .expect("connect to Redis")
});

// Express-compatible mode (connect-redis's layout), on a single node and on a cluster.
coatcheck_conformance::express_suite!(
    redis_express,
    requires = Backend::Redis,
    async {
        RedisStore::builder()
            .prefix(prefix())
            .express(coatcheck_core::ExpressFormat::new())
            .connect(&single_url().await)
            .await
            .expect("connect to Redis")
    },
    unreachable = async {
        RedisStore::builder()
            .express(coatcheck_core::ExpressFormat::new())
            .connect_lazy("redis://127.0.0.1:1")
            .expect("valid URL")
    }
);

coatcheck_conformance::express_suite!(
    redis_cluster_express,
    requires = Backend::RedisCluster,
    async {
        RedisStore::builder()
            .prefix(prefix())
            .express(coatcheck_core::ExpressFormat::new())
            .connect_cluster(cluster_urls().await)
            .await
            .expect("connect to Redis Cluster")
    }
);

// Valkey 8.1: the `SET … IFEQ` path, everywhere the Redis suites run.
coatcheck_conformance::suite!(
    valkey,
    requires = Backend::Valkey,
    managed_on(Backend::Valkey)
);
coatcheck_conformance::suite!(
    valkey_pool,
    requires = Backend::Valkey,
    pooled_on(Backend::Valkey)
);
coatcheck_conformance::suite!(
    valkey_cluster,
    requires = Backend::ValkeyCluster,
    cluster_on(Backend::ValkeyCluster)
);
coatcheck_conformance::suite!(
    valkey_cluster_pool,
    requires = Backend::ValkeyCluster,
    cluster_pooled_on(Backend::ValkeyCluster)
);
coatcheck_conformance::suite!(
    valkey_single_key_scripts,
    requires = Backend::Valkey,
    async {
        RedisStore::builder()
            .prefix(prefix())
            .single_key_scripts(true)
            .connect(&url_of(Backend::Valkey).await)
            .await
            .expect("connect to Valkey")
    }
);
coatcheck_conformance::suite!(valkey_lua, requires = Backend::Valkey, async {
    RedisStore::builder()
        .prefix(prefix())
        .use_set_ifeq(false)
        .connect(&url_of(Backend::Valkey).await)
        .await
        .expect("connect to Valkey")
});
coatcheck_conformance::express_suite!(valkey_express, requires = Backend::Valkey, async {
    RedisStore::builder()
        .prefix(prefix())
        .express(coatcheck_core::ExpressFormat::new())
        .connect(&url_of(Backend::Valkey).await)
        .await
        .expect("connect to Valkey")
});
coatcheck_conformance::express_suite!(
    valkey_cluster_express,
    requires = Backend::ValkeyCluster,
    async {
        RedisStore::builder()
            .prefix(prefix())
            .express(coatcheck_core::ExpressFormat::new())
            .connect_cluster(urls_of(Backend::ValkeyCluster).await)
            .await
            .expect("connect to Valkey cluster")
    }
);

// Session data encrypted at rest: the same contract, on Redis 7 (scripts), Valkey (the
// `SET … IFEQ` path compares the encrypted bytes) and a cluster.
async fn encrypted_on(backend: Backend) -> RedisStore {
    let b = RedisStore::builder()
        .prefix(prefix())
        .codec(coatcheck_conformance::encryption::codec());
    match backend {
        Backend::RedisCluster => b.connect_cluster(urls_of(backend).await).await,
        _ => b.connect(&url_of(backend).await).await,
    }
    .expect("connect")
}

// Ids hashed at rest (the user index holds the hashes), on a node and a cluster.
coatcheck_conformance::suite!(redis_hashed, requires = Backend::Redis, async {
    coatcheck_core::HashedIds::new(managed().await).expect("native store")
});

coatcheck_conformance::suite!(
    redis_cluster_hashed,
    requires = Backend::RedisCluster,
    async { coatcheck_core::HashedIds::new(cluster().await).expect("native store") }
);

coatcheck_conformance::suite!(redis_encrypted, requires = Backend::Redis, async {
    encrypted_on(Backend::Redis).await
});

coatcheck_conformance::suite!(valkey_encrypted, requires = Backend::Valkey, async {
    encrypted_on(Backend::Valkey).await
});

coatcheck_conformance::suite!(
    redis_cluster_encrypted,
    requires = Backend::RedisCluster,
    async { encrypted_on(Backend::RedisCluster).await }
);

/// Every terminal of the builder refuses it, those that take a connection or a pool too
/// (they used to log the conflict and store sessions as plain JSON).
#[tokio::test]
async fn express_mode_refuses_an_encrypting_codec() {
    let conflicting = || {
        RedisStore::builder()
            .express(coatcheck_core::ExpressFormat::new())
            .codec(coatcheck_conformance::encryption::codec())
    };
    let url = "redis://127.0.0.1:1";
    let pool = || {
        deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("pool")
    };
    let cluster_pool = || {
        deadpool_redis::cluster::Config::from_urls(vec![url.to_owned()])
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("cluster pool")
    };
    let manager = coatcheck_redis::redis::aio::ConnectionManager::new_lazy_with_config(
        coatcheck_redis::redis::Client::open(url).expect("url"),
        coatcheck_redis::redis::aio::ConnectionManagerConfig::new(),
    )
    .expect("lazy manager");
    let cluster = coatcheck_redis::redis::cluster::ClusterClient::new(vec![url])
        .expect("cluster client")
        .get_pending_async_connection_with_config(
            coatcheck_redis::redis::cluster::ClusterConfig::new(),
        );
    let results = [
        ("connect_lazy", conflicting().connect_lazy(url)),
        (
            "connect_cluster_lazy",
            conflicting().connect_cluster_lazy([url]),
        ),
        ("pool", conflicting().pool(pool())),
        ("cluster_pool", conflicting().cluster_pool(cluster_pool())),
        (
            "connection_manager",
            conflicting().connection_manager(manager),
        ),
        (
            "cluster_connection",
            conflicting().cluster_connection(cluster),
        ),
    ];
    for (terminal, refused) in results {
        assert!(
            matches!(refused, Err(coatcheck_redis::BuildError::EncryptedExpress)),
            "{terminal}: {:?}",
            refused.err()
        );
    }
}
