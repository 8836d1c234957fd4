#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck
//!
//! Server-side HTTP sessions for tower and axum, in the spirit of express-session: the
//! browser holds a signed ticket (the session id in a cookie), the coat (the data) stays on
//! the server, in memory, Redis, Postgres or MongoDB — and, unlike the usual crates, it
//! stays right under concurrency:
//!
//! - **No lost updates.** Saves are compare-and-set on a version; on conflict the request's
//!   own changes are replayed onto the fresh record ([`Session::update`] re-runs its
//!   closure), so two overlapping requests both keep their writes.
//! - **No resurrection.** A save after logout or revocation fails and the cookie is
//!   cleared; the session stays gone.
//! - **Revocation everywhere.** Sessions are indexed by user:
//!   [`Session::logout_everywhere`], [`Session::logout_other_devices`].
//! - **Lazy and frugal.** A request that never touches its session costs no store call;
//!   rolling expiry writes at most once per `touch_after`.
//! - **Express-compatible cookies**: `s:<id>.<hmac>`, so one secret list serves a Node and
//!   a Rust app side by side, with key rotation.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use coatcheck::{KeyRing, Secure, Session, SessionLayer};
//! use coatcheck::memory::MemoryStore;
//!
//! async fn views(session: Session) -> Result<String, coatcheck::SessionError> {
//!     let n: u64 = session.update("views", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
//!     Ok(format!("You have seen this page {n} times"))
//! }
//!
//! # #[tokio::main] async fn main() {
//! let keys = KeyRing::new([std::env::var("SESSION_SECRET").expect("32+ byte secret")]).unwrap();
//! let sessions = SessionLayer::builder(MemoryStore::new(), keys)
//!     .secure(Secure::Never) // plain HTTP on localhost only
//!     .build()
//!     .unwrap();
//! let app = Router::new().route("/", get(views)).layer(sessions);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod credentials;
pub mod csrf;
mod device;
pub mod engine;
mod error;
mod events;
#[cfg(feature = "axum")]
mod extract;
mod guard;
mod layer;
pub mod metrics;
mod session;
mod transport;

pub use config::{
    ConfigError, SameSite, Secure, SessionConfig, SessionLayerBuilder, DEFAULT_MAX_DATA_BYTES,
    DEFAULT_STORE_TIMEOUT,
};
pub use credentials::{CredentialLookupError, CREDENTIAL_KEY};
pub use csrf::{CsrfLayer, CsrfReason, CsrfService};
pub use device::{IpCapture, UserSession};
pub use engine::{session_id_from_headers, StoreTimedOut};
pub use error::{SessionError, SessionFailure};
pub use events::{RevokeScope, SessionEvent, DEFAULT_EVENT_QUEUE};
pub use layer::{SessionLayer, SessionService};
pub use session::{Flash, FlashLevel, Session, MAX_PENDING_FLASHES, REMEMBER_ME_KEY};
pub use transport::{Transport, BEARER_RESPONSE_HEADER};

pub use guard::{AuthRejection, Authenticated, ROLES_KEY};
#[cfg(feature = "axum")]
pub use guard::{RequireRole, RequireRoleService};

pub use coatcheck_core::{
    Clock, DataKeyError, DataKeys, Device, DeviceHandle, EncryptedCodec, ExpiryNotice,
    ExpiryPolicy, ExpressFormat, ExpressMaxAge, HashedIds, HashedIdsError, JsonCodec, KeyRing,
    KeyRingError, LimitPolicy, ManualClock, NativeCodec, SessionId, SessionInfo, SessionStore,
    StoreError, StoreOptions, SystemClock, Timestamp, Verified,
};

/// What a store implementor uses, in one place: the [`SessionStore`]
/// trait and what its methods take and answer. An application needs none of it beyond
/// picking a store; the root of this crate holds what an application uses.
///
/// ```
/// use coatcheck::store::{Capabilities, Record, SessionStore};
/// use coatcheck::memory::MemoryStore;
///
/// let store = MemoryStore::new();
/// let caps: Capabilities = store.capabilities();
/// assert!(caps.user_index);
/// # let _: Option<Record> = None;
/// ```
pub mod store {
    pub use coatcheck_core::{
        content_version, Capabilities, Clock, Codec, Data, DecodeError, Device, DeviceHandle,
        EncodeError, ExpressFormat, JsonCodec, ManualClock, NativeCodec, OptionsConflict, Record,
        SessionId, SessionInfo, SessionLimit, SessionStore, StoreError, StoreOptions, SystemClock,
        Timestamp,
    };
}

/// Moved to [`store::Record`] (what store implementors use).
#[deprecated(since = "0.2.0", note = "use `coatcheck::store::Record`")]
pub type Record = coatcheck_core::Record;
/// Moved to [`store::Data`].
#[deprecated(since = "0.2.0", note = "use `coatcheck::store::Data`")]
pub type Data = coatcheck_core::Data;
/// Moved to [`store::Capabilities`].
#[deprecated(since = "0.2.0", note = "use `coatcheck::store::Capabilities`")]
pub type Capabilities = coatcheck_core::Capabilities;
/// Moved to [`store::SessionLimit`].
#[deprecated(since = "0.2.0", note = "use `coatcheck::store::SessionLimit`")]
pub type SessionLimit = coatcheck_core::SessionLimit;
// A trait cannot carry a deprecated alias: `coatcheck::Codec` stays, hidden, for one
// release; it is documented as `coatcheck::store::Codec`.
#[doc(hidden)]
pub use coatcheck_core::Codec;

/// The JSON value sessions hold ([`Session::get_value`] returns it).
pub use serde_json::Value;

/// The core crate, for store implementors.
pub use coatcheck_core as core;

/// The stores' READMEs, run as doc tests of this facade: their examples are written against
/// `coatcheck::…` paths, as an application that depends on `coatcheck` alone writes them.
/// (Only in doc-test builds; `pub` so that `missing_docs` does not misplace the next item's
/// documentation.)
#[cfg(doctest)]
pub mod store_readmes {
    /// coatcheck-redis.
    #[cfg(feature = "redis")]
    #[doc = include_str!("../../store-redis/README.md")]
    pub struct Redis;
    /// coatcheck-postgres.
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../../store-postgres/README.md")]
    pub struct Postgres;
    /// coatcheck-mongo.
    #[cfg(feature = "mongo")]
    #[doc = include_str!("../../store-mongo/README.md")]
    pub struct Mongo;
    /// coatcheck-mysql.
    #[cfg(feature = "mysql")]
    #[doc = include_str!("../../store-mysql/README.md")]
    pub struct Mysql;
    /// coatcheck-sqlite.
    #[cfg(feature = "sqlite")]
    #[doc = include_str!("../../store-sqlite/README.md")]
    pub struct Sqlite;
}

/// The in-process store.
#[cfg(feature = "memory")]
pub mod memory {
    pub use coatcheck_memory::*;
}
/// The Redis store.
#[cfg(feature = "redis")]
pub mod redis {
    pub use coatcheck_redis::*;
}
/// The Postgres store.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use coatcheck_postgres::*;
}
/// The MongoDB store.
#[cfg(feature = "mongo")]
pub mod mongo {
    pub use coatcheck_mongo::*;
}
/// The MySQL / MariaDB store.
#[cfg(feature = "mysql")]
pub mod mysql {
    pub use coatcheck_mysql::*;
}
/// The SQLite store.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use coatcheck_sqlite::*;
}
