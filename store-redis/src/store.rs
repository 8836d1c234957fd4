//! [`RedisStore`], its builder and the [`SessionStore`] implementation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Clock, Codec, DecodeError, ExpressFormat, NativeCodec, Record, SessionId,
    SessionInfo, SessionLimit, SessionStore, StoreError, SystemClock, Timestamp,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, ScriptInvocation, Value};

use crate::cas::{self, Seen, Support};
use crate::conn::{Leases, Source, Topology};
use crate::error::{BuildError, OperationTimedOut};
use crate::express::Express;
use crate::native::Native;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "sess:";

/// The default bound on one store operation, see
/// [`RedisStoreBuilder::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How stored sessions look, chosen at construction: the native hash layout, or
/// connect-redis's (a string `sess:<id>` holding express-session's JSON).
#[derive(Debug, Clone)]
enum Format {
    Native(Native),
    Express(Express),
}

/// What every operation needs: the connection, the key layout, the clock.
pub(crate) struct Ctx {
    source: Source,
    topology: Topology,
    prefix: String,
    index_prefix: String,
    clock: Arc<dyn Clock>,
    operation_timeout: Option<Duration>,
    /// Whether the server has `SET … IFEQ`.
    support: Support,
    /// The bytes of the sessions last read or written (only kept when it has).
    seen: Seen,
}

fn map_redis_error(e: RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        StoreError::Decode(DecodeError::with_source(
            "a key of this store holds a value of the wrong type (not a session hash or user index set)",
            e,
        ))
    } else {
        StoreError::backend(e)
    }
}

