//! Configuration: express-session's vocabulary, secure defaults.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{
    Clock, ExpiryPolicy, KeyRing, LimitPolicy, SessionId, SessionLimit, SessionStore, SystemClock,
};

use crate::credentials::CredentialCheck;
use crate::device::IpCapture;
use crate::events::{SessionEvent, Subscriber, DEFAULT_EVENT_QUEUE};
use crate::transport::Transport;

use crate::layer::SessionLayer;

/// Whether the cookie gets the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Secure {
    /// Always (the default).
    #[default]
    Always,
    /// Never. Only for local development over plain HTTP.
    Never,
    /// When the request came over HTTPS: an `https` request URI, or — only with
    /// [`SessionLayerBuilder::trust_proxy`] — `X-Forwarded-Proto: https`.
    Auto,
}

/// The cookie's `SameSite` attribute. Always sent explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (the default).
    #[default]
    Lax,
    /// `SameSite=None` (requires `Secure`).
    None,
}

/// The session layer's settings. Build them with [`SessionLayer::builder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Cookie name (default `sid`). `__Host-` and `__Secure-` prefixes are checked.
    pub name: String,
    /// Cookie `Path` (default `/`).
    pub path: String,
    /// Cookie `Domain` (default none: host-only).
    pub domain: Option<String>,
    /// `Secure` (default [`Secure::Always`]).
    pub secure: Secure,
    /// Trust `X-Forwarded-Proto` for [`Secure::Auto`] (default false).
    pub trust_proxy: bool,
    /// `HttpOnly` (default true).
    pub http_only: bool,
    /// `SameSite` (default Lax).
    pub same_site: SameSite,
    /// `Partitioned` (CHIPS; default false; requires `Secure`).
    pub partitioned: bool,
    /// Idle and absolute timeouts, browser-session cookies, touch interval.
    pub expiry: ExpiryPolicy,
    /// The timeouts of a session whose user chose "remember me"
    /// ([`Session::remember_me`](crate::Session::remember_me)); its cookie always persists.
    /// `None` (the default): the same timeouts as [`expiry`](SessionConfig::expiry). The
    /// `touch_after` of `expiry` applies to both.
    pub remember_me: Option<ExpiryPolicy>,
    /// Store sessions nothing was written to (default false: no record, no cookie).
    pub save_uninitialized: bool,
    /// How many times a save is retried after a version conflict (default 32).
    pub max_save_retries: u32,
    /// Refuse session keys express-session drops or owns (`cookie`, `id`, `save`, ...; see
    /// [`coatcheck_core::EXPRESS_RESERVED_KEYS`]). Set by
    /// [`SessionLayerBuilder::express_compatible`]; default false.
    pub express_reserved_keys: bool,
    /// The data key that *is* the principal (express-compatible mode: `userId`, set by
    /// [`SessionLayerBuilder::express_compatible`]; match the store's
    /// [`ExpressFormat::user_key`](coatcheck_core::ExpressFormat::user_key)). Writing a
    /// string or an integer there logs that user in (and indexes the session), removing
    /// it logs out, and `login(user)` writes it, so the data and the indexed principal are
    /// one thing on the Rust and the Node side. `None` (native mode, the default): the
    /// principal is only what `login()` sets, and no data key is special.
    pub principal_key: Option<String>,
    /// How long one store call may take before the request fails with
    /// [`StoreTimedOut`](crate::StoreTimedOut) (`503`) instead of hanging (default 5 s;
    /// `None`: only the store's own timeouts apply). Covers a server that accepts
    /// connections but does not answer, a lock held in the database, an exhausted pool.
    /// The limit is per call: a request makes one to three calls, more only while it retries
    /// a save after version conflicts (at most `1 + 2 × max_save_retries`).
    pub store_timeout: Option<Duration>,
    /// Keep the `User-Agent` header of the login in the session's device details (default
    /// true; stores with [`Capabilities::devices`](coatcheck_core::Capabilities::devices)).
    pub capture_user_agent: bool,
    /// How much of the client address to keep with the device (default full).
    pub capture_ip: IpCapture,
    /// At most this many live sessions per user (default none); checked by the store at
    /// every login, atomically.
    pub session_limit: Option<SessionLimit>,
    /// Where the session token travels (default: the cookie).
    pub transport: Transport,
    /// The most a session's data may take, measured as its JSON encoding (default
    /// [`DEFAULT_MAX_DATA_BYTES`]; `None`: no limit). A write that takes the data over it
    /// is refused with [`SessionError::DataTooLarge`](crate::SessionError::DataTooLarge)
    /// and the stored session is left as it was; a session already over it (stored
    /// before the limit was set or lowered) keeps working and may shrink, not grow. JSON is what the Express layouts store; the native
    /// layouts' MessagePack is smaller, and encryption at rest adds 45 bytes and, in the
    /// express layouts, a third for base64: the limit is of the data, the same on every
    /// store.
    pub max_data_bytes: Option<usize>,
    /// Whether this layer records metrics (default `true`; only with the `metrics`
    /// feature, which without a recorder still costs a few channel sends per request).
    pub metrics: bool,
}

