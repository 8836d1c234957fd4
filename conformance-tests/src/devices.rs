//! Conformance cases for device details, revoking one device and the per-user session
//! limit. A store without [`Capabilities::devices`](coatcheck_core::Capabilities::devices)
//! or [`Capabilities::session_limit`](coatcheck_core::Capabilities::session_limit) gets a
//! visible `n/a` line per case and must answer `Unsupported` (checked here too).

use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{
    Device, LimitPolicy, Record, SessionLimit, SessionStore, StoreError, Timestamp,
};

use crate::cases::{fresh_record, ids_of, keys, must_load, not_applicable};

fn signed_in(user: &str, last_seen_in_ms: u64) -> Record {
    let mut r = fresh_record();
    r.user_id = Some(user.to_owned());
    r.device = Some(
        Device::new()
            .with_user_agent(Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0",
            ))
            .with_ip(Some("203.0.113.7")),
    );
    r.last_seen = r.created_at + Duration::from_millis(last_seen_in_ms);
    r
}

async fn devices<S: SessionStore>(store: &S, case: &str) -> bool {
    if store.capabilities().devices {
        return true;
    }
    not_applicable(case, "store does not keep devices");
    let r = signed_in("u", 0);
    let handle = r
        .device
        .as_ref()
        .map(|d| d.handle.to_string())
        .unwrap_or_default();
    assert!(
        matches!(
            store.delete_device("u", &handle).await,
            Err(StoreError::Unsupported(_))
        ),
        "a store without the devices capability must answer Unsupported"
    );
    false
}

async fn limited<S: SessionStore>(store: &S, case: &str) -> bool {
    if store.capabilities().session_limit {
        return true;
    }
    not_applicable(case, "store has no per-user session limit");
    let limit = SessionLimit::new(1, LimitPolicy::Refuse);
    let r = signed_in("u", 0);
    assert!(
        matches!(
            store.create_limited(&r, limit).await,
            Err(StoreError::Unsupported(_))
        ),
        "a store without the session_limit capability must answer Unsupported"
    );
    assert!(store.load(&r.id).await.expect("load").is_none());
    false
}

fn handle_of(r: &Record) -> String {
    r.device
        .as_ref()
        .map(|d| d.handle.to_string())
        .expect("a signed-in record has a device")
}

/// Device and `last_seen` are kept by create and save, listed by `list_for_user`, and
/// `touch` moves `last_seen` to the store's now while keeping the device.
pub async fn device_and_last_seen_round_trip<S: SessionStore>(store: S) {
    if !devices(&store, "device_and_last_seen_round_trip").await {
        return;
    }
    let mut r = signed_in("dev-user", 5_000);
    store.create(&r).await.expect("create");
    assert_eq!(must_load(&store, &r.id).await, r);
    let listed = store.list_for_user("dev-user").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].device, r.device);
    assert_eq!(listed[0].last_seen, r.last_seen);

    r.data.insert("views".into(), 2.into());
    r.last_seen = r.created_at + Duration::from_millis(9_000);
    r.version = store.save(&r).await.expect("save");
    assert_eq!(must_load(&store, &r.id).await, r);

    let before = Timestamp::now();
    assert!(store
        .touch(&r.id, r.expires_at + Duration::from_secs(60))
        .await
        .expect("touch"));
    let back = must_load(&store, &r.id).await;
    assert!(back.last_seen >= before, "touch must move last_seen to now");
    assert!(back.last_seen <= Timestamp::now());
    assert_eq!(back.device, r.device);
    assert_eq!(back.version, r.version);
    let listed = store.list_for_user("dev-user").await.expect("list");
    assert_eq!(listed[0].last_seen, back.last_seen);

    // A session without a device (anonymous, or signed in before devices) stays without.
    let plain = fresh_record();
    store.create(&plain).await.expect("create");
    assert_eq!(must_load(&store, &plain.id).await.device, None);
}