impl Ctx {
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(crate) fn topology(&self) -> Topology {
        self.topology
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}user:`, the start of every user index key.
    pub(crate) fn index_prefix(&self) -> &str {
        &self.index_prefix
    }

    pub(crate) fn session_key(&self, id: &SessionId) -> String {
        let mut k = String::with_capacity(self.prefix.len() + id.as_str().len());
        k.push_str(&self.prefix);
        k.push_str(id.as_str());
        k
    }

    /// `{prefix}user:{user}`, byte for byte: any user id is a literal part of one key,
    /// never a pattern.
    pub(crate) fn index_key(&self, user: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.index_prefix.len() + user.len());
        k.extend_from_slice(self.index_prefix.as_bytes());
        k.extend_from_slice(user);
        k
    }

    pub(crate) async fn invoke(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let (mut conn, lease) = self.source.conn().await?;
        match inv.invoke_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.source.failed(lease, &e).await;
                Err(map_redis_error(e))
            }
        }
    }

    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.raw_query(cmd).await?.map_err(map_redis_error)
    }

    /// The server's reply or error; the outer error: no connection to send it on.
    async fn raw_query(&self, cmd: &Cmd) -> Result<Result<Value, RedisError>, StoreError> {
        let (mut conn, lease) = self.source.conn().await?;
        let r = cmd.query_async::<Value>(&mut conn).await;
        if let Err(e) = &r {
            self.source.failed(lease, e).await;
        }
        Ok(r)
    }

    async fn raw_pipe(&self, pipe: &Pipeline) -> Result<Result<Value, RedisError>, StoreError> {
        let (mut conn, lease) = self.source.conn().await?;
        let r = pipe.query_async::<Value>(&mut conn).await;
        if let Err(e) = &r {
            self.source.failed(lease, e).await;
        }
        Ok(r)
    }

    /// A pipeline (not a transaction): the replies of its commands not marked `ignore`.
    pub(crate) async fn query_pipe(&self, pipe: &Pipeline) -> Result<Value, StoreError> {
        self.raw_pipe(pipe).await?.map_err(map_redis_error)
    }

    /// A pipeline whose replies are each the command's answer or its server error, in order
    /// (`ignore`d commands left out): redis-rs reports an error inside a pipeline without
    /// its code, so the replies are read one by one.
    async fn raw_pipe_each(
        &self,
        pipe: &Pipeline,
    ) -> Result<Vec<Result<Value, RedisError>>, StoreError> {
        let mut pipe = pipe.clone();
        pipe.ignore_errors();
        match self.raw_pipe(&pipe).await?.map_err(map_redis_error)? {
            Value::Array(replies) => Ok(replies
                .into_iter()
                .map(|r| match r {
                    Value::ServerError(e) => Err(RedisError::from(e)),
                    v => Ok(v),
                })
                .collect()),
            _ => Err(StoreError::backend(crate::error::UnexpectedReply {
                what: "pipeline",
            })),
        }
    }

    /// [`Ctx::raw_pipe_each`], errors mapped as [`Ctx::query`] maps them.
    pub(crate) async fn query_pipe_each(
        &self,
        pipe: &Pipeline,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        Ok(self
            .raw_pipe_each(pipe)
            .await?
            .into_iter()
            .map(|r| r.map_err(map_redis_error))
            .collect())
    }

    /// A command using `IFEQ`: `None` when the server turns out not to know it (it is then
    /// never used again by this store).
    pub(crate) async fn query_ifeq(&self, cmd: &Cmd) -> Result<Option<Value>, StoreError> {
        self.unsupported_is_none(self.raw_query(cmd).await?)
    }

    /// A pipeline ending with a command using `IFEQ`: that command's reply, or `None` as in
    /// [`Ctx::query_ifeq`]; an error of an earlier command is that error.
    pub(crate) async fn query_ifeq_pipe(
        &self,
        pipe: &Pipeline,
    ) -> Result<Option<Value>, StoreError> {
        let mut replies = self.raw_pipe_each(pipe).await?;
        let last = replies.pop().ok_or_else(|| {
            StoreError::backend(crate::error::UnexpectedReply { what: "pipeline" })
        })?;
        if let Some(Err(e)) = replies.into_iter().find(Result::is_err) {
            return Err(map_redis_error(e));
        }
        self.unsupported_is_none(last)
    }

    fn unsupported_is_none(
        &self,
        r: Result<Value, RedisError>,
    ) -> Result<Option<Value>, StoreError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if cas::is_unsupported(&e) => {
                tracing::warn!("coatcheck-redis: the server refused SET … IFEQ; using the Lua scripts from now on");
                self.support.set(false);
                Ok(None)
            }
            Err(e) => Err(map_redis_error(e)),
        }
    }

    /// Whether to take the `SET … IFEQ` path: probes the server on first use (one
    /// `SET {prefix}probe:ifeq "" IFEQ ""`, which never creates the key; Redis before 8.4
    /// answers a syntax error). Any other error reply (an ACL refusing the key, a proxy's own
    /// error) also settles it: the scripts. Only a probe that could not reach the server is
    /// repeated, by the next operation.
    pub(crate) async fn cas(&self) -> bool {
        if let Some(known) = self.support.known() {
            return known;
        }
        let probe = redis::cmd("SET")
            .arg(format!("{}probe:ifeq", self.prefix))
            .arg("")
            .arg("IFEQ")
            .arg("")
            .clone();
        match self.raw_query(&probe).await {
            Ok(Ok(_)) => {
                self.support.set(true);
                tracing::debug!("coatcheck-redis: the server has SET … IFEQ");
                true
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => false,
            Ok(Err(e)) => {
                self.support.set(false);
                tracing::debug!(error = %e, "coatcheck-redis: no SET … IFEQ on this server; Lua scripts");
                false
            }
            Err(_) => false,
        }
    }

    /// The bytes of sessions last read or written, for `SET … IFEQ`.
    pub(crate) fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Appends to `pipe` what the scripts' `index_add` does, as three plain commands on the
    /// index key: `SADD` the id, `PEXPIREAT … NX` (a set just created has no TTL) and
    /// `PEXPIREAT … GT` (never shorten it), so the set lives at least until `expires_at`.
    pub(crate) fn push_index_add(
        &self,
        pipe: &mut Pipeline,
        user: &[u8],
        id: &SessionId,
        expires_at: i64,
    ) {
        let key = self.index_key(user);
        pipe.cmd("SADD").arg(&key).arg(id.as_str()).ignore();
        for when in ["NX", "GT"] {
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires_at)
                .arg(when)
                .ignore();
        }
    }

    /// Cluster only (the index is in another slot than the session): [`Ctx::push_index_add`]
    /// as one pipeline to the index's node.
    pub(crate) async fn index_add(
        &self,
        user: &[u8],
        id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.push_index_add(&mut pipe, user, id, expires_at.as_millis());
        self.query_pipe(&pipe).await.map(drop)
    }

    /// The bound on one whole store operation ([`RedisStoreBuilder::operation_timeout`]).
    pub(crate) fn operation_timeout(&self) -> Option<Duration> {
        self.operation_timeout
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.operation_timeout {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::backend(OperationTimedOut::new(limit))),
            },
        }
    }
}

/// A coatcheck [`SessionStore`] on Redis or Redis Cluster.
///
/// Cheap to clone (all clones share one connection). See the [crate docs](crate) for the
/// key layout, the commands each method sends and how to choose a connection.
///
/// ```no_run
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
/// use coatcheck::core::SessionStore;
/// use coatcheck::redis::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // One shared multiplexed connection (the fast default), keys `sess:<id>`.
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// assert!(store.capabilities().user_index);
///
/// // Or configured:
/// let store = RedisStore::builder()
///     .prefix("myapp:sess:")
///     .codec(coatcheck::core::JsonCodec)
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    ctx: Arc<Ctx>,
    format: Format,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.ctx.source)
            .field("prefix", &self.ctx.prefix)
            .field("format", &self.format)
            .field("clock", &self.ctx.clock)
            .field("operation_timeout", &self.ctx.operation_timeout)
            .finish()
    }
}

