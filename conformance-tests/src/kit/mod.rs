//! The test kit: what every coatcheck test needs twice, written once.
//!
//! - [`StoreWrapper`] and [`Wrapped`]: a store around another one whose every call forwards
//!   by default — a delaying, counting or failing wrapper overrides only what it changes
//!   ([`stored_id`](coatcheck_core::SessionStore::stored_id) and
//!   [`capabilities`](coatcheck_core::SessionStore::capabilities) included, which hand-written
//!   wrappers tend to forget).
//! - [`TestClient`] (feature `client`): drives an axum router or any tower service in-process
//!   through `tower::ServiceExt::oneshot`, with a browser's cookie jar, and answers one
//!   [`Reply`] type.

#[cfg(feature = "client")]
mod client;
mod wrap;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{Jar, Reply, TestClient};
pub use wrap::{Call, StoreWrapper, Wrapped};