/// The default [`SessionConfig::max_data_bytes`]: 64 KiB. Sessions hold ids, flags and
/// small state; data that grows past this is almost always a bug (a list appended to on
/// every request), and every store reads and writes all of it on every save.
pub const DEFAULT_MAX_DATA_BYTES: usize = 64 * 1024;

/// The default [`SessionConfig::store_timeout`].
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            name: "sid".into(),
            path: "/".into(),
            domain: None,
            secure: Secure::Always,
            trust_proxy: false,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
            expiry: ExpiryPolicy::default(),
            remember_me: None,
            save_uninitialized: false,
            max_save_retries: 32,
            express_reserved_keys: false,
            principal_key: None,
            store_timeout: Some(DEFAULT_STORE_TIMEOUT),
            capture_user_agent: true,
            capture_ip: IpCapture::Full,
            session_limit: None,
            transport: Transport::cookie(),
            max_data_bytes: Some(DEFAULT_MAX_DATA_BYTES),
            metrics: true,
        }
    }
}

impl SessionConfig {
    /// The policy of a remembered session: a persistent cookie, the
    /// [`remember_me`](SessionConfig::remember_me) timeouts (else those of `expiry`), the
    /// `touch_after` of `expiry`.
    pub(crate) fn remembered(&self) -> ExpiryPolicy {
        self.remember_me
            .unwrap_or(self.expiry)
            .with_browser_session(false)
            .with_touch_after(self.expiry.touch_after)
    }