impl RedisStore {
    /// A builder, for a prefix, codec, clock or timeouts other than the defaults.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let builder = coatcheck::redis::RedisStore::builder().prefix("app1:");
    /// let store = builder.connect_lazy("redis://127.0.0.1:6379").unwrap();
    /// assert_eq!(store.prefix(), "app1:");
    /// # }
    /// ```
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects to one Redis node through a [`ConnectionManager`] (one multiplexed socket
    /// that reconnects by itself), with the default prefix `sess:`. Fails if the server does
    /// not answer now; [`RedisStore::connect_lazy`] connects on first use instead.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::connect("redis://127.0.0.1:6379/0").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<RedisStore, BuildError> {
        RedisStore::builder().connect(url).await
    }

    /// Like [`RedisStore::connect`], but connects on first use: an application can start
    /// while Redis is still down (its session operations fail with `Backend` until it is up).
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1:6379").unwrap();
    /// # }
    /// ```
    pub fn connect_lazy(url: &str) -> Result<RedisStore, BuildError> {
        RedisStore::builder().connect_lazy(url)
    }

    /// Uses an existing [`ConnectionManager`] (shared with the rest of the application if
    /// you like: it is multiplexed).
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let manager = redis::aio::ConnectionManager::new(client).await?;
    /// let store = coatcheck::redis::RedisStore::from_connection_manager(manager);
    /// # Ok(()) }
    /// ```
    pub fn from_connection_manager(manager: ConnectionManager) -> RedisStore {
        RedisStore::builder().finish(Source::Manager(manager))
    }

    /// Uses a deadpool-redis pool. The store leases one pooled connection (see
    /// [`RedisStoreBuilder::pool_connections`]) and multiplexes every operation over it, so
    /// operations are still one round trip and pipeline under concurrency.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let store = coatcheck::redis::RedisStore::from_pool(pool);
    /// # Ok(()) }
    /// ```
    pub fn from_pool(pool: deadpool_redis::Pool) -> RedisStore {
        let builder = RedisStore::builder();
        let n = builder.pool_connections;
        builder.finish(Source::Pool(Leases::new(pool, n)))
    }

