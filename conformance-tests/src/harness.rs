//! Finding the backends the store tests run against.
//!
//! In order: an environment variable with the server's URL (`REDIS_URL`, `DATABASE_URL`,
//! `MONGODB_URL`, `MYSQL_URL`, `REDIS_CLUSTER_URLS` — comma-separated node URLs); otherwise, with the
//! default `testcontainers` feature and a Docker engine that answers, a container started
//! once per test process (Redis 7, Postgres 16, MongoDB 7, MariaDB 10.11; no cluster image, so a cluster
//! needs `REDIS_CLUSTER_URLS`); otherwise nothing, and each test of that backend prints
//! `skipped: no <backend> ...` and passes — or fails, if `COATCHECK_REQUIRE_BACKENDS`
//! (comma-separated: `redis,redis-cluster,postgres,mongo,mysql`, or `all`) names the backend.

use std::io::Write as _;

/// A server a store test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// A single Redis node: `REDIS_URL`.
    Redis,
    /// A Redis Cluster: `REDIS_CLUSTER_URLS` (comma-separated node URLs).
    RedisCluster,
    /// A single Valkey ≥ 8.1 node (it has `SET … IFEQ`): `VALKEY_URL`.
    Valkey,
    /// A Valkey ≥ 8.1 cluster: `VALKEY_CLUSTER_URLS` (comma-separated node URLs).
    ValkeyCluster,
    /// PostgreSQL: `DATABASE_URL`.
    Postgres,
    /// MongoDB or a MongoDB-wire server: `MONGODB_URL`.
    Mongo,
    /// MySQL or MariaDB: `MYSQL_URL` (e.g. `mysql://root@127.0.0.1:3306/test`).
    Mysql,
    /// A store author's own server (DynamoDB, etcd, ...): its name in
    /// `COATCHECK_REQUIRE_BACKENDS` and the variable holding its URL. No container is
    /// started for it. Made with [`Backend::custom`].
    Custom {
        /// The name `COATCHECK_REQUIRE_BACKENDS` and skip messages use.
        name: &'static str,
        /// The environment variable holding the URL.
        env_var: &'static str,
    },
}

impl Backend {
    /// A store author's own server, required in CI like the in-tree ones:
    ///
    /// ```no_run
    /// use coatcheck_conformance::{harness, Backend};
    ///
    /// const DYNAMO: Backend = Backend::custom("dynamodb", "DYNAMODB_URL");
    ///
    /// # async fn f() {
    /// // Skips visibly without DYNAMODB_URL; fails instead when
    /// // COATCHECK_REQUIRE_BACKENDS names "dynamodb" (or "all").
    /// if harness::require(Some(DYNAMO)).await {
    ///     let url = harness::url(DYNAMO).await.expect("checked");
    ///     # let _ = url;
    /// }
    /// # }
    /// ```
    pub const fn custom(name: &'static str, env_var: &'static str) -> Backend {
        Backend::Custom { name, env_var }
    }

    /// The name used in `COATCHECK_REQUIRE_BACKENDS` and in skip messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis-cluster",
            Backend::Valkey => "valkey",
            Backend::ValkeyCluster => "valkey-cluster",
            Backend::Postgres => "postgres",
            Backend::Mongo => "mongo",
            Backend::Mysql => "mysql",
            Backend::Custom { name, .. } => name,
        }
    }

    /// The environment variable holding the URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Backend::Redis => "REDIS_URL",
            Backend::RedisCluster => "REDIS_CLUSTER_URLS",
            Backend::Valkey => "VALKEY_URL",
            Backend::ValkeyCluster => "VALKEY_CLUSTER_URLS",
            Backend::Postgres => "DATABASE_URL",
            Backend::Mongo => "MONGODB_URL",
            Backend::Mysql => "MYSQL_URL",
            Backend::Custom { env_var, .. } => env_var,
        }
    }

    /// Whether `COATCHECK_REQUIRE_BACKENDS` names this backend.
    pub fn is_required(self) -> bool {
        std::env::var("COATCHECK_REQUIRE_BACKENDS").is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == self.name() || n == "all")
        })
    }
}

/// The URL of `backend`: from its environment variable, else from a testcontainers container
/// (when that feature is on and Docker answers), else `None`.
pub async fn url(backend: Backend) -> Option<String> {
    if let Ok(v) = std::env::var(backend.env_var()) {
        if !v.trim().is_empty() {
            return Some(v);
        }
    }
    #[cfg(feature = "testcontainers")]
    {
        containers::url(backend).await
    }
    #[cfg(not(feature = "testcontainers"))]
    {
        None
    }
}

