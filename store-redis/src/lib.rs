#![cfg_attr(docsrs, feature(doc_cfg))]
// The README is the crate's documentation; its examples are written against the `coatcheck`
// facade (what an application depends on) and run as doc tests of the facade
// (`coatcheck/src/lib.rs`, `store_readmes`): they run once, there, not again here.
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
#![cfg_attr(
    doctest,
    doc = "coatcheck-redis: its README's examples run as doc tests of the `coatcheck` facade."
)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The skeleton every coatcheck store crate shares: `builder` (options and terminals),
// `error` (`BuildError`), `store` (the `SessionStore` impl, thin), `layout/` (native and
// express), and here the topology (`conn`: single node, cluster, pool) with `ctx`.
mod builder;
mod cas;
mod conn;
mod ctx;
mod dial;
mod error;
mod layout;
mod notices;
mod replication;
mod scripts;
mod store;
mod value;

pub use builder::{RedisStoreBuilder, DEFAULT_OPERATION_TIMEOUT, DEFAULT_PREFIX};
pub use error::{BuildError, OperationTimedOut};
pub use notices::{NoticeError, Notifications, NOTICE_QUEUE};
pub use replication::{NotReplicated, Replicated};
pub use store::RedisStore;

/// The redis-rs crate this store is built on, to build a `ConnectionManager`,
/// `ClusterConnection` or client configuration to hand to [`RedisStore`].
pub use redis;

/// The deadpool-redis crate this store accepts pools of.
pub use deadpool_redis;