    /// Connects to a Redis Cluster given some of its nodes' URLs.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::connect_cluster([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    /// ])
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, S>(urls: I) -> Result<RedisStore, BuildError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedisStore::builder().connect_cluster(urls).await
    }

    /// Uses an existing cluster connection.
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7001"])?;
    /// let conn = client.get_async_connection().await?;
    /// let store = coatcheck::redis::RedisStore::from_cluster_connection(conn);
    /// # Ok(()) }
    /// ```
    pub fn from_cluster_connection(conn: ClusterConnection) -> RedisStore {
        RedisStore::builder().finish(Source::Cluster(conn))
    }

    /// Uses a deadpool-redis cluster pool, leased like [`RedisStore::from_pool`].
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = deadpool_redis::cluster::Config::from_urls(vec!["redis://127.0.0.1:7001".to_string()])
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let store = coatcheck::redis::RedisStore::from_cluster_pool(pool);
    /// # Ok(()) }
    /// ```
    pub fn from_cluster_pool(pool: deadpool_redis::cluster::Pool) -> RedisStore {
        let builder = RedisStore::builder();
        let n = builder.pool_connections;
        builder.finish(Source::ClusterPool(Leases::new(pool, n)))
    }

    /// The key prefix.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1").unwrap();
    /// assert_eq!(store.prefix(), "sess:");
    /// # }
    /// ```
    pub fn prefix(&self) -> &str {
        &self.ctx.prefix
    }

    /// Whether this store talks to a Redis Cluster, or was told to use
    /// [`single_key_scripts`](RedisStoreBuilder::single_key_scripts): then it updates user
    /// indexes with separate commands (see the crate docs).
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1").unwrap();
    /// assert!(!store.is_cluster());
    /// # }
    /// ```
    pub fn is_cluster(&self) -> bool {
        self.ctx.topology() == Topology::Cluster
    }

    /// The key under which the session `id` is stored: `{prefix}{id}`.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1").unwrap();
    /// let id = coatcheck::core::SessionId::parse("AAAAAAAAAAAAAAAAAAAA").unwrap();
    /// assert_eq!(store.session_key(&id), "sess:AAAAAAAAAAAAAAAAAAAA");
    /// # }
    /// ```
    pub fn session_key(&self, id: &SessionId) -> String {
        self.ctx.session_key(id)
    }

    /// The key of `user_id`'s index set: `{prefix}user:{user_id}` (the user id verbatim).
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1").unwrap();
    /// assert_eq!(store.user_index_key("alice"), b"sess:user:alice".to_vec());
    /// # }
    /// ```
    pub fn user_index_key(&self, user_id: &str) -> Vec<u8> {
        self.ctx.index_key(user_id.as_bytes())
    }
}