/// `delete_device` revokes the user's own session with that handle, only that one, and
/// does nothing for a handle of another user's session or of none.
pub async fn delete_device_revokes_only_the_users_own<S: SessionStore>(store: S) {
    if !devices(&store, "delete_device_revokes_only_the_users_own").await {
        return;
    }
    let a = signed_in("alice", 0);
    let b = signed_in("alice", 0);
    let c = signed_in("bob", 0);
    for r in [&a, &b, &c] {
        store.create(r).await.expect("create");
    }
    assert!(!store
        .delete_device("alice", &handle_of(&c))
        .await
        .expect("other's handle"));
    assert!(!store
        .delete_device("bob", &handle_of(&a))
        .await
        .expect("other's handle"));
    assert!(!store
        .delete_device("alice", "no-such-handle")
        .await
        .expect("unknown"));
    assert!(store.load(&c.id).await.expect("load").is_some());
    assert_eq!(ids_of(&store, "alice").await, keys(&store, [&a.id, &b.id]));

    assert!(store
        .delete_device("alice", &handle_of(&a))
        .await
        .expect("own handle"));
    assert!(store.load(&a.id).await.expect("load").is_none());
    assert!(
        matches!(store.save(&a).await, Err(StoreError::NotFound)),
        "a revoked device must not come back by a save"
    );
    assert!(!store
        .delete_device("alice", &handle_of(&a))
        .await
        .expect("twice"));
    assert_eq!(ids_of(&store, "alice").await, keys(&store, [&b.id]));
    assert_eq!(ids_of(&store, "bob").await, keys(&store, [&c.id]));
}

/// `delete_device` revokes **every** live session of the user under that handle, not the
/// first one found (two records can share a handle: a rotation keeps the device's handle,
/// and a store may hold the new record beside one not yet retired). A newcomer's store
/// that removed only the first passed every other case.
pub async fn delete_device_revokes_every_session_of_the_handle<S: SessionStore>(store: S) {
    if !devices(&store, "delete_device_revokes_every_session_of_the_handle").await {
        return;
    }
    let a = signed_in("alice", 0);
    let mut b = signed_in("alice", 1);
    let handle = a.device.as_ref().map(|d| d.handle.clone()).expect("device");
    b.device = b.device.take().map(|d| d.with_handle(handle.clone()));
    let other = signed_in("alice", 2);
    for r in [&a, &b, &other] {
        store.create(r).await.expect("create");
    }
    assert!(store
        .delete_device("alice", handle.as_str())
        .await
        .expect("the shared handle"));
    assert!(store.load(&a.id).await.expect("load").is_none());
    assert!(
        store.load(&b.id).await.expect("load").is_none(),
        "every session under the handle is revoked, not only the first"
    );
    assert_eq!(ids_of(&store, "alice").await, keys(&store, [&other.id]));
}

/// At the limit, `Refuse` creates nothing and answers `LimitReached`; expired sessions
/// and other users' sessions do not count.
pub async fn session_limit_refuses_at_the_limit<S: SessionStore>(store: S) {
    if !limited(&store, "session_limit_refuses_at_the_limit").await {
        return;
    }
    let limit = SessionLimit::new(2, LimitPolicy::Refuse);
    let mut expired = signed_in("carol", 0);
    expired.expires_at = Timestamp::now() - Duration::from_secs(1);
    let _ = store.create(&expired).await;
    store.create(&signed_in("dave", 0)).await.expect("create");
    let first = signed_in("carol", 0);
    let second = signed_in("carol", 0);
    assert_eq!(store.create_limited(&first, limit).await.expect("first"), 0);
    assert_eq!(
        store.create_limited(&second, limit).await.expect("second"),
        0
    );
    let third = signed_in("carol", 0);
    assert!(matches!(
        store.create_limited(&third, limit).await,
        Err(StoreError::LimitReached)
    ));
    assert!(store.load(&third.id).await.expect("load").is_none());
    assert_eq!(
        ids_of(&store, "carol").await,
        keys(&store, [&first.id, &second.id])
    );
    // Another user is not limited by carol's sessions.
    assert_eq!(
        store
            .create_limited(&signed_in("erin", 0), limit)
            .await
            .expect("erin"),
        0
    );
}

/// At the limit, `EvictLeastRecentlySeen` revokes the least recently seen sessions.
pub async fn session_limit_evicts_the_least_recently_seen<S: SessionStore>(store: S) {
    if !limited(&store, "session_limit_evicts_the_least_recently_seen").await {
        return;
    }
    let limit = SessionLimit::new(2, LimitPolicy::EvictLeastRecentlySeen);
    let stale = signed_in("frank", 1_000);
    let fresh = signed_in("frank", 9_000);
    store.create(&fresh).await.expect("create");
    store.create(&stale).await.expect("create");
    let new = signed_in("frank", 10_000);
    assert_eq!(
        store
            .create_limited(&new, limit)
            .await
            .expect("evicting create"),
        1
    );
    assert!(store.load(&stale.id).await.expect("load").is_none());
    assert_eq!(
        ids_of(&store, "frank").await,
        keys(&store, [&fresh.id, &new.id])
    );
    assert!(matches!(
        store.save(&stale).await,
        Err(StoreError::NotFound)
    ));
}

