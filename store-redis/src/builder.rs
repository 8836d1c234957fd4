//! [`RedisStoreBuilder`]: every option, and the terminals that connect (each returns a
//! `Result`; conflicting options are refused the same way by every terminal).

use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Clock, Codec, ExpressFormat, StoreOptions};
#[cfg(doc)]
use coatcheck_core::{NativeCodec, SystemClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use crate::cas::{Seen, Support};
use crate::conn::{Leases, Source, Topology};
use crate::ctx::{Ctx, Format};
use crate::dial::{Dialer, SentinelLookup, Target};
use crate::error::BuildError;
use crate::layout::express::Express;
use crate::layout::native::Native;
use crate::replication::Replicated;
use crate::store::RedisStore;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "sess:";

/// The fewest retries a cluster connection the store opens itself is given (redirects
/// included), whatever [`RedisStoreBuilder::reconnect_retries`] says.
const CLUSTER_MIN_RETRIES: u32 = 16;

/// The default bound on one store operation, see
/// [`RedisStoreBuilder::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`RedisStore`]; finish with one of the connection methods.
///
/// ```no_run
/// use std::time::Duration;
/// use coatcheck::redis::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder()
///     .prefix("shop:sess:")
///     .codec(coatcheck::core::NativeCodec)
///     .clock(coatcheck::core::SystemClock)
///     .connection_timeout(Duration::from_secs(1))
///     .response_timeout(Duration::from_secs(2))
///     .operation_timeout(Some(Duration::from_secs(5)))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    pub(crate) prefix: String,
    pub(crate) options: StoreOptions,
    pub(crate) operation_timeout: Option<Duration>,
    pub(crate) connection_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) reconnect_retries: usize,
    pub(crate) pool_connections: usize,
    pub(crate) single_key_scripts: bool,
    pub(crate) set_ifeq: bool,
    pub(crate) replicated: Option<Replicated>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        RedisStoreBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            options: StoreOptions::new(),
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            reconnect_retries: 2,
            pool_connections: 1,
            single_key_scripts: false,
            set_ifeq: true,
            replicated: None,
        }
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default `sess:`). Sessions live at `{prefix}{id}`, user indexes at
    /// `{prefix}user:{user id}`. Any string works; give each application (and each test) its
    /// own.
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().prefix("tenant-7:sess:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Every shared option at once ([`StoreOptions`]: codec, clock, express layout), as
    /// every coatcheck store builder takes them; replaces what `codec`, `clock` and
    /// `express` set before.
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Express-compatible mode: sessions are stored exactly as connect-redis stores them
    /// (a string `{prefix}{id}` holding express-session's JSON, `SET ... EX`, touch =
    /// `EXPIRE`), so an Express app using connect-redis with the same prefix (its default is
    /// also `sess:`) shares them. See the crate docs, "Express-compatible mode", for what
    /// bends to Express: no user index, no creation time, last-write-wins against Node.
    /// The codec setting is ignored in this mode.
    ///
    /// ```
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .express(ExpressFormat::new())
    ///     .connect_lazy("redis://127.0.0.1:6379")
    ///     .unwrap();
    /// assert!(!store.capabilities().user_index);
    /// # }
    /// ```
    pub fn express(mut self, format: ExpressFormat) -> Self {
        self.options.express = Some(format);
        self
    }

    /// The codec of the session's data; default [`NativeCodec`].
    /// [`EncryptedCodec`](coatcheck_core::EncryptedCodec) encrypts it at rest (refused in
    /// express mode by every terminal of the builder: [`BuildError::EncryptedExpress`]).
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().codec(coatcheck::core::JsonCodec);
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.options.codec = Arc::new(codec);
        self
    }

    /// The clock that decides what is live (`expires_at > now`); default [`SystemClock`].
    ///
    /// ```
    /// use coatcheck::core::{ManualClock, Timestamp};
    /// let b = coatcheck::redis::RedisStore::builder().clock(ManualClock::new(Timestamp::now()));
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options.clock = Arc::new(clock);
        self
    }

    /// Bound on one whole store operation (connection wait, pool checkout, retries,
    /// every command); past it the operation fails with a `Backend` error whose source is
    /// [`OperationTimedOut`](crate::OperationTimedOut). Default 5 s; `None` disables it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = coatcheck::redis::RedisStore::builder().operation_timeout(Some(Duration::from_secs(2)));
    /// ```
    pub fn operation_timeout(mut self, limit: Option<Duration>) -> Self {
        self.operation_timeout = limit;
        self
    }

    /// Connection timeout for connections the store opens itself (`connect*` methods);
    /// default 1 s.
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().connection_timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn connection_timeout(mut self, d: Duration) -> Self {
        self.connection_timeout = d;
        self
    }

    /// Response timeout for connections the store opens itself (`connect*` methods);
    /// default 2 s.
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().response_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How often a [`ConnectionManager`] the store opens itself retries a failed reconnect
    /// (with a short exponential backoff) before failing the waiting operations; default 2.
    /// Kept low so that a dead server turns into errors quickly. A cluster connection the
    /// store opens gets at least 16, redis-rs's default (its redirects after a failover count as retries).
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().reconnect_retries(3);
    /// ```
    pub fn reconnect_retries(mut self, n: usize) -> Self {
        self.reconnect_retries = n;
        self
    }

    /// How many connections to lease from a deadpool-redis pool (default 1, at least 1).
    /// Each is multiplexed; more than one only helps when a single socket saturates.
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().pool_connections(2);
    /// ```
    pub fn pool_connections(mut self, n: usize) -> Self {
        self.pool_connections = n.max(1);
        self
    }

    /// Only run scripts that touch the one key they declare, and keep user indexes with
    /// separate commands, as on a cluster (automatic there). On a single node the store
    /// otherwise updates the index set inside the session's script (one round trip, atomic),
    /// which builds the index key inside the script; turn this on when the "single node" is
    /// really a sharding proxy (Envoy, Twemproxy, a multi-shard managed Redis) that routes a
    /// script by its first key. Default off.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .single_key_scripts(true)
    ///     .connect_lazy("redis://proxy.internal:6379")
    ///     .unwrap();
    /// assert!(store.is_cluster());
    /// # }
    /// ```
    pub fn single_key_scripts(mut self, yes: bool) -> Self {
        self.single_key_scripts = yes;
        self
    }

    /// Whether to use the server's own compare-and-set, `SET key value IFEQ old`, where it
    /// has one (Valkey ≥ 8.1, Redis ≥ 8.4; learnt from one probe on first use). Default on:
    /// a save, touch or delete right after a load is then one ordinary command instead of a
    /// Lua script (see the crate docs). Off: always the scripts, as on Redis 7.
    ///
    /// ```
    /// let b = coatcheck::redis::RedisStore::builder().use_set_ifeq(false);
    /// ```
    pub fn use_set_ifeq(mut self, yes: bool) -> Self {
        self.set_ifeq = yes;
        self
    }

    /// Operations that end sessions (or, with [`Replicated::every_write`], every write)
    /// answer only once replicas hold them (`WAIT`); see [`Replicated`] for what that
    /// promises and what not. `WAIT` must travel on the socket the writes went on, so the
    /// store then dials its own connections (`connect`, `connect_lazy`, `connect_sentinel`)
    /// or leases from a [`pool`](Self::pool); a [`ConnectionManager`] of yours or a cluster
    /// connection is refused ([`BuildError::ReplicationUnsupported`]). The eager terminals
    /// check that the master has that many replicas attached
    /// ([`BuildError::NotEnoughReplicas`]); later, too few in time fail the operation with
    /// [`NotReplicated`](crate::NotReplicated). Keep `within` below the response timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use coatcheck::redis::{RedisStore, Replicated};
    /// let b = RedisStore::builder().replicated(Replicated::revocations(1, Duration::from_millis(250)));
    /// ```
    pub fn replicated(mut self, replicated: Replicated) -> Self {
        self.replicated = Some(replicated);
        self
    }

    /// `WAIT` blocks its connection on the server: `within` must stay below the response
    /// timeout, or a slow acknowledgement would look like a dead server.
    fn check_replicated(&self) -> Result<(), BuildError> {
        match self.replicated {
            Some(r) if r.within() >= self.response_timeout => Err(BuildError::ReplicationTooSlow {
                within: r.within(),
                response_timeout: self.response_timeout,
            }),
            _ => Ok(()),
        }
    }

    /// The [`ConnectionManagerConfig`] the `connect*` methods use: the timeouts above and a
    /// reconnect backoff of 50 ms doubling up to 500 ms, `reconnect_retries` times.
    ///
    /// ```
    /// let config = coatcheck::redis::RedisStore::builder().connection_manager_config();
    /// ```
    pub fn connection_manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// Connects now through a [`ConnectionManager`]; fails if the server does not answer.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::builder().connect("redis://127.0.0.1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self, url: &str) -> Result<RedisStore, BuildError> {
        require_runtime()?;
        self.refuse_encrypted_express()?;
        let client = redis::Client::open(url).map_err(BuildError::InvalidUrl)?;
        if self.replicated.is_some() {
            return self.dialed(Target::Url(client), true).await;
        }
        let manager = ConnectionManager::new_with_config(client, self.connection_manager_config())
            .await
            .map_err(BuildError::Connect)?;
        self.connection_manager(manager)
    }

    /// A [`ConnectionManager`] that connects on first use. Only the URL is checked now.
    /// Must be called within a Tokio runtime (the manager spawns its reconnect task);
    /// outside one it returns [`BuildError::NoRuntime`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::builder().connect_lazy("redis://127.0.0.1").unwrap();
    /// # }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, BuildError> {
        require_runtime()?;
        self.refuse_encrypted_express()?;
        let client = redis::Client::open(url).map_err(BuildError::InvalidUrl)?;
        if self.replicated.is_some() {
            return Ok(self.finish_dialed(Target::Url(client)));
        }
        let manager =
            ConnectionManager::new_lazy_with_config(client, self.connection_manager_config())
                .map_err(BuildError::InvalidUrl)?;
        self.connection_manager(manager)
    }

    /// Uses an existing [`ConnectionManager`] (its own timeouts apply). Fails, like every
    /// terminal of the builder, on options that conflict
    /// ([`BuildError::EncryptedExpress`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = redis::Client::open("redis://127.0.0.1")?.get_connection_manager().await?;
    /// let store = coatcheck::redis::RedisStore::builder().prefix("a:").connection_manager(manager)?;
    /// # Ok(()) }
    /// ```
    pub fn connection_manager(self, manager: ConnectionManager) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        self.refuse_replicated("a ConnectionManager of yours")?;
        Ok(self.finish(Source::Manager(manager)))
    }

    /// Uses a deadpool-redis pool: leases [`pool_connections`](Self::pool_connections)
    /// connections once and multiplexes over them (see the crate docs, "Pool").
    ///
    /// ```no_run
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1")
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let store = coatcheck::redis::RedisStore::builder().pool(pool)?;
    /// # Ok(()) }
    /// ```
    pub fn pool(self, pool: deadpool_redis::Pool) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        let mut leases = Leases::new(pool, self.pool_connections);
        if self.replicated.is_some() {
            leases = leases.with_a_lease_for_waits();
        }
        Ok(self.finish(Source::Pool(leases)))
    }

    fn cluster_client<I, S>(&self, urls: I) -> Result<ClusterClient, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.as_ref().trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(BuildError::NoClusterNodes);
        }
        ClusterClient::builder(urls)
            .connection_timeout(self.connection_timeout)
            .response_timeout(self.response_timeout)
            // A cluster connection counts a `MOVED`/`ASK` redirect as a retry too: after a
            // failover a command to a moved slot may be redirected, meet a node being
            // reconnected, and be redirected again; with the reconnect budget alone (2),
            // commands failed with `MOVED` after the cluster had settled
            // (tests/failover.rs). The operation timeout still bounds the whole operation.
            .retries(
                u32::try_from(self.reconnect_retries)
                    .unwrap_or(u32::MAX)
                    .max(CLUSTER_MIN_RETRIES),
            )
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(BuildError::InvalidUrl)
    }

    fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig::new()
            .set_connection_timeout(self.connection_timeout)
            .set_response_timeout(self.response_timeout)
    }

    /// Connects to a Redis Cluster now, given some of its nodes.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .connect_cluster(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.refuse_encrypted_express()?;
        self.refuse_replicated("a Redis Cluster")?;
        require_runtime()?;
        let client = self.cluster_client(urls)?;
        let conn = client
            .get_async_connection_with_config(self.cluster_config())
            .await
            .map_err(BuildError::Connect)?;
        self.cluster_connection(conn)
    }

    /// A cluster connection that connects in the background; only the URLs are checked now.
    /// Must be called within a Tokio runtime; outside one it returns
    /// [`BuildError::NoRuntime`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .connect_cluster_lazy(["redis://127.0.0.1:7001"])
    ///     .unwrap();
    /// assert!(store.is_cluster());
    /// # }
    /// ```
    pub fn connect_cluster_lazy<I, S>(self, urls: I) -> Result<RedisStore, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.refuse_encrypted_express()?;
        self.refuse_replicated("a Redis Cluster")?;
        require_runtime()?;
        let client = self.cluster_client(urls)?;
        let conn = client.get_pending_async_connection_with_config(self.cluster_config());
        self.cluster_connection(conn)
    }

    /// Uses an existing cluster connection (its own timeouts apply).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7001"])?
    ///     .get_async_connection()
    ///     .await?;
    /// let store = coatcheck::redis::RedisStore::builder().cluster_connection(conn)?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_connection(self, conn: ClusterConnection) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        self.refuse_replicated("a Redis Cluster")?;
        Ok(self.finish(Source::Cluster(conn)))
    }

    /// Uses a deadpool-redis cluster pool, leased like [`pool`](Self::pool).
    ///
    /// ```no_run
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = deadpool_redis::cluster::Config::from_urls(vec!["redis://127.0.0.1:7001".to_string()])
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let store = coatcheck::redis::RedisStore::builder().cluster_pool(pool)?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_pool(
        self,
        pool: deadpool_redis::cluster::Pool,
    ) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        self.refuse_replicated("a Redis Cluster")?;
        let n = self.pool_connections;
        Ok(self.finish(Source::ClusterPool(Leases::new(pool, n))))
    }

    /// Connects now to the master that the Redis Sentinels at `sentinels` name `master`,
    /// and follows it: after a failover (the connection reset, or a write answered
    /// `READONLY` by the demoted master) the next operation asks the sentinels again and
    /// reaches the new master; a `WARN` line in `tracing` says from where to where. Fails
    /// now with [`BuildError::Sentinel`] if no sentinel answers, none knows `master`, or
    /// the server they name is not a master. Requests in flight during the switch fail
    /// (503), none after it. The URLs are the sentinels' (`redis://host:26379`); the
    /// master's password, if any, goes in with [`connect_sentinel_with`](Self::connect_sentinel_with).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .connect_sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_sentinel<I, S>(
        self,
        sentinels: I,
        master: &str,
    ) -> Result<RedisStore, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.connect_sentinel_with(sentinels, master, None).await
    }

    /// [`connect_sentinel`](Self::connect_sentinel), with the connection details of the
    /// master and replicas (password, database, TLS) as redis-rs's
    /// [`SentinelNodeConnectionInfo`](redis::sentinel::SentinelNodeConnectionInfo).
    ///
    /// ```no_run
    /// use coatcheck::redis::redis::sentinel::SentinelNodeConnectionInfo;
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::builder()
    ///     .connect_sentinel_with(["redis://127.0.0.1:26379"], "mymaster", Some(SentinelNodeConnectionInfo::default()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_sentinel_with<I, S>(
        self,
        sentinels: I,
        master: &str,
        node: Option<redis::sentinel::SentinelNodeConnectionInfo>,
    ) -> Result<RedisStore, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        require_runtime()?;
        self.refuse_encrypted_express()?;
        let urls: Vec<String> = sentinels
            .into_iter()
            .map(|u| u.as_ref().trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(BuildError::NoSentinels);
        }
        let client = redis::sentinel::SentinelClient::build(
            urls,
            master.to_owned(),
            node,
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(BuildError::InvalidUrl)?;
        let target = Target::Sentinel {
            client: tokio::sync::Mutex::new(client),
            master: master.to_owned(),
            last: std::sync::Mutex::new(None),
        };
        self.dialed(target, true).await
    }

    /// The store over connections it dials itself to `target`; `now`: dial once now (and
    /// count the replicas, when [`Replicated`] is set).
    async fn dialed(self, target: Target, now: bool) -> Result<RedisStore, BuildError> {
        let wanted = self.replicated.map(|r| r.replicas());
        let store = self.finish_dialed(target);
        if now {
            let connected = store.ctx.connected_replicas().await.map_err(|e| match e {
                coatcheck_core::StoreError::Backend(e) => match e.downcast::<SentinelLookup>() {
                    Ok(lookup) => BuildError::Sentinel {
                        master: lookup.master,
                        source: lookup.source,
                    },
                    Err(e) => BuildError::Dial(e),
                },
                e => BuildError::Dial(e.into()),
            })?;
            if let Some(wanted) = wanted.filter(|&w| w > connected) {
                return Err(BuildError::NotEnoughReplicas { wanted, connected });
            }
        }
        Ok(store)
    }

    fn finish_dialed(self, target: Target) -> RedisStore {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let n = self.pool_connections;
        let mut leases = Leases::new(Dialer { target, config }, n);
        if self.replicated.is_some() {
            leases = leases.with_a_lease_for_waits();
        }
        self.finish(Source::Dialed(Box::new(leases)))
    }

    /// [`Replicated`] needs a handle that stays on one socket.
    fn refuse_replicated(&self, connection: &'static str) -> Result<(), BuildError> {
        match self.replicated {
            Some(_) => Err(BuildError::ReplicationUnsupported { connection }),
            None => Ok(()),
        }
    }

    /// Express mode stores Node's JSON: an encrypting codec cannot apply there.
    fn refuse_encrypted_express(&self) -> Result<(), BuildError> {
        self.options.validate().map_err(BuildError::from)?;
        self.check_replicated()
    }

    /// The store over `source`; every terminal has refused conflicting options first.
    pub(crate) fn finish(self, source: Source) -> RedisStore {
        let index_prefix = format!("{}user:", self.prefix);
        let fence_key = format!("{}replication:fence", self.prefix);
        let topology = if self.single_key_scripts {
            Topology::Cluster
        } else {
            source.topology()
        };
        RedisStore {
            ctx: Arc::new(Ctx {
                source,
                topology,
                prefix: self.prefix,
                index_prefix,
                clock: self.options.clock,
                operation_timeout: self.operation_timeout,
                support: Support::new(self.set_ifeq),
                seen: Seen::default(),
                replicated: self.replicated,
                fence_key,
            }),
            format: match self.options.express {
                Some(format) => Format::Express(Express { format }),
                None => Format::Native(Native {
                    codec: self.options.codec,
                }),
            },
        }
    }
}

/// The lazy constructors spawn tasks: refuse (instead of panicking) outside a runtime.
fn require_runtime() -> Result<(), BuildError> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| BuildError::NoRuntime)
}
