//! The conformance cases for a store in **express-compatible mode** (the session is
//! express-session's JSON, see `coatcheck_core::ExpressFormat`), run by
//! [`express_suite!`](crate::express_suite) together with the general cases that hold
//! unchanged in that mode.
//!
//! What differs from the native contract, and is asserted here instead:
//! - the principal is also a data key (`userId`, the [`ExpressFormat`] default);
//! - `created_at` is not kept (reads as the Unix epoch);
//! - versions are opaque content hashes: a save returns a new one, a stale one conflicts;
//! - expiry is kept to the second by connect-redis and connect-pg-simple, so a loaded
//!   `expires_at` may lie up to one second after the one written, and timing cases wait in
//!   whole seconds.
//!
//! The factory must build the store with `ExpressFormat::new()` (the defaults).
//!
//! [`ExpressFormat`]: coatcheck_core::ExpressFormat

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{Record, SessionId, SessionStore, StoreError, Timestamp};
use serde_json::{json, Value};

use crate::cases::{fresh_record, must_load};

const HOUR: Duration = Duration::from_secs(3600);
const USER_KEY: &str = "userId";

/// `expires_at` as read back: the one written, or up to a second later (whole seconds).
fn assert_expiry(read: Timestamp, written: Timestamp) {
    let d = read.as_millis() - written.as_millis();
    assert!(
        (0..=1000).contains(&d),
        "expires_at read back {d} ms away from the one written"
    );
}

/// create then load: data in order, the principal as `user_id` and as the `userId` key,
/// expiry (to the second), no creation time, a version that is stable across loads.
pub async fn express_create_then_load_maps_the_session<S: SessionStore>(store: S) {
    let mut r = fresh_record();
    r.data
        .insert("nested".into(), json!({"a": [1, 2.5, "x", null, true]}));
    r.user_id = Some("user-1".into());
    store.create(&r).await.expect("create");
    let back = must_load(&store, &r.id).await;
    let mut expected = r.data.clone();
    expected.insert(USER_KEY.into(), json!("user-1"));
    assert_eq!(back.data, expected);
    assert_eq!(
        back.data.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "key order is kept"
    );
    assert_eq!(back.user_id.as_deref(), Some("user-1"));
    assert_eq!(back.created_at, Timestamp::from_millis(0));
    assert_expiry(back.expires_at, r.expires_at);
    assert_eq!(must_load(&store, &r.id).await.version, back.version);
    assert!(store.capabilities().opaque_versions);
    assert!(store.capabilities().no_creation_time);
}

/// create of a taken id is `IdTaken` and leaves the original untouched.
pub async fn express_create_of_taken_id_is_id_taken<S: SessionStore>(store: S) {
    let original = fresh_record();
    store.create(&original).await.expect("create");
    let mut intruder = original.clone();
    intruder.data.insert("views".into(), json!(999));
    intruder.user_id = Some("mallory".into());
    match store.create(&intruder).await {
        Err(StoreError::IdTaken) => {}
        other => panic!("expected IdTaken, got {other:?}"),
    }
    let back = must_load(&store, &original.id).await;
    assert_eq!(back.data, original.data);
    assert_eq!(back.user_id, None);
}