/// A limited create whose id is a live session's is `IdTaken` and revokes nobody: the
/// evictions belong to a create that cannot happen (a store evicted, then found the id
/// taken, and signed a device out for nothing).
pub async fn session_limit_evicts_nobody_for_a_taken_id<S: SessionStore>(store: S) {
    if !limited(&store, "session_limit_evicts_nobody_for_a_taken_id").await {
        return;
    }
    let limit = SessionLimit::new(2, LimitPolicy::EvictLeastRecentlySeen);
    let a = signed_in("gina", 1_000);
    let b = signed_in("gina", 2_000);
    let someone = signed_in("hal", 0);
    for r in [&a, &b, &someone] {
        store.create(r).await.expect("create");
    }
    let mut clash = signed_in("gina", 3_000);
    clash.id = someone.id.clone();
    assert!(matches!(
        store.create_limited(&clash, limit).await,
        Err(StoreError::IdTaken)
    ));
    assert_eq!(
        ids_of(&store, "gina").await,
        keys(&store, [&a.id, &b.id]),
        "nobody evicted for a create that did not happen"
    );
}

/// A `max` of 0, set on the public field after `SessionLimit::new`, acts as 1 under either
/// policy: an error or an eviction, never a panic (a store sliced its live list with it).
pub async fn session_limit_of_zero_acts_as_one<S: SessionStore>(store: S) {
    if !limited(&store, "session_limit_of_zero_acts_as_one").await {
        return;
    }
    let mut evict = SessionLimit::new(1, LimitPolicy::EvictLeastRecentlySeen);
    evict.max = 0;
    let first = signed_in("zoe", 1_000);
    assert_eq!(store.create_limited(&first, evict).await.expect("first"), 0);
    let second = signed_in("zoe", 2_000);
    assert_eq!(
        store.create_limited(&second, evict).await.expect("second"),
        1
    );
    assert_eq!(ids_of(&store, "zoe").await, keys(&store, [&second.id]));
    let mut refuse = SessionLimit::new(1, LimitPolicy::Refuse);
    refuse.max = 0;
    assert!(matches!(
        store.create_limited(&signed_in("zoe", 3_000), refuse).await,
        Err(StoreError::LimitReached)
    ));
    assert_eq!(ids_of(&store, "zoe").await, keys(&store, [&second.id]));
}

/// Logins arriving together never take a user past the limit, under either policy.
pub async fn concurrent_limited_creates_never_pass_the_limit<S: SessionStore>(store: S) {
    if !limited(&store, "concurrent_limited_creates_never_pass_the_limit").await {
        return;
    }
    let store = Arc::new(store);
    for (user, policy) in [
        ("grace", LimitPolicy::Refuse),
        ("heidi", LimitPolicy::EvictLeastRecentlySeen),
    ] {
        let limit = SessionLimit::new(3, policy);
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let store = store.clone();
            let r = signed_in(user, 0);
            tasks.push(tokio::spawn(async move {
                (r.id.clone(), store.create_limited(&r, limit).await)
            }));
        }
        let mut created = Vec::new();
        for t in tasks {
            match t.await.expect("task") {
                (id, Ok(_)) => created.push(id),
                (_, Err(StoreError::LimitReached)) if policy == LimitPolicy::Refuse => {}
                (_, Err(e)) => panic!("{user}: unexpected error: {e}"),
            }
        }
        let live = ids_of(&*store, user).await;
        match policy {
            LimitPolicy::Refuse => {
                assert_eq!(created.len(), 3, "{user}: exactly the limit may be created");
                assert_eq!(live, keys(&*store, &created));
            }
            _ => {
                assert_eq!(created.len(), 12, "{user}: evicting creates all succeed");
                assert_eq!(live.len(), 3, "{user}: {} live sessions", live.len());
            }
        }
    }
}