    /// The policy that governs a session with this data.
    pub(crate) fn policy_for(&self, data: &coatcheck_core::Data) -> ExpiryPolicy {
        if crate::session::is_remembered(data) {
            self.remembered()
        } else {
            self.expiry
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie name is empty or has characters a cookie name cannot have.
    #[error("invalid cookie name {0:?}")]
    InvalidName(String),
    /// A `__Host-` cookie must be `Secure`, have `Path=/` and no `Domain`.
    #[error("a __Host- cookie needs secure(Secure::Always), path \"/\" and no domain")]
    HostPrefix,
    /// A `__Secure-`, `SameSite=None` or `Partitioned` cookie must be `Secure`.
    #[error("{0} requires the Secure attribute")]
    NeedsSecure(&'static str),
    /// The path or domain has characters a cookie attribute cannot have.
    #[error("invalid cookie attribute {0:?}")]
    InvalidAttribute(String),
    /// The store timeout is zero (use `None` for no limit).
    #[error("the store timeout must be more than zero (None for no limit)")]
    ZeroStoreTimeout,
    /// The idle timeout is zero.
    #[error("the idle timeout must be more than zero")]
    ZeroIdleTimeout,
    /// `touch_after` is not shorter than the idle timeout: a session that is only read
    /// would never be touched before it expired, so rolling expiry would silently be off.
    #[error("touch_after ({touch_after:?}) must be shorter than the idle timeout ({idle:?}), or reading users are logged out when the idle timeout passes")]
    TouchAfterNotBelowIdle {
        /// The configured `touch_after`.
        touch_after: std::time::Duration,
        /// The configured idle timeout.
        idle: std::time::Duration,
    },
    /// An absolute timeout needs the session's creation time, which this store does not keep
    /// (express-compatible mode: Express records none).
    #[error("this store keeps no creation time, so an absolute timeout cannot be enforced")]
    AbsoluteTimeoutUnsupported,
    /// [`SessionLayerBuilder::max_sessions_per_user`] with a store that cannot enforce a
    /// limit atomically (see its [`Capabilities::session_limit`](coatcheck_core::Capabilities::session_limit)).
    #[error("this store cannot enforce a per-user session limit atomically")]
    SessionLimitUnsupported,
}

pub(crate) type IdGenerator = Arc<dyn Fn() -> SessionId + Send + Sync>;

/// Builds a [`SessionLayer`]. Names follow express-session where they can.
///
/// ```
/// use coatcheck::{KeyRing, SameSite, SessionLayer};
/// use coatcheck::memory::MemoryStore;
/// use std::time::Duration;
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let layer = SessionLayer::builder(MemoryStore::new(), keys)
///     .name("__Host-sid")
///     .same_site(SameSite::Strict)
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .absolute_timeout(Duration::from_secs(12 * 3600))
///     .touch_after(Duration::from_secs(60))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
///
/// The builder's product is the tower [`SessionLayer`] by default; a framework adapter
/// names its own (`coatcheck-actix`'s middleware, or the framework-free
/// [`Engine`](crate::engine::Engine)): every option means the same whatever the product.
#[must_use]
pub struct SessionLayerBuilder<T = SessionLayer> {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) keys: KeyRing,
    pub(crate) config: SessionConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) id_generator: IdGenerator,
    pub(crate) subscriber: Option<Subscriber>,
    pub(crate) event_queue: usize,
    pub(crate) credential_check: Option<CredentialCheck>,
    product: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for SessionLayerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T> SessionLayerBuilder<T> {
    /// A builder over `store` whose [`build`](Self::build) makes a `T`; what
    /// [`SessionLayer::builder_shared`] and the adapters' own `builder` functions call.
    pub fn for_product(store: Arc<dyn SessionStore>, keys: KeyRing) -> Self {
        SessionLayerBuilder {
            store,
            keys,
            config: SessionConfig::default(),
            clock: Arc::new(SystemClock),
            id_generator: Arc::new(SessionId::generate),
            subscriber: None,
            event_queue: DEFAULT_EVENT_QUEUE,
            credential_check: None,
            product: PhantomData,
        }
    }

    /// Bounds every store call ([`SessionConfig::store_timeout`]; default 5 s). `None`
    /// leaves only the store's own timeouts.
    pub fn store_timeout(mut self, limit: Option<Duration>) -> Self {
        self.config.store_timeout = limit;
        self
    }

    /// Cookie name (express: `name`). Default `sid`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }
    /// Cookie `Path` (express: `cookie.path`). Default `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }
    /// Cookie `Domain` (express: `cookie.domain`). Default: none (host-only).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.config.domain = Some(domain.into());
        self
    }
    /// `Secure` (express: `cookie.secure`, incl. `'auto'`). Default [`Secure::Always`].
    pub fn secure(mut self, secure: Secure) -> Self {
        self.config.secure = secure;
        self
    }
    /// Trust `X-Forwarded-Proto` for [`Secure::Auto`] (express: `proxy`). Default false.
    pub fn trust_proxy(mut self, trust: bool) -> Self {
        self.config.trust_proxy = trust;
        self
    }
    /// `HttpOnly` (express: `cookie.httpOnly`). Default true.
    pub fn http_only(mut self, yes: bool) -> Self {
        self.config.http_only = yes;
        self
    }
    /// `SameSite` (express: `cookie.sameSite`). Default Lax.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.config.same_site = same_site;
        self
    }
    /// `Partitioned` (express: `cookie.partitioned`). Default false.
    pub fn partitioned(mut self, yes: bool) -> Self {
        self.config.partitioned = yes;
        self
    }
    /// Idle timeout, rolling with activity (express: `cookie.maxAge` + `rolling`).
    /// Default 24 h. Also sets `touch_after` to min(60 s, idle / 2) unless set later.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        let touch_after = self.config.expiry.touch_after;
        let default_touch = ExpiryPolicy::new(self.config.expiry.idle_timeout).touch_after;
        let mut p = ExpiryPolicy::new(idle)
            .with_absolute_timeout(self.config.expiry.absolute_timeout)
            .with_browser_session(self.config.expiry.browser_session);
        if touch_after != default_touch {
            p = p.with_touch_after(touch_after);
        }
        self.config.expiry = p;
        self
    }
    /// Absolute lifetime from creation, never extended by activity. Default none.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.config.expiry = self.config.expiry.with_absolute_timeout(Some(absolute));
        self
    }
    /// Browser-session cookies: no `Expires`; the server still enforces the timeouts.
    pub fn browser_session(mut self, yes: bool) -> Self {
        self.config.expiry = self.config.expiry.with_browser_session(yes);
        self
    }
    /// The timeouts of sessions whose user chose "remember me" with
    /// [`Session::remember_me`](crate::Session::remember_me): their cookie persists (it
    /// has `Expires` even with [`browser_session`](Self::browser_session)), they expire
    /// after `idle` without activity and, if given, `absolute` after their creation. The
    /// other sessions keep the layer's own timeouts. Without this call a remembered session
    /// differs only in its persistent cookie.
    ///
    /// ```
    /// use coatcheck::{memory::MemoryStore, KeyRing, SessionLayer};
    /// use std::time::Duration;
    ///
    /// const DAY: Duration = Duration::from_secs(86_400);
    /// let layer = SessionLayer::builder(MemoryStore::new(), KeyRing::new(["a secret of at least thirty-two bytes!"]).unwrap())
    ///     // Unticked: the cookie dies with the browser, 30 minutes idle, 12 hours at most.
    ///     .browser_session(true)
    ///     .idle_timeout(Duration::from_secs(30 * 60))
    ///     .absolute_timeout(12 * 3600 * Duration::from_secs(1))
    ///     // Ticked: a cookie for 30 days of inactivity, 90 days at most.
    ///     .remember_me(30 * DAY, Some(90 * DAY))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn remember_me(mut self, idle: Duration, absolute: Option<Duration>) -> Self {
        self.config.remember_me = Some(ExpiryPolicy::new(idle).with_absolute_timeout(absolute));
        self
    }
    /// The least time between two touches of one session (connect-mongo: `touchAfter`).
    pub fn touch_after(mut self, touch_after: Duration) -> Self {
        self.config.expiry = self.config.expiry.with_touch_after(touch_after);
        self
    }
    /// Store sessions nothing was written to (express: `saveUninitialized`). Default false.
    pub fn save_uninitialized(mut self, yes: bool) -> Self {
        self.config.save_uninitialized = yes;
        self
    }
    /// How many times to retry a save (or a rotation) after a version conflict, reloading
    /// and replaying the request's changes each time. Default 32. When they run out the
    /// request answers `503` with `Retry-After: 1` ([`SessionError::TooManyConflicts`]) and
    /// writes nothing.
    ///
    /// Conflicts only happen between requests of one session that overlap (tabs of one
    /// browser, an app's parallel API calls), and after the first one the retries back off
    /// (randomised, up to 32 ms). In the history checker's workloads (two tabs per
    /// session, random pauses of up to 4 ms in handlers and 3 ms around every store call, on
    /// every store) no request exhausted 32; 50 simultaneous increments of one counter on
    /// the memory store all commit with 200 (`coatcheck/tests/lifecycle.rs`). Raise it only
    /// for sessions written by many requests at once; `0` makes any overlap a `503`.
    ///
    /// [`SessionError::TooManyConflicts`]: crate::SessionError::TooManyConflicts
    pub fn max_save_retries(mut self, n: u32) -> Self {
        self.config.max_save_retries = n;
        self
    }
    /// A custom id generator (express: `genid`). Ids it makes must be 16–128 base64url
    /// characters (they are [`SessionId`]s) and unpredictable; a collision is retried.
    pub fn id_generator(mut self, f: impl Fn() -> SessionId + Send + Sync + 'static) -> Self {
        self.id_generator = Arc::new(f);
        self
    }
    /// The clock (default: system). Share one with the store in tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Shares sessions with an Express app (express-session): the cookie is `connect.sid`,
    /// keys express-session drops (`cookie`, `id`, `save`, `regenerate`, ...) are refused
    /// with [`SessionError::ReservedKey`](crate::SessionError::ReservedKey), and no absolute
    /// timeout is set (Express keeps no creation time). Pair it with a store in
    /// express-compatible mode and the Node app's secret list (weak secrets need
    /// [`KeyRing::new_allowing_weak`]). Everything else stays configurable: set the same
    /// `path`, `domain`, `same_site`, `secure` and idle timeout (`cookie.maxAge`) as the
    /// Node app.
    ///
    /// Concurrency with Node is last-write-wins: express-session takes no locks and keeps no
    /// version, so a Node write can overwrite a concurrent Rust write (and the reverse), as
    /// between two Node processes. Rust-to-Rust saves stay compare-and-set.
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new_allowing_weak(["keyboard cat"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .express_compatible()
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.config().name, "connect.sid");
    /// ```
    pub fn express_compatible(mut self) -> Self {
        self.config.name = "connect.sid".into();
        self.config.express_reserved_keys = true;
        self.config.principal_key = Some("userId".into());
        self.config.expiry.absolute_timeout = None;
        self
    }

    /// Sets [`SessionConfig::principal_key`] (after
    /// [`express_compatible`](SessionLayerBuilder::express_compatible), to match an
    /// [`ExpressFormat::user_key`](coatcheck_core::ExpressFormat::user_key) other than
    /// `userId`, or `None` for no principal mapping).
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new_allowing_weak(["keyboard cat"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .express_compatible()
    ///     .principal_key(Some("accountId"))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.config().principal_key.as_deref(), Some("accountId"));
    /// ```
    pub fn principal_key(mut self, key: Option<&str>) -> Self {
        self.config.principal_key = key.map(str::to_owned);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Calls `subscriber` with every [`SessionEvent`] (created, logged in, destroyed,
    /// revoked, gone on read, conflicts exhausted): audit logs, closing a revoked session's
    /// WebSockets, side tables. Delivered off the request path on one thread of the layer's
    /// own (never tokio's blocking pool, which the application needs), at most once; a
    /// subscriber that blocks or panics changes nothing for the request nor for the
    /// application's `spawn_blocking`. Past [`event_queue`](Self::event_queue) pending events, new
    /// ones are dropped and counted.
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionEvent, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .on_event(|event| {
    ///         if let SessionEvent::Revoked { user, count, .. } = event {
    ///             println!("audit: {count} sessions of {user} revoked");
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_event(mut self, subscriber: impl Fn(SessionEvent) + Send + Sync + 'static) -> Self {
        self.subscriber = Some(Arc::new(subscriber));
        self
    }

    /// How many events may wait or run at once before new ones are dropped (default 1024).
    pub fn event_queue(mut self, n: usize) -> Self {
        self.event_queue = n;
        self
    }

    /// Where the session token travels: the cookie (default), a request header for API and
    /// mobile clients, or both ([`Transport`]). A header token is not sent by browsers on
    /// their own, which changes the CSRF picture: see SECURITY.md.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.config.transport = transport;
        self
    }

    /// Whether a login keeps the `User-Agent` header with the session's device (default
    /// true). It is personal data: it lives as long as the session and goes with it.
    pub fn capture_user_agent(mut self, yes: bool) -> Self {
        self.config.capture_user_agent = yes;
        self
    }

    /// How much of the client address a login keeps with the device: [`IpCapture::Full`]
    /// (default), [`IpCapture::Truncated`] or [`IpCapture::Off`].
    pub fn capture_ip(mut self, mode: IpCapture) -> Self {
        self.config.capture_ip = mode;
        self
    }

    /// At most `max` live sessions per user. At a login past it the store either revokes
    /// the user's least recently seen sessions or refuses the login
    /// ([`SessionError::SessionLimit`](crate::SessionError::SessionLimit), `409`),
    /// atomically: two logins arriving together never both get past it. Rotating an id
    /// of an already signed-in session (`regenerate`, a login as the same user) is not a
    /// new device and is not checked. Needs a store with
    /// [`Capabilities::session_limit`](coatcheck_core::Capabilities::session_limit), else
    /// [`build`](Self::build) fails.
    ///
    /// ```
    /// use coatcheck::{KeyRing, LimitPolicy, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .max_sessions_per_user(3, LimitPolicy::EvictLeastRecentlySeen)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn max_sessions_per_user(mut self, max: u32, policy: LimitPolicy) -> Self {
        self.config.session_limit = Some(SessionLimit::new(max, policy));
        self
    }

    /// The most a session's data may take ([`SessionConfig::max_data_bytes`]; default
    /// [`DEFAULT_MAX_DATA_BYTES`]). `None` lifts the limit.
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .max_data_bytes(Some(16 * 1024))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.config().max_data_bytes, Some(16 * 1024));
    /// ```
    pub fn max_data_bytes(mut self, limit: Option<usize>) -> Self {
        self.config.max_data_bytes = limit;
        self
    }

    /// Whether this layer records [metrics](crate::metrics) (default `true`). Off, it costs
    /// nothing, as without the `metrics` feature: for a layer whose numbers nobody wants,
    /// when another dependency turned the feature on.
    ///
    /// ```
    /// use coatcheck::{KeyRing, SessionLayer};
    /// use coatcheck::memory::MemoryStore;
    ///
    /// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
    /// let layer = SessionLayer::builder(MemoryStore::new(), keys)
    ///     .metrics(false)
    ///     .build()
    ///     .unwrap();
    /// assert!(!layer.config().metrics);
    /// ```
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.metrics = on;
        self
    }

    /// Checks the configuration and builds the product: the layer (or an adapter's
    /// middleware, or the [`Engine`](crate::engine::Engine)).
    pub fn build(self) -> Result<T, ConfigError>
    where
        T: From<crate::engine::Engine>,
    {
        validate(&self.config)?;
        if self.config.session_limit.is_some() && !self.store.capabilities().session_limit {
            return Err(ConfigError::SessionLimitUnsupported);
        }
        let remembered_absolute = self
            .config
            .remember_me
            .is_some_and(|p| p.absolute_timeout.is_some());
        if (self.config.expiry.absolute_timeout.is_some() || remembered_absolute)
            && self.store.capabilities().no_creation_time
        {
            return Err(ConfigError::AbsoluteTimeoutUnsupported);
        }
        let engine = crate::engine::Engine::from_builder(self);
        Ok(T::from(engine))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_attr(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

pub(crate) fn validate(c: &SessionConfig) -> Result<(), ConfigError> {
    if !is_token(&c.name) {
        return Err(ConfigError::InvalidName(c.name.clone()));
    }
    if !is_attr(&c.path) || !c.path.starts_with('/') {
        return Err(ConfigError::InvalidAttribute(c.path.clone()));
    }
    if let Some(d) = &c.domain {
        if d.is_empty() || !is_attr(d) || d.contains(' ') {
            return Err(ConfigError::InvalidAttribute(d.clone()));
        }
    }
    // Browsers match the prefixes case-insensitively (RFC 6265bis), so `__host-` is
    // held to the same rules.
    let lower = c.name.to_ascii_lowercase();
    if lower.starts_with("__host-")
        && (c.secure != Secure::Always || c.path != "/" || c.domain.is_some())
    {
        return Err(ConfigError::HostPrefix);
    }
    if c.secure == Secure::Never {
        if lower.starts_with("__secure-") || lower.starts_with("__host-") {
            return Err(ConfigError::NeedsSecure("a __Secure- cookie"));
        }
        if c.same_site == SameSite::None {
            return Err(ConfigError::NeedsSecure("SameSite=None"));
        }
        if c.partitioned {
            return Err(ConfigError::NeedsSecure("Partitioned"));
        }
    }
    if c.store_timeout.is_some_and(|t| t.is_zero()) {
        return Err(ConfigError::ZeroStoreTimeout);
    }
    for policy in [c.expiry, c.remembered()] {
        if policy.idle_timeout.is_zero() {
            return Err(ConfigError::ZeroIdleTimeout);
        }
        if policy.touch_after >= policy.idle_timeout {
            return Err(ConfigError::TouchAfterNotBelowIdle {
                touch_after: policy.touch_after,
                idle: policy.idle_timeout,
            });
        }
    }
    Ok(())
}
