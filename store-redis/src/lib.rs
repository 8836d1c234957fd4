//! # coatcheck-redis
//!
//! docs come later
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod error;
mod native;
mod scripts;
mod store;

pub use error::{BuildError, OperationTimedOut};
pub use store::{RedisStore, RedisStoreBuilder, DEFAULT_OPERATION_TIMEOUT, DEFAULT_PREFIX};

/// The redis-rs and deadpool-redis versions this crate is built against, for building
/// connections and pools to hand to [`RedisStore`].
pub use deadpool_redis;
pub use redis;
