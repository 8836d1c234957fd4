//! [`RedisStore`], its shortcut constructors and the [`SessionStore`] implementation.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Record, SessionId, SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::builder::RedisStoreBuilder;
use crate::conn::{Leases, Source, Topology};
use crate::ctx::{Ctx, Format};
use crate::error::BuildError;

/// A coatcheck [`SessionStore`] on Redis or Redis Cluster.
///
/// Cheap to clone (all clones share one connection). See the [crate docs](crate) for the
/// key layout, the commands each method sends and how to choose a connection.
///
/// ```no_run
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
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) format: Format,
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
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let store = coatcheck::redis::RedisStore::connect_lazy("redis://127.0.0.1").unwrap();
    /// assert_eq!(store.user_index_key("alice"), b"sess:user:alice".to_vec());
    /// # }
    /// ```
    pub fn user_index_key(&self, user_id: &str) -> Vec<u8> {
        self.ctx.index_key(user_id.as_bytes())
    }

    /// `save`, acknowledged by replicas as a revocation (`delete_version`) or as a write.
    async fn save_acknowledged(&self, record: &Record, revokes: bool) -> Result<u64, StoreError> {
        let cx = &self.ctx;
        match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster && record.user_id.is_some() => {
                let (cx, f, record) = (Arc::clone(cx), f.clone(), record.clone());
                self.ctx
                    .bounded(to_completion(async move {
                        cx.acknowledged(revokes, f.save(&cx, &record)).await
                    }))
                    .await
            }
            Format::Native(f) => cx.write(revokes, f.save(cx, record)).await,
            Format::Express(f) => cx.write(revokes, f.save(cx, record)).await,
        }
    }
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
                    .bounded(to_completion(async move {
                        cx.acknowledged(false, f.create(&cx, &record)).await
                    }))
                    .await
            }
            Format::Native(f) => cx.write(false, f.create(cx, record)).await,
            Format::Express(f) => cx.write(false, f.create(cx, record)).await,
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
        let r = self.save_acknowledged(record, false).await;
        logged("save", Some(&record.id), r)
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) if cx.topology() == Topology::Cluster => {
                // The user is only known inside the script: any touch may need the index.
                let (cx, f, id) = (Arc::clone(cx), f.clone(), id.clone());
                self.ctx
                    .bounded(to_completion(async move {
                        cx.acknowledged(false, f.touch(&cx, &id, expires_at)).await
                    }))
                    .await
            }
            Format::Native(f) => cx.write(false, f.touch(cx, id, expires_at)).await,
            Format::Express(f) => cx.write(false, f.touch(cx, id, expires_at)).await,
        };
        logged("touch", Some(id), r)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let cx = &self.ctx;
        let r = match &self.format {
            Format::Native(f) => cx.write(true, f.delete(cx, id)).await,
            Format::Express(f) => cx.write(true, f.delete(cx, id)).await,
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
        let r = self.save_acknowledged(&tombstone, true).await.map(drop);
        logged("delete_version", Some(id), r)
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
            Format::Native(f) => cx.write(true, f.delete_for_user(cx, user_id, except)).await,
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
            Format::Native(f) => cx.write(true, f.delete_device(cx, user_id, handle)).await,
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
                        cx.acknowledged(true, f.create_limited(&cx, &record, limit))
                            .await
                    }))
                    .await
            }
            Format::Native(f) => cx.write(true, f.create_limited(cx, record, limit)).await,
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