/// save is compare-and-set on the content version: the current one succeeds and returns a
/// new one; a stale or invented one is `Conflict` and changes nothing.
pub async fn express_save_is_compare_and_set<S: SessionStore>(store: S) {
    let r = fresh_record();
    store.create(&r).await.expect("create");
    let loaded = must_load(&store, &r.id).await;
    let mut next = loaded.clone();
    next.data.insert("views".into(), json!(2));
    let v2 = store.save(&next).await.expect("save current version");
    assert_ne!(v2, loaded.version);
    let back = must_load(&store, &r.id).await;
    assert_eq!(back.version, v2);
    assert_eq!(back.data["views"], json!(2));

    let mut stale = loaded.clone();
    stale.data.insert("views".into(), json!(100));
    assert!(matches!(
        store.save(&stale).await,
        Err(StoreError::Conflict)
    ));
    let mut invented = back.clone();
    invented.version = back.version.wrapping_add(1);
    assert!(matches!(
        store.save(&invented).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(must_load(&store, &r.id).await.data, back.data);
}

/// A session past its expiry is never returned and a save does not bring it back.
pub async fn express_expired_session_is_gone_and_not_resurrected<S: SessionStore>(store: S) {
    let now = Timestamp::now();
    let past = Record::new(SessionId::generate(), now, now - Duration::from_millis(1));
    store.create(&past).await.expect("create expired");
    assert!(store.load(&past.id).await.expect("load").is_none());

    let now = Timestamp::now();
    let mut soon = Record::new(
        SessionId::generate(),
        now,
        now + Duration::from_millis(1000),
    );
    store.create(&soon).await.expect("create");
    let loaded = must_load(&store, &soon.id).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.load(&soon.id).await.expect("load").is_none());
    soon.version = loaded.version;
    soon.expires_at = Timestamp::now() + HOUR;
    assert!(matches!(store.save(&soon).await, Err(StoreError::NotFound)));
    assert!(store.load(&soon.id).await.expect("load").is_none());
}

/// touch moves the expiry only (later and earlier); data and version are unchanged.
pub async fn express_touch_moves_expiry_only<S: SessionStore>(store: S) {
    let r = fresh_record();
    store.create(&r).await.expect("create");
    let before = must_load(&store, &r.id).await;
    let later = r.expires_at + HOUR;
    assert!(store.touch(&r.id, later).await.expect("touch"));
    let back = must_load(&store, &r.id).await;
    assert_expiry(back.expires_at, later);
    assert_eq!(back.data, before.data);
    assert_eq!(back.version, before.version);
    let earlier = Timestamp::now() + Duration::from_secs(30);
    assert!(store.touch(&r.id, earlier).await.expect("touch earlier"));
    assert_expiry(must_load(&store, &r.id).await.expires_at, earlier);
}

/// Login and logout through `user_id` add and remove the `userId` key; the rest stays.
pub async fn express_principal_follows_login_and_logout<S: SessionStore>(store: S) {
    let r = fresh_record();
    store.create(&r).await.expect("create");
    let mut s = must_load(&store, &r.id).await;
    assert_eq!(s.user_id, None);
    s.user_id = Some("alice".into());
    s.version = store.save(&s).await.expect("login");
    let back = must_load(&store, &r.id).await;
    assert_eq!(back.user_id.as_deref(), Some("alice"));
    assert_eq!(back.data[USER_KEY], json!("alice"));
    let mut s = back;
    s.user_id = None;
    store.save(&s).await.expect("logout");
    let back = must_load(&store, &r.id).await;
    assert_eq!(back.user_id, None);
    assert!(!back.data.contains_key(USER_KEY));
    assert_eq!(back.data["name"], json!("alice"));
}

/// A key express-session would drop is refused (`Encode`) and nothing is stored.
pub async fn express_reserved_keys_are_refused<S: SessionStore>(store: S) {
    let mut r = fresh_record();
    r.data.insert("regenerate".into(), json!(1));
    assert!(matches!(store.create(&r).await, Err(StoreError::Encode(_))));
    assert!(store.load(&r.id).await.expect("load").is_none());
    let ok = fresh_record();
    store.create(&ok).await.expect("create");
    let mut s = must_load(&store, &ok.id).await;
    s.data.insert("cookie".into(), json!({"maxAge": 1}));
    assert!(matches!(store.save(&s).await, Err(StoreError::Encode(_))));
    assert_eq!(must_load(&store, &ok.id).await.version, s.version);
}

/// 16 tasks × 25 increments through load → modify → save, retrying on `Conflict`: exactly
/// 400. (Rust-to-Rust saves stay compare-and-set in express mode.)
pub async fn express_concurrent_counter_increments_are_exact<S: SessionStore>(store: S) {
    const TASKS: u64 = 16;
    const EACH: u64 = 25;
    let store = Arc::new(store);
    let mut r = fresh_record();
    r.data.insert("counter".into(), json!(0));
    store.create(&r).await.expect("create");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let id = r.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..EACH {
                let mut streak = 0u32;
                loop {
                    let started = std::time::Instant::now();
                    let mut rec = must_load(&*store, &id).await;
                    let n = rec.data["counter"].as_u64().expect("counter is a number");
                    rec.data.insert("counter".into(), json!(n + 1));
                    match store.save(&rec).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict) => {
                            streak += 1;
                            crate::cases::backoff(&mut rng, streak, started.elapsed()).await;
                        }
                        Err(e) => panic!("save failed: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let done = must_load(&*store, &r.id).await;
    assert_eq!(done.data["counter"], json!(TASKS * EACH));
}

/// 1 MiB, 10,000 keys, unicode, `i64::MAX`, `u64::MAX`, floats and odd keys round-trip.
pub async fn express_large_and_exotic_data_round_trips<S: SessionStore>(store: S) {
    let mut big = fresh_record();
    big.data
        .insert("blob".into(), Value::String("x".repeat(1 << 20)));
    for i in 0..10_000 {
        big.data.insert(format!("key-{i}"), json!(i));
    }
    big.data.insert(
        "ключ 🔑".into(),
        json!("значение ✓ 日本語 \"quoted\" \\ \u{1} </script>"),
    );
    big.data.insert("max".into(), json!(i64::MAX));
    big.data.insert("umax".into(), json!(u64::MAX));
    big.data.insert("pi".into(), json!(std::f64::consts::PI));
    big.data.insert("small".into(), json!(-1.5e-300));
    big.data.insert("".into(), json!("empty key"));
    big.data.insert("$where".into(), json!({"$gt": 1}));
    big.data.insert("dot.ted".into(), json!(true));
    store.create(&big).await.expect("create");
    let back = must_load(&store, &big.id).await;
    assert_eq!(back.data, big.data);
    assert_eq!(back.data["max"].as_i64(), Some(i64::MAX));
    assert_eq!(back.data["pi"].as_f64(), Some(std::f64::consts::PI));
}

/// With a user index (connect-pg-simple's table can be queried on `sess->>'userId'`):
/// list and revoke match user ids literally, keep `except`, and skip expired sessions.
pub async fn express_user_index_matches_literally<S: SessionStore>(store: S) {
    if !store.capabilities().user_index {
        crate::cases::not_applicable("express_user_index", "store has no user index");
        return;
    }
    let users = ["alice", "al%", "al_ce", "a'; DROP TABLE x; --", "ü🔑"];
    let mut ids = Vec::new();
    for u in users {
        let mut r = fresh_record();
        r.user_id = Some(u.into());
        store.create(&r).await.expect("create");
        ids.push(r.id);
    }
    for (u, id) in users.iter().zip(&ids) {
        let listed: HashSet<SessionId> = store
            .list_for_user(u)
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(listed, HashSet::from([id.clone()]), "user {u:?}");
    }
    let mut second = fresh_record();
    second.user_id = Some("alice".into());
    store.create(&second).await.expect("create");
    let now = Timestamp::now();
    let mut dead = Record::new(SessionId::generate(), now, now - Duration::from_millis(1));
    dead.user_id = Some("alice".into());
    store.create(&dead).await.expect("create expired");
    assert_eq!(store.list_for_user("alice").await.expect("list").len(), 2);
    assert_eq!(
        store
            .delete_for_user("alice", Some(&second.id))
            .await
            .expect("revoke others"),
        1
    );
    assert!(store.load(&ids[0]).await.expect("load").is_none());
    assert!(store.load(&second.id).await.expect("load").is_some());
    assert!(
        store.load(&ids[1]).await.expect("load").is_some(),
        "al% untouched"
    );
}

/// Without a user index, listing and revoking are `Unsupported`, never a silent empty answer.
pub async fn express_without_user_index_says_unsupported<S: SessionStore>(store: S) {
    if store.capabilities().user_index {
        crate::cases::not_applicable("express_without_user_index", "store has a user index");
        return;
    }
    assert!(matches!(
        store.list_for_user("alice").await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(
        store.delete_for_user("alice", None).await,
        Err(StoreError::Unsupported(_))
    ));
}

/// Expands to the express-mode conformance tests in a module `$name`: the cases of this
/// module plus the general ones that hold unchanged. Forms as [`suite!`](crate::suite).
#[macro_export]
macro_rules! express_suite {
    ($name:ident, requires = $req:expr, $factory:expr, unreachable = $unreach:expr $(,)?) => {
        $crate::express_suite!(@cases $name, [Some($req)], $factory, [$unreach]);
    };
    ($name:ident, requires = $req:expr, $factory:expr $(,)?) => {
        $crate::express_suite!(@cases $name, [Some($req)], $factory, []);
    };
    ($name:ident, $factory:expr, unreachable = $unreach:expr $(,)?) => {
        $crate::express_suite!(@cases $name, [None], $factory, [$unreach]);
    };
    ($name:ident, $factory:expr $(,)?) => {
        $crate::express_suite!(@cases $name, [None], $factory, []);
    };
    (@cases $name:ident, [$req:expr], $factory:expr, [$($unreach:expr)?]) => {
        #[allow(unused_imports, clippy::redundant_closure_call)]
        mod $name {
            use super::*;
            $crate::express_suite!(@one $req, $factory, express;
                express_create_then_load_maps_the_session,
                express_create_of_taken_id_is_id_taken,
                express_save_is_compare_and_set,
                express_expired_session_is_gone_and_not_resurrected,
                express_touch_moves_expiry_only,
                express_principal_follows_login_and_logout,
                express_reserved_keys_are_refused,
                express_concurrent_counter_increments_are_exact,
                express_large_and_exotic_data_round_trips,
                express_user_index_matches_literally,
                express_without_user_index_says_unsupported,
            );
            $crate::express_suite!(@one $req, $factory, cases;
                load_of_unknown_id_is_none_and_creates_nothing,
                concurrent_creates_of_one_id_exactly_one_wins,
                save_after_delete_is_not_found_and_does_not_resurrect,
                delete_version_is_compare_and_delete,
                touch_of_missing_or_expired_is_false,
                delete_is_true_then_false,
            );

            $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unreachable_backend_is_a_backend_error() {
                let store = $unreach.await;
                $crate::cases::unreachable_backend_is_a_backend_error(store).await;
            }
            )?
        }
    };
    (@one $req:expr, $factory:expr, $module:ident; $($case:ident),* $(,)?) => {
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
