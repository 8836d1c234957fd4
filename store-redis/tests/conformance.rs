//! The coatcheck conformance suite against real Redis servers.
//!
//! - `redis`, `redis_pool`: a single node at `REDIS_URL` (or a testcontainers Redis 7), over
//!   the default `ConnectionManager` and over a deadpool-redis pool.
//! - `redis_cluster`, `redis_cluster_pool`: a cluster at `REDIS_CLUSTER_URLS` (comma-separated
//!   node URLs; `.ci/redis-cluster.sh` starts one), over a `ClusterConnection` and over a
//!   deadpool-redis cluster pool.
//!
//! Every test gets its own key prefix, so they run in parallel and share nothing.

use coatcheck_conformance::{harness, Backend};
use coatcheck_redis::RedisStore;

fn prefix() -> String {
    format!("{}:", harness::unique_name("cc-test"))
}

async fn single_url() -> String {
    harness::url(Backend::Redis)
        .await
        .expect("checked by `requires`")
}

async fn cluster_urls() -> Vec<String> {
    harness::url(Backend::RedisCluster)
        .await
        .expect("checked by `requires`")
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

async fn managed() -> RedisStore {
    RedisStore::builder()
        .prefix(prefix())
        .connect(&single_url().await)
        .await
        .expect("connect to Redis")
}

async fn pooled() -> RedisStore {
    let pool = deadpool_redis::Config::from_url(single_url().await)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool");
    RedisStore::builder().prefix(prefix()).pool(pool)
}

async fn cluster() -> RedisStore {
    RedisStore::builder()
        .prefix(prefix())
        .connect_cluster(cluster_urls().await)
        .await
        .expect("connect to Redis Cluster")
}

async fn cluster_pooled() -> RedisStore {
    let pool = deadpool_redis::cluster::Config::from_urls(cluster_urls().await)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("cluster pool");
    RedisStore::builder().prefix(prefix()).cluster_pool(pool)
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