/// Whether a test needing `backend` can run. `None` (no backend needed) is always true.
///
/// When the backend is missing, prints one `skipped: no <backend>` line straight to the
/// terminal (libtest does not capture it) and returns false; if the backend is required by
/// `COATCHECK_REQUIRE_BACKENDS`, panics instead.
pub async fn require(backend: Option<Backend>) -> bool {
    let Some(backend) = backend else {
        return true;
    };
    if url(backend).await.is_some() {
        return true;
    }
    let msg = format!(
        "skipped: no {} (set {} or start a Docker engine)",
        backend.name(),
        backend.env_var()
    );
    if backend.is_required() {
        panic!("{msg}, but COATCHECK_REQUIRE_BACKENDS requires it");
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

/// A name nobody else uses, for a key prefix, table or collection:
/// `{base}_` followed by 12 random lowercase hex digits (valid as a SQL identifier).
pub fn unique_name(base: &str) -> String {
    let mut b = [0u8; 6];
    // Randomness failing only weakens uniqueness; fall back to the time.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{base}_{hex}")
}

#[cfg(feature = "testcontainers")]
mod containers {
    //! One container per backend per test process, started on first use from a dedicated
    //! thread (each `#[tokio::test]` has its own runtime, which ends with the test; the
    //! containers must outlive it). They are left running until the process exits and
    //! are then reaped by Docker's own cleanup of testcontainers' labelled containers.

    use super::Backend;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ContainerAsync, ImageExt};

    // The containers are held only so that they are not stopped.
    #[allow(dead_code)]
    enum Held {
        Redis(ContainerAsync<testcontainers_modules::redis::Redis>),
        Valkey(ContainerAsync<testcontainers_modules::valkey::Valkey>),
        Postgres(ContainerAsync<testcontainers_modules::postgres::Postgres>),
        Mysql(ContainerAsync<testcontainers_modules::mariadb::Mariadb>),
        Mongo(ContainerAsync<testcontainers_modules::mongo::Mongo>),
    }

    static STARTED: OnceLock<tokio::sync::Mutex<HashMap<Backend, Option<String>>>> =
        OnceLock::new();
    static KEEP: OnceLock<Mutex<Vec<Held>>> = OnceLock::new();

    /// Whether a Docker engine answers (`DOCKER_HOST` or the default socket).
    fn docker_answers() -> bool {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("tcp://") => {
                let addr = h.trim_start_matches("tcp://");
                addr.parse::<std::net::SocketAddr>().is_ok_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1))
                        .is_ok()
                })
            }
            Ok(h) if h.starts_with("unix://") => {
                std::os::unix::net::UnixStream::connect(h.trim_start_matches("unix://")).is_ok()
            }
            _ => std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok(),
        }
    }

    async fn start(backend: Backend) -> Result<(String, Held), String> {
        let err = |e: testcontainers::TestcontainersError| e.to_string();
        match backend {
            Backend::Redis => {
                let c = testcontainers_modules::redis::Redis::default()
                    .with_tag("7")
                    .start()
                    .await
                    .map_err(err)?;
                let port = c.get_host_port_ipv4(6379).await.map_err(err)?;
                Ok((format!("redis://127.0.0.1:{port}"), Held::Redis(c)))
            }
            Backend::Valkey => {
                let c = testcontainers_modules::valkey::Valkey::default()
                    .with_tag("8.1")
                    .start()
                    .await
                    .map_err(err)?;
                let port = c.get_host_port_ipv4(6379).await.map_err(err)?;
                Ok((format!("redis://127.0.0.1:{port}"), Held::Valkey(c)))
            }
            Backend::Postgres => {
                let c = testcontainers_modules::postgres::Postgres::default()
                    .with_tag("16-alpine")
                    .start()
                    .await
                    .map_err(err)?;
                let port = c.get_host_port_ipv4(5432).await.map_err(err)?;
                Ok((
                    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
                    Held::Postgres(c),
                ))
            }
            Backend::Mongo => {
                let c = testcontainers_modules::mongo::Mongo::default()
                    .with_tag("7")
                    .start()
                    .await
                    .map_err(err)?;
                let port = c.get_host_port_ipv4(27017).await.map_err(err)?;
                Ok((
                    format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
                    Held::Mongo(c),
                ))
            }
            Backend::Mysql => {
                let c = testcontainers_modules::mariadb::Mariadb::default()
                    .with_tag("10.11")
                    .start()
                    .await
                    .map_err(err)?;
                let port = c.get_host_port_ipv4(3306).await.map_err(err)?;
                Ok((
                    format!("mysql://root@127.0.0.1:{port}/test"),
                    Held::Mysql(c),
                ))
            }
            Backend::RedisCluster => Err("no cluster image; set REDIS_CLUSTER_URLS".into()),
            Backend::ValkeyCluster => Err("no cluster image; set VALKEY_CLUSTER_URLS".into()),
            Backend::Custom { env_var, .. } => {
                Err(format!("no image for a custom backend; set {env_var}"))
            }
        }
    }

    pub(super) async fn url(backend: Backend) -> Option<String> {
        // Held across the start, so that parallel tests start one container, not many.
        let mut started = STARTED.get_or_init(Default::default).lock().await;
        if let Some(known) = started.get(&backend) {
            return known.clone();
        }
        let clustered = matches!(backend, Backend::RedisCluster | Backend::ValkeyCluster);
        let found = if !clustered && docker_answers() {
            // Start on a thread of its own with a runtime that is never shut down, so the
            // container outlives this test's runtime.
            let handle = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let res = rt.block_on(start(backend));
                std::mem::forget(rt);
                res
            });
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(Ok((url, held)))) => {
                    if let Ok(mut keep) = KEEP.get_or_init(Default::default).lock() {
                        keep.push(held);
                    }
                    Some(url)
                }
                Ok(Ok(Err(e))) => {
                    eprintln!("testcontainers could not start {}: {e}", backend.name());
                    None
                }
                _ => None,
            }
        } else {
            None
        };
        started.insert(backend, found.clone());
        found
    }
}

#[cfg(test)]
mod custom_backend_tests {
    use super::*;

    const MINE: Backend = Backend::custom("kvstore-under-test", "COATCHECK_TEST_KVSTORE_URL");

    #[tokio::test]
    async fn a_custom_backend_is_found_by_its_variable_and_named_in_skips() {
        assert_eq!(MINE.name(), "kvstore-under-test");
        assert_eq!(MINE.env_var(), "COATCHECK_TEST_KVSTORE_URL");
        // The variable is this test's own (nothing else reads or writes it).
        std::env::set_var("COATCHECK_TEST_KVSTORE_URL", "kv://127.0.0.1:1");
        assert_eq!(url(MINE).await.as_deref(), Some("kv://127.0.0.1:1"));
        assert!(require(Some(MINE)).await);
    }
}
