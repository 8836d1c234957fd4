#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-mongo
//!
//! A MongoDB [`SessionStore`] for coatcheck, on the official `mongodb` driver.
//!
//! One document per session in one collection (default `sessions`):
//!
//! ```text
//! { _id: "<session id>", version: <int64>, data: <binary: the codec's bytes>,
//!   user_id: "<user>" (absent when none), created_at: <date>, expires_at: <date> }
//! ```
//!
//! with a TTL index on `expires_at` (`expireAfterSeconds: 0`) so that the server removes
//! expired sessions by itself, and a sparse index on `user_id` for listing and revoking a
//! user's sessions. The TTL monitor runs only about once a minute, so every read and write
//! also filters on `expires_at > now` (`now` from the store's [`Clock`]): an expired
//! session is never returned, saved or touched, even while it is still physically there.
//!
//! Saves are compare-and-set on `version` (one `update_one` with `$inc`), so concurrent
//! writers never lose an update.
//!
//! ```no_run
//! use coatcheck::mongo::MongoStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Parses the URL, bounds server selection and connecting to 3 s unless the URL says
//! // otherwise, and ensures the indexes.
//! let store = MongoStore::connect("mongodb://127.0.0.1:27017", "myapp").await?;
//! # let _ = store;
//! # Ok(()) }
//! ```
//!
//! With a client you already have, a collection name, a codec or a clock of your own, use
//! the [builder](MongoStore::builder).
//!
//! See the crate's README for the exact operations each method issues.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The skeleton every coatcheck store crate shares: `builder` (options and terminals),
// `error` (`BuildError`), `store` (the `SessionStore` impl), `layout/` (native and
// express documents), and `devices` (the per-user queries).
mod builder;
mod devices;
mod error;
mod layout;
mod store;

use std::time::Duration;

#[cfg(doc)]
use coatcheck_core::{Clock, Codec, SessionStore};

/// The MongoDB driver this store is built on, for building clients and options.
pub use mongodb;

pub use crate::builder::MongoStoreBuilder;
pub use crate::error::BuildError;
#[allow(deprecated)]
pub use crate::error::SetupError;
pub use crate::store::MongoStore;

/// The collection used when none is given.
pub const DEFAULT_COLLECTION: &str = "sessions";

/// Server selection timeout applied by [`MongoStore::connect`] and
/// [`MongoStore::connect_with_options`] when the options do not set one (the driver's own
/// default is 30 s, which would make an unreachable server hang every request that long).
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// Connect timeout applied by [`MongoStore::connect`] and
/// [`MongoStore::connect_with_options`] when the options do not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
