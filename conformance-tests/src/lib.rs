#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-conformance
//!
//! The published test suite of the [`SessionStore`](coatcheck_core::SessionStore) contract.
//! Any store, ours or a contributor's, runs every case with one line in a test file:
//!
//! ```ignore
//! // tests/conformance.rs of a store crate
//! coatcheck_conformance::suite!(memory, async { coatcheck_memory::MemoryStore::new() });
//! ```
//!
//! which expands to a module `memory` with one `#[tokio::test]` per case, so a failing test
//! names its case (`memory::save_with_stale_version_is_conflict`, ...). The factory
//! expression is evaluated afresh for each test: make it return a store on its own namespace
//! (key prefix, table, collection) so that tests run in parallel and see nothing of each
//! other; [`harness::unique_name`] helps.
//!
//! Stores that need a server say which, and the harness finds it (see [`harness`]):
//!
//! ```ignore
//! use coatcheck_conformance::{harness, Backend};
//! coatcheck_conformance::suite!(redis, requires = Backend::Redis, async {
//!     let url = harness::url(Backend::Redis).await.expect("checked by `requires`");
//!     my_store::RedisStore::connect(&url, &harness::unique_name("sess")).await.unwrap()
//! });
//! ```
//!
//! Without the server, each test prints one `skipped: no redis ...` line (straight to the
//! terminal, not captured) and passes — unless `COATCHECK_REQUIRE_BACKENDS` names the
//! backend, in which case the skip is a failure. CI sets it.
//!
//! A store whose backend can be unreachable adds the failure case, built with a store
//! pointed at a closed port:
//!
//! ```ignore
//! coatcheck_conformance::suite!(redis, requires = Backend::Redis, async { make().await },
//!     unreachable = async { make_at("redis://127.0.0.1:1").await });
//! ```
#![warn(missing_docs)]

pub mod cases;
pub mod devices;
pub mod encryption;
pub mod express;
pub mod harness;
#[cfg(feature = "history")]
#[cfg_attr(docsrs, doc(cfg(feature = "history")))]
pub mod history;
pub mod kit;
pub mod servers;

pub use harness::Backend;

#[doc(hidden)]
pub use tokio as __tokio;

/// Expands to one `#[tokio::test]` per conformance case, in a module called `$name`.
///
/// Forms:
/// - `suite!(name, factory)`
/// - `suite!(name, requires = Backend::X, factory)`
/// - either of those followed by `, unreachable = factory` for a store pointed at a closed
///   port, which adds the `unreachable_backend_is_a_backend_error` case.
///
/// `factory` is an expression evaluating to a future that yields the store; it is evaluated
/// once per test (twice in the namespace test).
#[macro_export]
macro_rules! suite {
    ($name:ident, requires = $req:expr, $factory:expr, unreachable = $unreach:expr $(,)?) => {
        $crate::suite!(@cases $name, [Some($req)], $factory, [$unreach]);
    };
    ($name:ident, requires = $req:expr, $factory:expr $(,)?) => {
        $crate::suite!(@cases $name, [Some($req)], $factory, []);
    };
    ($name:ident, $factory:expr, unreachable = $unreach:expr $(,)?) => {
        $crate::suite!(@cases $name, [None], $factory, [$unreach]);
    };
    ($name:ident, $factory:expr $(,)?) => {
        $crate::suite!(@cases $name, [None], $factory, []);
    };
    (@cases $name:ident, [$req:expr], $factory:expr, [$($unreach:expr)?]) => {
        #[allow(unused_imports, clippy::redundant_closure_call)]
        mod $name {
            use super::*;
            $crate::suite!(@one $req, $factory;
                create_then_load_returns_every_field,
                load_of_unknown_id_is_none_and_creates_nothing,
                create_of_taken_id_is_id_taken_and_keeps_original,
                concurrent_creates_of_one_id_exactly_one_wins,
                save_with_current_version_increments_it,
                save_with_stale_version_is_conflict,
                save_after_delete_is_not_found_and_does_not_resurrect,
                delete_version_is_compare_and_delete,
                save_after_expiry_is_not_found,
                expired_record_is_never_returned,
                touch_moves_expiry_only,
                touch_of_missing_or_expired_is_false,
                delete_is_true_then_false,
                delete_expired_removes_only_expired,
                list_for_user_returns_only_live_sessions_of_that_user,
                delete_for_user_removes_all_or_all_but_one,
                save_moving_user_id_moves_index,
                concurrent_counter_increments_are_exact,
                large_and_exotic_data_round_trips,
                awkward_user_ids_and_edge_ids_match_literally,
            );
            $crate::suite!(@in devices, $req, $factory;
                device_and_last_seen_round_trip,
                delete_device_revokes_only_the_users_own,
                delete_device_revokes_every_session_of_the_handle,
                session_limit_refuses_at_the_limit,
                session_limit_evicts_the_least_recently_seen,
                session_limit_evicts_nobody_for_a_taken_id,
                session_limit_of_zero_acts_as_one,
                concurrent_limited_creates_never_pass_the_limit,
            );

            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn namespaces_are_isolated() {
                if !$crate::harness::require($req).await { return; }
                let a = $factory.await;
                let b = $factory.await;
                $crate::cases::namespaces_are_isolated(a, b).await;
            }

            $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unreachable_backend_is_a_backend_error() {
                let store = $unreach.await;
                $crate::cases::unreachable_backend_is_a_backend_error(store).await;
            }
            )?
        }
    };
    (@one $req:expr, $factory:expr; $($case:ident),* $(,)?) => {
        $crate::suite!(@in cases, $req, $factory; $($case),*);
    };
    (@in $module:ident, $req:expr, $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if !$crate::harness::require($req).await { return; }
                let store = $factory.await;
                $crate::$module::$case(store).await;
            }
        )*
    };
}

/// The store author's guide (`docs/writing-a-store.md`), compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/writing-a-store.md")]
pub struct WritingAStoreGuide;
