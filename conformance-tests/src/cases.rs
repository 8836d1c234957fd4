//! The conformance cases, one public async function each. [`suite!`](crate::suite) calls
//! them; they can also be called directly.
//!
//! Time: cases use the system clock, like stores do by default. An "expired" record is
//! one whose `expires_at` is already at or before the moment it is written, which stays
//! true however slow the backend is.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{
    Capabilities, Data, Record, SessionId, SessionInfo, SessionStore, StoreError, Timestamp,
};
use serde_json::{json, Value};

const HOUR: Duration = Duration::from_secs(3600);

/// Prints a visible `n/a: case: why` line (not captured by libtest) for a case that does not
/// apply to this store's capabilities (not a missing backend).
pub fn not_applicable(case: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "n/a: {case}: {why}");
}

fn skip(case: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {case}: {why}");
}

/// A fresh live record, one hour to live, with a little data.
pub fn fresh_record() -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + HOUR);
    r.data.insert("views".into(), json!(1));
    r.data.insert("name".into(), json!("alice"));
    r
}

fn with_user(mut r: Record, user: &str) -> Record {
    r.user_id = Some(user.to_owned());
    r
}

fn expired_record(ago: Duration) -> Record {
    let now = Timestamp::now();
    Record::new(SessionId::generate(), now - HOUR, now - ago)
}

fn user_index(caps: Capabilities, case: &str) -> bool {
    if !caps.user_index {
        skip(case, "store has no user index");
    }
    caps.user_index
}

/// The live record at `id`; panics (failing the case) when it is absent or the load fails.
pub async fn must_load<S: SessionStore>(store: &S, id: &SessionId) -> Record {
    match store.load(id).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("record {id:?} should load but is absent"),
        Err(e) => panic!("load failed: {e}"),
    }
}

pub(crate) async fn ids_of<S: SessionStore>(store: &S, user: &str) -> HashSet<SessionId> {
    store
        .list_for_user(user)
        .await
        .expect("list_for_user")
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// The ids `store` lists for these sessions (hashed by a hashing store).
pub(crate) fn keys<'a, S: SessionStore + ?Sized>(
    store: &S,
    ids: impl IntoIterator<Item = &'a SessionId>,
) -> HashSet<SessionId> {
    ids.into_iter().map(|id| store.stored_id(id)).collect()
}

/// create then load returns the same record: every field, times to the millisecond.
pub async fn create_then_load_returns_every_field<S: SessionStore>(store: S) {
    let mut r = with_user(fresh_record(), "user-1");
    r.data
        .insert("nested".into(), json!({"a": [1, 2.5, "x", null, true]}));
    store.create(&r).await.expect("create");
    let back = must_load(&store, &r.id).await;
    assert_eq!(back, r);
    assert_eq!(back.version, 1);
    let plain = fresh_record();
    store.create(&plain).await.expect("create without user");
    assert_eq!(must_load(&store, &plain.id).await, plain);
}

/// Loading an unknown id returns `None` and creates nothing.
pub async fn load_of_unknown_id_is_none_and_creates_nothing<S: SessionStore>(store: S) {
    let r = fresh_record();
    assert!(store.load(&r.id).await.expect("load").is_none());
    assert!(store.load(&r.id).await.expect("load again").is_none());
    assert!(
        !store.delete(&r.id).await.expect("delete"),
        "load created a record"
    );
    assert!(!store.touch(&r.id, r.expires_at).await.expect("touch"));
    // Had load created anything, this create would be IdTaken.
    store.create(&r).await.expect("create after load");
}

/// create of a taken id is `IdTaken` and leaves the original untouched.
pub async fn create_of_taken_id_is_id_taken_and_keeps_original<S: SessionStore>(store: S) {
    let original = fresh_record();
    store.create(&original).await.expect("create");
    let mut intruder = original.clone();
    intruder.data.insert("views".into(), json!(999));
    intruder.user_id = Some("mallory".into());
    match store.create(&intruder).await {
        Err(StoreError::IdTaken) => {}
        other => panic!("expected IdTaken, got {other:?}"),
    }
    assert_eq!(must_load(&store, &original.id).await, original);
}