/// Configures a [`RedisStore`]; finish with one of the connection methods.
///
/// ```no_run
/// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    prefix: String,
    codec: Arc<dyn Codec>,
    clock: Arc<dyn Clock>,
    operation_timeout: Option<Duration>,
    connection_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
    pool_connections: usize,
    single_key_scripts: bool,
    set_ifeq: bool,
    express: Option<ExpressFormat>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        RedisStoreBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            codec: Arc::new(NativeCodec),
            clock: Arc::new(SystemClock),
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            reconnect_retries: 2,
            pool_connections: 1,
            single_key_scripts: false,
            set_ifeq: true,
            express: None,
        }
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default `sess:`). Sessions live at `{prefix}{id}`, user indexes at
    /// `{prefix}user:{user id}`. Any string works; give each application (and each test) its
    /// own.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// let b = coatcheck::redis::RedisStore::builder().prefix("tenant-7:sess:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
        self.express = Some(format);
        self
    }

    /// The codec of the session's data; default [`NativeCodec`].
    /// [`EncryptedCodec`](coatcheck_core::EncryptedCodec) encrypts it at rest (refused in
    /// express mode by every terminal of the builder: [`BuildError::EncryptedExpress`]).
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// let b = coatcheck::redis::RedisStore::builder().codec(coatcheck::core::JsonCodec);
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// The clock that decides what is live (`expires_at > now`); default [`SystemClock`].
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// use coatcheck::core::{ManualClock, Timestamp};
    /// let b = coatcheck::redis::RedisStore::builder().clock(ManualClock::new(Timestamp::now()));
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Bound on one whole store operation (connection wait, pool checkout, retries,
    /// every command); past it the operation fails with a `Backend` error whose source is
    /// [`OperationTimedOut`]. Default 5 s; `None` disables it.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// let b = coatcheck::redis::RedisStore::builder().response_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How often a [`ConnectionManager`] the store opens itself retries a failed reconnect
    /// (with a short exponential backoff) before failing the waiting operations; default 2.
    /// Kept low so that a dead server turns into errors quickly.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// let b = coatcheck::redis::RedisStore::builder().use_set_ifeq(false);
    /// ```
    pub fn use_set_ifeq(mut self, yes: bool) -> Self {
        self.set_ifeq = yes;
        self
    }

    /// The [`ConnectionManagerConfig`] the `connect*` methods use: the timeouts above and a
    /// reconnect backoff of 50 ms doubling up to 500 ms, `reconnect_retries` times.
    ///
    /// ```
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), coatcheck::redis::BuildError> {
    /// let store = coatcheck::redis::RedisStore::builder().connect("redis://127.0.0.1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self, url: &str) -> Result<RedisStore, BuildError> {
        require_runtime()?;
        self.refuse_encrypted_express()?;
        let client = redis::Client::open(url).map_err(BuildError::InvalidUrl)?;
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::builder().connect_lazy("redis://127.0.0.1").unwrap();
    /// # }
    /// ```
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, BuildError> {
        require_runtime()?;
        self.refuse_encrypted_express()?;
        let client = redis::Client::open(url).map_err(BuildError::InvalidUrl)?;
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = redis::Client::open("redis://127.0.0.1")?.get_connection_manager().await?;
    /// let store = coatcheck::redis::RedisStore::builder().prefix("a:").connection_manager(manager)?;
    /// # Ok(()) }
    /// ```
    pub fn connection_manager(self, manager: ConnectionManager) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        Ok(self.finish(Source::Manager(manager)))
    }

    /// Uses a deadpool-redis pool: leases [`pool_connections`](Self::pool_connections)
    /// connections once and multiplexes over them (see the crate docs, "Pool").
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1")
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let store = coatcheck::redis::RedisStore::builder().pool(pool)?;
    /// # Ok(()) }
    /// ```
    pub fn pool(self, pool: deadpool_redis::Pool) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        let n = self.pool_connections;
        Ok(self.finish(Source::Pool(Leases::new(pool, n))))
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
            .retries(self.reconnect_retries.try_into().unwrap_or(u32::MAX))
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
        require_runtime()?;
        let client = self.cluster_client(urls)?;
        let conn = client.get_pending_async_connection_with_config(self.cluster_config());
        self.cluster_connection(conn)
    }

    /// Uses an existing cluster connection (its own timeouts apply).
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7001"])?
    ///     .get_async_connection()
    ///     .await?;
    /// let store = coatcheck::redis::RedisStore::builder().cluster_connection(conn)?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_connection(self, conn: ClusterConnection) -> Result<RedisStore, BuildError> {
        self.refuse_encrypted_express()?;
        Ok(self.finish(Source::Cluster(conn)))
    }

    /// Uses a deadpool-redis cluster pool, leased like [`pool`](Self::pool).
    ///
    /// ```no_run
    /// # mod coatcheck { pub mod core { pub use coatcheck_core::*; } pub mod redis { pub use coatcheck_redis::*; } }
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
        let n = self.pool_connections;
        Ok(self.finish(Source::ClusterPool(Leases::new(pool, n))))
    }

    /// Express mode stores Node's JSON: an encrypting codec cannot apply there.
    fn refuse_encrypted_express(&self) -> Result<(), BuildError> {
        if self.express.is_some() && self.codec.encrypts() {
            return Err(BuildError::EncryptedExpress);
        }
        Ok(())
    }

    /// The store over `source`; every terminal has refused conflicting options first.
    fn finish(self, source: Source) -> RedisStore {
        let index_prefix = format!("{}user:", self.prefix);
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
                clock: self.clock,
                operation_timeout: self.operation_timeout,
                support: Support::new(self.set_ifeq),
                seen: Seen::default(),
            }),
            format: match self.express {
                Some(format) => Format::Express(Express { format }),
                None => Format::Native(Native { codec: self.codec }),
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

const NO_INDEX: &str =
    "connect-redis keeps no per-user index, so express-compatible mode cannot list or revoke a user's sessions";
const NO_DEVICES: &str =
    "connect-redis's layout has no place for device details, so express-compatible mode keeps none";

fn log_failure(op: &'static str, id: Option<&SessionId>, e: &StoreError) {
    let session = id.map(SessionId::short_hash);
    match e {
        StoreError::Backend(_) => {
            tracing::warn!(op, session = session.as_deref(), error = %e, "coatcheck-redis: backend error");
        }
        StoreError::Decode(_) => {
            tracing::warn!(op, session = session.as_deref(), error = %e, "coatcheck-redis: unreadable stored session");
        }
        _ => {
            // A conflict or a missing session is an answer, not a failure: the middleware
            // logs one line per request about its retries; each refusal only at TRACE.
            tracing::trace!(op, session = session.as_deref(), error = %e, "coatcheck-redis: refused");
        }
    }
}

fn logged<T>(
    op: &'static str,
    id: Option<&SessionId>,
    r: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(e) = &r {
        log_failure(op, id, e);
    }
    r
}

/// Runs a two-step cluster operation (the session script, then the user index in another
/// hash slot) as a task of its own, so that a caller dropped in between (a timeout, a client
/// gone) cannot leave the index expiring before the session — which would hide the session
/// from `delete_for_user`, i.e. from "log out everywhere" — nor leave a limited create's
/// per-user lease behind.
async fn to_completion<T: Send + 'static>(
    op: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(op)
        .await
        .unwrap_or_else(|e| Err(StoreError::backend(e)))
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster && record.user_id.is_some() => {
                let (cx, f, record) = (Arc::clone(cx), f.clone(), record.clone());
                self.ctx
                    .bounded(to_completion(async move { f.create(&cx, &record).await }))
                    .await
            }
            Format::Native(f) => cx.bounded(f.create(cx, record)).await,
            Format::Express(f) => cx.bounded(f.create(cx, record)).await,
        };
        logged("create", Some(&record.id), r)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.bounded(f.load(cx, id)).await,
            Format::Express(f) => cx.bounded(f.load(cx, id)).await,
        };
        logged("load", Some(id), r)
    }

    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster && record.user_id.is_some() => {
                let (cx, f, record) = (Arc::clone(cx), f.clone(), record.clone());
                self.ctx
                    .bounded(to_completion(async move { f.save(&cx, &record).await }))
                    .await
            }
            Format::Native(f) => cx.bounded(f.save(cx, record)).await,
            Format::Express(f) => cx.bounded(f.save(cx, record)).await,
        };
        logged("save", Some(&record.id), r)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster => {
                // The user is only known inside the script: any touch may need the index.
                let (cx, f, id) = (Arc::clone(cx), f.clone(), id.clone());
                self.ctx
                    .bounded(to_completion(
                        async move { f.touch(&cx, &id, expires_at).await },
                    ))
                    .await
            }
            Format::Native(f) => cx.bounded(f.touch(cx, id, expires_at)).await,
            Format::Express(f) => cx.bounded(f.touch(cx, id, expires_at)).await,
        };
        logged("touch", Some(id), r)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.bounded(f.delete(cx, id)).await,
            Format::Express(f) => cx.bounded(f.delete(cx, id)).await,
        };
        logged("delete", Some(id), r)
    }

    /// One `save` of an expired, empty, principal-less record at `version`: both layouts'
    /// save scripts delete the key (and, on a single node, its index entry) when the expiry
    /// has passed, so this is an atomic compare-and-delete in one round trip.
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        let epoch = Timestamp::from_millis(0);
        let mut tombstone = Record::new(id.clone(), epoch, Timestamp::from_millis(1));
        tombstone.version = version;
        self.save(&tombstone).await.map(drop)
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.bounded(f.list_for_user(cx, user_id)).await,
            Format::Express(_) => Err(StoreError::Unsupported(NO_INDEX)),
        };
        logged("list_for_user", None, r)
    }

    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.bounded(f.delete_for_user(cx, user_id, except)).await,
            Format::Express(_) => Err(StoreError::Unsupported(NO_INDEX)),
        };
        logged("delete_for_user", None, r)
    }

    /// Redis expires keys itself (`PEXPIREAT`): nothing to do, no round trip, returns 0.
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.bounded(f.delete_device(cx, user_id, handle)).await,
            Format::Express(_) => Err(StoreError::Unsupported(NO_DEVICES)),
        };
        logged("delete_device", None, r)
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster => {
                // Under a per-user lease: a caller dropped while holding it would leave it
                // to expire by itself, refusing every limited login of that user until then.
                let (cx, f, record) = (Arc::clone(cx), f.clone(), record.clone());
                self.ctx
                    .bounded(to_completion(async move {
                        f.create_limited(&cx, &record, limit).await
                    }))
                    .await
            }
            Format::Native(f) => cx.bounded(f.create_limited(cx, record, limit)).await,
            Format::Express(_) => Err(StoreError::Unsupported(NO_DEVICES)),
        };
        logged("create_limited", Some(&record.id), r)
    }

    fn capabilities(&self) -> Capabilities {
        let caps = Capabilities::new().with_db_system("redis");
        match self.format {
            Format::Native(_) => caps
                .with_user_index(true)
                .with_native_expiry(true)
                .with_devices(true)
                .with_session_limit(true),
            Format::Express(_) => caps
                .with_native_expiry(true)
                .with_opaque_versions(true)
                .with_no_creation_time(true)
                .with_express_layout(true),
        }
    }
}