/// 32 concurrent creates of one id: exactly one succeeds, the rest are `IdTaken`.
pub async fn concurrent_creates_of_one_id_exactly_one_wins<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let base = fresh_record();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let mut r = base.clone();
        r.data.insert("writer".into(), json!(i));
        tasks.push(tokio::spawn(async move { (i, store.create(&r).await) }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (i, Ok(())) => winners.push(i),
            (_, Err(StoreError::IdTaken)) => {}
            (_, Err(e)) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = must_load(&*store, &base.id).await;
    assert_eq!(stored.data["writer"], json!(winners[0]));
}

/// save with the current version returns version + 1 and the new data loads.
pub async fn save_with_current_version_increments_it<S: SessionStore>(store: S) {
    let mut r = fresh_record();
    store.create(&r).await.expect("create");
    r.data.insert("views".into(), json!(2));
    r.data.remove("name");
    r.expires_at = r.expires_at + Duration::from_secs(60);
    let v = store.save(&r).await.expect("save");
    assert_eq!(v, 2);
    r.version = v;
    assert_eq!(must_load(&store, &r.id).await, r);
    r.data.insert("views".into(), json!(3));
    assert_eq!(store.save(&r).await.expect("save again"), 3);
    r.version = 3;
    assert_eq!(must_load(&store, &r.id).await, r);
}

/// save with a stale version is `Conflict` and changes nothing.
pub async fn save_with_stale_version_is_conflict<S: SessionStore>(store: S) {
    let mut r = fresh_record();
    store.create(&r).await.expect("create");
    let stale = r.clone();
    r.data.insert("views".into(), json!(2));
    r.version = store.save(&r).await.expect("save");
    let mut late = stale.clone();
    late.data.insert("views".into(), json!(100));
    late.user_id = Some("someone".into());
    match store.save(&late).await {
        Err(StoreError::Conflict) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
    let mut ahead = r.clone();
    ahead.version = r.version + 5;
    assert!(matches!(
        store.save(&ahead).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(must_load(&store, &r.id).await, r);
}

/// save after delete is `NotFound`, and the session stays deleted.
pub async fn save_after_delete_is_not_found_and_does_not_resurrect<S: SessionStore>(store: S) {
    let r = with_user(fresh_record(), "resurrect-user");
    store.create(&r).await.expect("create");
    assert!(store.delete(&r.id).await.expect("delete"));
    match store.save(&r).await {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.load(&r.id).await.expect("load").is_none());
    if store.capabilities().user_index {
        assert!(ids_of(&store, "resurrect-user").await.is_empty());
    }
    // Revocation through the user index is deletion too.
    let r2 = with_user(fresh_record(), "resurrect-user");
    store.create(&r2).await.expect("create");
    if store.capabilities().user_index {
        store
            .delete_for_user("resurrect-user", None)
            .await
            .expect("revoke");
        assert!(matches!(store.save(&r2).await, Err(StoreError::NotFound)));
        assert!(store.load(&r2.id).await.expect("load").is_none());
    }
}

/// `delete_version` is compare-and-delete: a stale version is `Conflict` and changes
/// nothing; the current one removes the record and its index entry; afterwards, and for an
/// unknown id, `NotFound`, and a `save` cannot bring it back. Of two racing at one version,
/// exactly one wins. (The middleware rotates ids with it: this is what keeps a `login` from
/// reviving a revoked session or dropping a newer write.)
pub async fn delete_version_is_compare_and_delete<S: SessionStore>(store: S) {
    let r = with_user(fresh_record(), "rotating-user");
    store.create(&r).await.expect("create");
    let current = must_load(&store, &r.id).await;
    let stale = current.version.wrapping_add(1);
    match store.delete_version(&r.id, stale).await {
        Err(StoreError::Conflict) => {}
        other => panic!("stale version: expected Conflict, got {other:?}"),
    }
    let after = must_load(&store, &r.id).await;
    // (Express stores read expiry back from a TTL: it may move by a millisecond.)
    assert_eq!(
        (&after.data, after.version, &after.user_id),
        (&current.data, current.version, &current.user_id),
        "a refused delete changes nothing"
    );
    assert!(
        after
            .expires_at
            .as_millis()
            .abs_diff(current.expires_at.as_millis())
            < 1_000
    );
    store
        .delete_version(&r.id, current.version)
        .await
        .expect("delete at the current version");
    assert!(store.load(&r.id).await.expect("load").is_none());
    if store.capabilities().user_index {
        assert!(ids_of(&store, "rotating-user").await.is_empty());
    }
    match store.delete_version(&r.id, current.version).await {
        Err(StoreError::NotFound) => {}
        other => panic!("deleted: expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.save(&current).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.load(&r.id).await.expect("load").is_none());
    match store.delete_version(&SessionId::generate(), 1).await {
        Err(StoreError::NotFound) => {}
        other => panic!("unknown id: expected NotFound, got {other:?}"),
    }
    // Two at once at the same version: one wins, the other is refused.
    let r = fresh_record();
    store.create(&r).await.expect("create");
    let v = must_load(&store, &r.id).await.version;
    let (a, b) = tokio::join!(
        store.delete_version(&r.id, v),
        store.delete_version(&r.id, v)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one wins: {a:?} {b:?}"
    );
    assert!(store.load(&r.id).await.expect("load").is_none());
}

/// save after expiry is `NotFound` (and does not bring the record back).
pub async fn save_after_expiry_is_not_found<S: SessionStore>(store: S) {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + Duration::from_millis(300));
    store.create(&r).await.expect("create");
    tokio::time::sleep(Duration::from_millis(400)).await;
    r.expires_at = Timestamp::now() + HOUR;
    match store.save(&r).await {
        Err(StoreError::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.load(&r.id).await.expect("load").is_none());
}

/// An expired record (1 ms in the past, exactly now, and after its time ran out) is never
/// returned.
pub async fn expired_record_is_never_returned<S: SessionStore>(store: S) {
    let past = expired_record(Duration::from_millis(1));
    store.create(&past).await.expect("create 1 ms past");
    assert!(store.load(&past.id).await.expect("load").is_none());

    let now = Timestamp::now();
    let exactly_now = Record::new(SessionId::generate(), now - HOUR, now);
    store
        .create(&exactly_now)
        .await
        .expect("create expiring now");
    assert!(store.load(&exactly_now.id).await.expect("load").is_none());

    let now = Timestamp::now();
    let soon = Record::new(SessionId::generate(), now, now + Duration::from_millis(250));
    store.create(&soon).await.expect("create");
    assert!(store.load(&soon.id).await.expect("load").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.load(&soon.id).await.expect("load").is_none());
}

/// touch moves `expires_at` only: data and version unchanged.
pub async fn touch_moves_expiry_only<S: SessionStore>(store: S) {
    let mut r = fresh_record();
    store.create(&r).await.expect("create");
    r.data.insert("views".into(), json!(7));
    r.version = store.save(&r).await.expect("save");
    let later = r.expires_at + HOUR;
    assert!(store.touch(&r.id, later).await.expect("touch"));
    let back = must_load(&store, &r.id).await;
    assert_eq!(back.expires_at, later);
    assert_eq!(back.version, r.version);
    assert_eq!(back.data, r.data);
    assert_eq!(back.created_at, r.created_at);
    // Moving it earlier works too (set_expiry may shorten a session).
    let earlier = Timestamp::now() + Duration::from_secs(30);
    assert!(store.touch(&r.id, earlier).await.expect("touch"));
    assert_eq!(must_load(&store, &r.id).await.expires_at, earlier);
}

/// touch of a missing or expired id is false and creates nothing.
pub async fn touch_of_missing_or_expired_is_false<S: SessionStore>(store: S) {
    let missing = SessionId::generate();
    assert!(!store
        .touch(&missing, Timestamp::now() + HOUR)
        .await
        .expect("touch"));
    assert!(store.load(&missing).await.expect("load").is_none());
    let past = expired_record(Duration::from_millis(1));
    store.create(&past).await.expect("create");
    assert!(!store
        .touch(&past.id, Timestamp::now() + HOUR)
        .await
        .expect("touch"));
    assert!(store.load(&past.id).await.expect("load").is_none());
}

/// delete is true, then false.
pub async fn delete_is_true_then_false<S: SessionStore>(store: S) {
    let r = fresh_record();
    store.create(&r).await.expect("create");
    assert!(store.delete(&r.id).await.expect("delete"));
    assert!(!store.delete(&r.id).await.expect("delete again"));
    assert!(store.load(&r.id).await.expect("load").is_none());
}

/// delete_expired removes only expired records.
pub async fn delete_expired_removes_only_expired<S: SessionStore>(store: S) {
    let live: Vec<Record> = (0..5).map(|_| fresh_record()).collect();
    let dead: Vec<Record> = (0..5)
        .map(|i| expired_record(Duration::from_millis(1 + i)))
        .collect();
    for r in live.iter().chain(&dead) {
        store.create(r).await.expect("create");
    }
    let removed = store.delete_expired().await.expect("delete_expired");
    if store.capabilities().native_expiry {
        assert!(removed <= 5, "removed {removed}");
    } else {
        assert!(removed >= 5, "removed only {removed}");
    }
    for r in &live {
        assert_eq!(must_load(&store, &r.id).await, *r);
    }
    for r in &dead {
        assert!(store.load(&r.id).await.expect("load").is_none());
    }
    // A second run finds nothing left to remove (the store is this test's alone).
    let again = store.delete_expired().await.expect("delete_expired");
    assert_eq!(again, 0, "a second cleanup removed {again} more");
    // Records that expire after they were written — the case a store with native expiry
    // must handle by itself (a TTL, a TTL index) — are gone for every method once their
    // time has passed, whatever the cleanup removes; live ones of the same user stay.
    let user = "expiring-user";
    let now = Timestamp::now();
    let short: Vec<Record> = (0..3)
        .map(|_| {
            let mut r = Record::new(SessionId::generate(), now, now + Duration::from_millis(300));
            r.user_id = Some(user.into());
            r
        })
        .collect();
    let long = with_user(fresh_record(), user);
    for r in short.iter().chain([&long]) {
        store.create(r).await.expect("create");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let removed = store.delete_expired().await.expect("delete_expired");
    assert!(removed <= 3, "removed {removed}, more than had expired");
    for r in &short {
        assert!(store.load(&r.id).await.expect("load").is_none());
        assert!(!store
            .touch(&r.id, Timestamp::now() + HOUR)
            .await
            .expect("touch"));
        assert!(matches!(store.save(r).await, Err(StoreError::NotFound)));
    }
    assert_eq!(must_load(&store, &long.id).await.data, long.data);
    if store.capabilities().user_index {
        assert_eq!(ids_of(&store, user).await, keys(&store, [&long.id]));
    }
}

/// list_for_user returns exactly that user's live sessions.
pub async fn list_for_user_returns_only_live_sessions_of_that_user<S: SessionStore>(store: S) {
    if !user_index(store.capabilities(), "list_for_user") {
        return;
    }
    let mine: Vec<Record> = (0..3).map(|_| with_user(fresh_record(), "alice")).collect();
    let theirs = with_user(fresh_record(), "bob");
    let anonymous = fresh_record();
    let mut dead = with_user(expired_record(Duration::from_millis(1)), "alice");
    dead.data.insert("dead".into(), json!(true));
    for r in mine.iter().chain([&theirs, &anonymous, &dead]) {
        store.create(r).await.expect("create");
    }
    let listed = store.list_for_user("alice").await.expect("list");
    let mut expected: Vec<SessionInfo> = mine
        .iter()
        .map(|r| {
            let mut info = SessionInfo::from(r);
            info.id = store.stored_id(&r.id);
            info
        })
        .collect();
    let mut got = listed.clone();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, expected);
    assert_eq!(ids_of(&store, "bob").await, keys(&store, [&theirs.id]));
    assert!(ids_of(&store, "nobody").await.is_empty());
    // A deleted session leaves the list.
    store.delete(&mine[0].id).await.expect("delete");
    assert_eq!(ids_of(&store, "alice").await.len(), 2);
}

/// delete_for_user removes them all; with `except`, all but exactly that one.
pub async fn delete_for_user_removes_all_or_all_but_one<S: SessionStore>(store: S) {
    if !user_index(store.capabilities(), "delete_for_user") {
        return;
    }
    let alice: Vec<Record> = (0..4).map(|_| with_user(fresh_record(), "alice")).collect();
    let bob = with_user(fresh_record(), "bob");
    for r in alice.iter().chain([&bob]) {
        store.create(r).await.expect("create");
    }
    let n = store
        .delete_for_user("alice", Some(&alice[2].id))
        .await
        .expect("delete_for_user except");
    assert_eq!(n, 3);
    assert_eq!(ids_of(&store, "alice").await, keys(&store, [&alice[2].id]));
    assert_eq!(must_load(&store, &alice[2].id).await, alice[2]);
    for r in [&alice[0], &alice[1], &alice[3]] {
        assert!(store.load(&r.id).await.expect("load").is_none());
    }
    assert_eq!(must_load(&store, &bob.id).await, bob);
    let n = store
        .delete_for_user("alice", None)
        .await
        .expect("delete_for_user");
    assert_eq!(n, 1);
    assert!(ids_of(&store, "alice").await.is_empty());
    assert!(store.load(&alice[2].id).await.expect("load").is_none());
    assert_eq!(
        store.delete_for_user("alice", None).await.expect("again"),
        0
    );
    assert_eq!(must_load(&store, &bob.id).await, bob);
}

/// Changing `user_id` on save moves the session between users (also to and from none).
pub async fn save_moving_user_id_moves_index<S: SessionStore>(store: S) {
    if !user_index(store.capabilities(), "save_moving_user_id") {
        return;
    }
    let mut r = fresh_record();
    store.create(&r).await.expect("create");
    r.user_id = Some("carol".into());
    r.version = store.save(&r).await.expect("login");
    assert_eq!(ids_of(&store, "carol").await, keys(&store, [&r.id]));
    r.user_id = Some("dave".into());
    r.version = store.save(&r).await.expect("switch");
    assert!(ids_of(&store, "carol").await.is_empty());
    assert_eq!(ids_of(&store, "dave").await, keys(&store, [&r.id]));
    assert_eq!(
        store.delete_for_user("carol", None).await.expect("revoke"),
        0
    );
    assert!(store.load(&r.id).await.expect("load").is_some());
    r.user_id = None;
    r.version = store.save(&r).await.expect("logout");
    assert!(ids_of(&store, "dave").await.is_empty());
    assert_eq!(must_load(&store, &r.id).await, r);
}

/// Randomised exponential backoff after the `streak`-th conflict in a row, as a real client
/// would do, so many writers on one key make progress on slow servers too instead of a storm
/// of retries. Scaled by how long the failed attempt took, so a slow server gets
/// proportionally more room than a fast one. `rng` is a xorshift state (never 0).
pub(crate) async fn backoff(rng: &mut u64, streak: u32, attempt: Duration) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let attempt_us = u64::try_from(attempt.as_micros()).unwrap_or(u64::MAX);
    let ceiling_us = attempt_us.clamp(200, 1 << 40) << streak.min(6);
    tokio::time::sleep(Duration::from_micros(*rng % ceiling_us)).await;
}

/// 64 tasks × 50 increments of one counter through load → modify → save, retrying on
/// `Conflict`: the final value is exactly 3,200.
pub async fn concurrent_counter_increments_are_exact<S: SessionStore>(store: S) {
    const TASKS: u64 = 64;
    const EACH: u64 = 50;
    let store = Arc::new(store);
    let mut r = fresh_record();
    r.data.insert("counter".into(), json!(0));
    store.create(&r).await.expect("create");
    let id = r.id.clone();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            let mut rng = u64::from(t as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..EACH {
                let mut streak = 0u32;
                loop {
                    let started = std::time::Instant::now();
                    let mut rec = must_load(&*store, &id).await;
                    let n = rec.data["counter"].as_u64().expect("counter is a number");
                    rec.data.insert("counter".into(), json!(n + 1));
                    match store.save(&rec).await {
                        Ok(v) => {
                            assert_eq!(v, rec.version + 1);
                            break;
                        }
                        Err(StoreError::Conflict) => {
                            conflicts += 1;
                            streak += 1;
                            backoff(&mut rng, streak, started.elapsed()).await;
                        }
                        Err(e) => panic!("save failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let done = must_load(&*store, &id).await;
    assert_eq!(done.data["counter"], json!(TASKS * EACH));
    assert_eq!(done.version, 1 + TASKS * EACH);
}

/// 1 MiB of data, 10,000 keys, unicode keys and values, nested values, `i64::MAX` and
/// non-integral floats round-trip exactly.
pub async fn large_and_exotic_data_round_trips<S: SessionStore>(store: S) {
    let mut big = fresh_record();
    big.data
        .insert("blob".into(), Value::String("x".repeat(1 << 20)));
    store.create(&big).await.expect("create 1 MiB");
    assert_eq!(must_load(&store, &big.id).await, big);

    let mut many = fresh_record();
    for i in 0..10_000 {
        many.data.insert(format!("key-{i}"), json!(i));
    }
    store.create(&many).await.expect("create 10,000 keys");
    let back = must_load(&store, &many.id).await;
    assert_eq!(back, many);

    let mut exotic = fresh_record();
    let mut data = Data::new();
    data.insert(
        "ключ 🔑".into(),
        json!("значение ✓ 日本語 \u{0} \"quoted\" \\ "),
    );
    data.insert("max".into(), json!(i64::MAX));
    data.insert("min".into(), json!(i64::MIN));
    data.insert("umax".into(), json!(u64::MAX));
    data.insert("pi".into(), json!(std::f64::consts::PI));
    data.insert("small".into(), json!(-1.5e-300));
    data.insert("half".into(), json!(0.5));
    data.insert(
        "nested".into(),
        json!({"a": {"b": {"c": [1, [2, [3, {"d": null}]]]}}, "e": []}),
    );
    data.insert("".into(), json!("empty key"));
    data.insert("$where".into(), json!({"$gt": 1}));
    data.insert("dot.ted".into(), json!(true));
    exotic.data = data;
    store.create(&exotic).await.expect("create exotic");
    let back = must_load(&store, &exotic.id).await;
    assert_eq!(back, exotic);
    assert_eq!(back.data["max"].as_i64(), Some(i64::MAX));
    assert_eq!(back.data["pi"].as_f64(), Some(std::f64::consts::PI));
}

/// Awkward user ids and ids at the edges of what `SessionId` accepts are stored and found
/// literally, and never match another key (glob and injection safety).
pub async fn awkward_user_ids_and_edge_ids_match_literally<S: SessionStore>(store: S) {
    let edge_ids = [
        "a".repeat(16),
        "-".repeat(16),
        "_".repeat(128),
        format!("{}-_", "Z9".repeat(62)),
    ];
    for raw in &edge_ids {
        let id = SessionId::parse(raw).expect("edge id is valid");
        let now = Timestamp::now();
        let mut r = Record::new(id.clone(), now, now + HOUR);
        r.data.insert("raw".into(), json!(raw));
        store.create(&r).await.expect("create edge id");
        assert_eq!(must_load(&store, &id).await, r);
    }
    // A prefix of an id is another id.
    assert!(store
        .load(&SessionId::parse(&"_".repeat(127)).expect("valid"))
        .await
        .expect("load")
        .is_none());

    if !user_index(store.capabilities(), "awkward_user_ids") {
        return;
    }
    let long: String = "ü".repeat(128); // 256 bytes, 128 characters
    let long_ascii = "u".repeat(256);
    let users = [
        "*",
        "?",
        "[a]",
        "[",
        "]",
        "'",
        "\"",
        "\\",
        "{",
        "}",
        "%",
        ":",
        "a*",
        "a?",
        "a b",
        "user:1",
        "user%",
        "'; DROP TABLE sessions; --",
        "{$ne: null}",
        "名前 ✓",
        "\\*",
        "",
        long.as_str(),
        long_ascii.as_str(),
    ];
    let mut by_user = Vec::new();
    for u in users {
        let r = with_user(fresh_record(), u);
        store.create(&r).await.expect("create with awkward user");
        by_user.push((u, r.id.clone()));
    }
    // Decoys that a glob or LIKE pattern would match.
    for decoy in ["aXb", "abc", "user:12", "user%x", "x", "a"] {
        store
            .create(&with_user(fresh_record(), decoy))
            .await
            .expect("create decoy");
    }
    for (u, id) in &by_user {
        assert_eq!(ids_of(&store, u).await, keys(&store, [id]), "user {u:?}");
    }
    // Revoking a pattern-like user removes exactly that user's session.
    assert_eq!(store.delete_for_user("*", None).await.expect("revoke *"), 1);
    assert_eq!(store.delete_for_user("%", None).await.expect("revoke %"), 1);
    assert_eq!(
        store.delete_for_user("a?", None).await.expect("revoke a?"),
        1
    );
    assert_eq!(ids_of(&store, "a*").await.len(), 1);
    assert_eq!(ids_of(&store, "abc").await.len(), 1);
    assert_eq!(ids_of(&store, "x").await.len(), 1);
}

/// Two stores on different namespaces do not see each other's sessions.
pub async fn namespaces_are_isolated<S: SessionStore>(a: S, b: S) {
    let r = with_user(fresh_record(), "shared-user");
    a.create(&r).await.expect("create in a");
    assert!(b.load(&r.id).await.expect("load in b").is_none());
    assert!(!b.delete(&r.id).await.expect("delete in b"));
    assert!(!b
        .touch(&r.id, r.expires_at + HOUR)
        .await
        .expect("touch in b"));
    assert!(matches!(b.save(&r).await, Err(StoreError::NotFound)));
    b.create(&r).await.expect("same id in b is free");
    if a.capabilities().user_index && b.capabilities().user_index {
        assert_eq!(
            b.delete_for_user("shared-user", None)
                .await
                .expect("revoke in b"),
            1
        );
        assert_eq!(ids_of(&a, "shared-user").await, keys(&a, [&r.id]));
    }
    assert_eq!(must_load(&a, &r.id).await, r);
}

/// A store pointed at a closed port answers `Backend` within 5 s for every operation; no
/// panic, no hang.
pub async fn unreachable_backend_is_a_backend_error<S: SessionStore>(store: S) {
    let r = with_user(fresh_record(), "u");
    let limit = Duration::from_secs(5);
    macro_rules! check {
        ($what:literal, $fut:expr) => {
            match tokio::time::timeout(limit, $fut).await {
                Err(_) => panic!("{} did not answer within {:?}", $what, limit),
                Ok(Err(StoreError::Backend(_))) => {}
                Ok(other) => panic!("{} should be a Backend error, got {:?}", $what, other),
            }
        };
    }
    check!("create", store.create(&r));
    check!("load", store.load(&r.id));
    check!("save", store.save(&r));
    check!("touch", store.touch(&r.id, r.expires_at));
    check!("delete", store.delete(&r.id));
    if store.capabilities().user_index {
        check!("list_for_user", store.list_for_user("u"));
        check!("delete_for_user", store.delete_for_user("u", None));
    }
}
