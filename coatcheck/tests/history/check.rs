//! The checker: after quiescence, the final state of the store and the recorded history must
//! satisfy the invariants below. Each violation is an [`Anomaly`] naming the requests that
//! show it, in the manner of Jepsen's Elle: the invariant, the witnesses, the sub-history.
//!
//! - **counter**: for each session (lineage), every acknowledged `update` increment is in the
//!   final counter exactly once, and the values `update` answered are distinct (each one was
//!   committed);
//! - **register**: the final value of a key is one written by an acknowledged write that no
//!   other acknowledged write of that session followed in real time (no lost write);
//! - **revoked**: no request that began after an acknowledged `destroy`, `logout_everywhere`
//!   `logout_other_devices` or `revoke_device` covering a session completed reads or writes
//!   it, and it is not live at the end (under any id);
//! - **duplicate**: a session lives under one id at most (no orphan left by a rotation);
//! - **index**: each user's index lists exactly the live sessions with that principal;
//! - **status**: no panic, and no error but the documented ones: `503` (store timeout,
//!   conflicts exhausted) and `409` (the session was ended by another request meanwhile;
//!   for a login, also the session cap's refusal);
//!
//! and, with every feature on at once (issue 25):
//!
//! - **credential**: no request that began after an acknowledged change of user `u`'s
//!   credentials completed is served signed in as `u` on a session whose every stamping
//!   (a login as `u`, or its own re-stamp by `credentials_changed`) completed before that
//!   change began;
//! - **cap**: at quiescence, no user has more live signed-in sessions than
//!   `max_sessions_per_user` (an eviction without its login is caught by **events** and by
//!   **revoked**/**counter** on the evicted device's next requests);
//! - **remember**: a live session's "remember me" is what one of its last acknowledged
//!   ticks or unticks (in real time) chose, and an unticked session expires within the
//!   short idle timeout of the end of the history (a stale request never writes the long
//!   expiry back);
//! - **events**: no event that ends a session (destroyed, one device revoked, credentials
//!   changed) names a device whose session is live at the end, and no session's
//!   credential change is announced twice;
//! - **lost**: a session nobody ever signed in to (only its own `destroy` or
//!   `logout_everywhere` can end it), that acknowledged a request and was never the
//!   subject of an indeterminate one, is live at the end (a server that forgot it lost
//!   acknowledged writes);
//! - **transport**: a browser (cookie, with or without an `Authorization: Basic` header)
//!   is answered in the cookie, an API client (Bearer) in `x-session-token`, never the
//!   other way.
//!
//! Under faults (issue 26), a request answered `503` (the store did not answer in time) or
//! `500` (the store failed: a killed connection, a restarting server) is **indeterminate**,
//! Jepsen's `:info`: it may or may not have taken effect, even after it answered (a
//! command a paused server still holds runs when it wakes). The invariants allow exactly
//! that and nothing more:
//!
//! - **counter**: the final counter lies between the acknowledged increments and the
//!   acknowledged plus the indeterminate ones (an indeterminate request is attributed to a
//!   session by the id its cookie carried);
//! - **register**, **remember**: the final value may also be one an indeterminate write
//!   wrote, if no acknowledged write followed it in real time (saves are compare-and-set,
//!   so a late write cannot land after one that moved the version);
//! - **revoked**, **index**, **cap**, **credential** are unchanged: an acknowledged
//!   revocation is never undone, no acknowledged write is lost, the index is exact at
//!   quiescence;
//! - a rotation caught by a fault may leave its new record behind under an id no client
//!   ever received (its clean-up failed too): such an orphan is unreachable, so
//!   **duplicate**, **revoked** (live at the end) and **events** ignore it (and its own
//!   credential-change announcement is allowed), while the index must still list it
//!   exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::Duration;

use coatcheck::{
    LimitPolicy, Record, RevokeScope, SessionEvent, SessionId, SessionStore, Timestamp,
};

use crate::run::{CookieOut, Event, Op};

#[derive(Debug)]
pub struct Anomaly {
    pub kind: &'static str,
    pub detail: String,
    pub lineage: Option<String>,
    /// The requests that witness it.
    pub witnesses: Vec<usize>,
}

/// The store after quiescence: every live record reachable from an id the history saw or
/// an index lists, and each user's index.
pub struct Final {
    pub records: Vec<Record>,
    /// Each record's id as the store keeps and lists it (hashed by `HashedIds`).
    pub stored_ids: Vec<SessionId>,
    pub index: BTreeMap<String, BTreeSet<SessionId>>,
    /// When the history was over (the application's clock).
    pub at: Timestamp,
}

pub async fn final_state(
    store: &dyn SessionStore,
    events: &[Event],
    users: &[String],
    user_index: bool,
) -> Final {
    let at = Timestamp::now();
    let mut ids: BTreeSet<SessionId> = BTreeSet::new();
    for e in events {
        ids.extend(e.sent.clone());
        if let CookieOut::Set(id) = &e.cookie {
            ids.insert(id.clone());
        }
    }
    let mut index = BTreeMap::new();
    if user_index {
        for u in users {
            let listed: BTreeSet<SessionId> = settled(|| store.list_for_user(u))
                .await
                .expect("list_for_user after quiescence")
                .into_iter()
                .map(|i| i.id)
                .collect();
            ids.extend(listed.iter().cloned());
            index.insert(u.clone(), listed);
        }
    }
    let mut records = Vec::new();
    for id in ids {
        if let Some(r) = settled(|| store.load(&id))
            .await
            .expect("load after quiescence")
        {
            records.push(r);
        }
    }
    let stored_ids = records.iter().map(|r| store.stored_id(&r.id)).collect();
    Final {
        records,
        stored_ids,
        index,
        at,
    }
}

/// A store call after quiescence, retried for a while: after a fault the client may need a
/// try or two to reconnect.
async fn settled<T, F, Fut>(call: F) -> Result<T, coatcheck::StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, coatcheck::StoreError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(coatcheck::StoreError::Backend(_)) if tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

fn lineage_of(r: &Record) -> Option<String> {
    r.data
        .get("lineage")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// What a history turned on, for the invariants that depend on it.
pub struct Setup<'a> {
    /// Faults were injected: indeterminate requests and orphans are allowed.
    pub faulted: bool,
    pub user_index: bool,
    /// The session cap in force (only where the store enforces it).
    pub limit: Option<(u32, LimitPolicy)>,
    /// Every lifecycle event the layer delivered.
    pub delivered: &'a [SessionEvent],
    /// The idle timeout of a session that is not remembered.
    pub idle: Duration,
}

pub fn check(events: &[Event], fin: &Final, setup: &Setup<'_>) -> Vec<Anomaly> {
    let user_index = setup.user_index;
    let mut out = Vec::new();
    status(events, setup.faulted, &mut out);
    // Under faults, records under an id no client ever held are orphans (see above).
    let delivered: BTreeSet<&SessionId> = events
        .iter()
        .flat_map(|e| {
            let set = match &e.cookie {
                CookieOut::Set(id) => Some(id),
                _ => None,
            };
            e.sent.iter().chain(set)
        })
        .collect();
    let reachable = |r: &Record, stored: &SessionId| {
        !setup.faulted || delivered.contains(&r.id) || delivered.contains(stored)
    };
    let mut live: HashMap<String, Vec<&Record>> = HashMap::new();
    for (r, _) in fin
        .records
        .iter()
        .zip(&fin.stored_ids)
        .filter(|(r, stored)| reachable(r, stored))
    {
        live.entry(lineage_of(r).unwrap_or_default())
            .or_default()
            .push(r);
    }
    for (l, rs) in &live {
        if rs.len() > 1 {
            out.push(Anomaly {
                kind: "duplicate",
                detail: format!("session {l} is live under {} ids", rs.len()),
                lineage: Some(l.clone()),
                witnesses: Vec::new(),
            });
        }
    }
    let mut by_lineage: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        if let Some(l) = e.lineage() {
            by_lineage.entry(l).or_default().push(e);
        }
    }
    // Indeterminate requests, by the session their cookie named: an id belongs to the
    // lineage of the answer that issued it (a request that found its cookie's session gone
    // answers another lineage, under another id).
    let mut lineage_of_id: HashMap<&SessionId, &str> = HashMap::new();
    for e in events {
        if let (Some(l), CookieOut::Set(id)) = (e.lineage(), &e.cookie) {
            lineage_of_id.insert(id, l);
        }
    }
    let mut unknown: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.indeterminate()) {
        if let Some(l) = e.sent.as_ref().and_then(|id| lineage_of_id.get(id)) {
            unknown.entry(l).or_default().push(e);
        }
    }
    for (l, evs) in &by_lineage {
        let rec = live.get(*l).and_then(|rs| rs.first().copied());
        let maybe = unknown.get(*l).map(Vec::as_slice).unwrap_or_default();
        counter(l, evs, maybe, rec, &mut out);
        register(l, evs, maybe, rec, &mut out);
        remember(l, evs, maybe, rec, fin.at, setup.idle, &mut out);
    }
    revoked(events, &by_lineage, &live, &mut out);
    lost(&by_lineage, &unknown, &live, &mut out);
    credential(events, &by_lineage, &mut out);
    if let Some((max, _)) = setup.limit {
        cap(&live, max, &mut out);
    }
    ending_events(setup.delivered, &live, setup.faulted, &mut out);
    if user_index {
        index(fin, &mut out);
    }
    out
}

fn lost(
    by_lineage: &BTreeMap<&str, Vec<&Event>>,
    unknown: &BTreeMap<&str, Vec<&Event>>,
    live: &HashMap<String, Vec<&Record>>,
    out: &mut Vec<Anomaly>,
) {
    for (l, evs) in by_lineage {
        let anonymous = evs
            .iter()
            .all(|e| e.op != Op::Login && e.seen.as_ref().is_none_or(|s| s.user.is_none()));
        let ended = evs
            .iter()
            .any(|e| matches!(e.op, Op::Destroy | Op::LogoutEverywhere));
        let acked = evs.iter().any(|e| e.acked());
        if !anonymous || ended || !acked || unknown.contains_key(l) || live.contains_key(*l) {
            continue;
        }
        // A request that found it gone cleared the cookie, or answered another lineage.
        out.push(Anomaly {
            kind: "lost",
            detail: format!(
                "{l} was never signed in, never destroyed and acknowledged its requests, yet it is gone at the end"
            ),
            lineage: Some((*l).to_owned()),
            witnesses: evs.iter().filter(|e| e.acked()).map(|e| e.index).collect(),
        });
    }
}

fn credential(events: &[Event], by_lineage: &BTreeMap<&str, Vec<&Event>>, out: &mut Vec<Anomaly>) {
    let changes: Vec<&Event> = events
        .iter()
        .filter(|e| e.op == Op::Password && e.acked())
        .collect();
    for x in events.iter().filter(|e| (200..300).contains(&e.status)) {
        let Some(seen) = &x.seen else { continue };
        let (Some(u), Some(l)) = (seen.user.as_deref(), seen.lineage.as_deref()) else {
            continue;
        };
        let evs = by_lineage.get(l).map(Vec::as_slice).unwrap_or_default();
        for p in changes
            .iter()
            .filter(|p| p.arg == u && p.completed < x.invoked)
        {
            let stamped = evs.iter().any(|s| {
                let stamps = (s.op == Op::Login && s.arg == u)
                    || (s.op == Op::Password
                        && s.arg == u
                        && s.seen.as_ref().is_some_and(|k| k.restamped));
                stamps && s.completed > p.invoked && s.invoked < x.completed
            });
            if !stamped {
                out.push(Anomaly {
                    kind: "credential",
                    detail: format!(
                        "{l} was served as signed in as {u} after #{} changed {u}'s credentials, but it was never stamped since",
                        p.index
                    ),
                    lineage: Some(l.to_owned()),
                    witnesses: vec![p.index, x.index],
                });
                break;
            }
        }
    }
}

fn cap(live: &HashMap<String, Vec<&Record>>, max: u32, out: &mut Vec<Anomaly>) {
    let mut per_user: BTreeMap<&str, usize> = BTreeMap::new();
    for r in live.values().flatten() {
        if let Some(u) = r.user_id.as_deref() {
            *per_user.entry(u).or_default() += 1;
        }
    }
    for (u, n) in per_user {
        if n > max as usize {
            out.push(Anomaly {
                kind: "cap",
                detail: format!("user {u} has {n} live sessions at the end, over the cap of {max}"),
                lineage: None,
                witnesses: Vec::new(),
            });
        }
    }
}

fn remember(
    l: &str,
    evs: &[&Event],
    unknown: &[&Event],
    rec: Option<&Record>,
    end: Timestamp,
    idle: Duration,
    out: &mut Vec<Anomaly>,
) {
    let Some(rec) = rec else { return };
    let stored = rec.data.get(coatcheck::REMEMBER_ME_KEY) == Some(&serde_json::Value::Bool(true));
    let writes: Vec<&Event> = evs
        .iter()
        .copied()
        .filter(|e| e.op == Op::Remember && e.acked())
        .collect();
    // A later tick or untick may have been a no-op: any indeterminate one may land last.
    let maximal = last_writes(
        &writes,
        unknown.iter().copied().filter(|w| w.op == Op::Remember),
    );
    // With no acknowledged choice, the session may still be as it was created.
    if !writes.is_empty() && !maximal.iter().any(|w| (w.arg == "true") == stored) {
        out.push(Anomaly {
            kind: "remember",
            detail: format!(
                "{l}: remember-me is {stored} at the end, but the last acknowledged choices were {:?}",
                maximal.iter().map(|w| w.arg.as_str()).collect::<Vec<_>>()
            ),
            lineage: Some(l.to_owned()),
            witnesses: maximal.iter().map(|w| w.index).collect(),
        });
    }
    let bound = end + idle + Duration::from_secs(5);
    if !stored && rec.expires_at > bound {
        out.push(Anomaly {
            kind: "remember",
            detail: format!(
                "{l}: not remembered, yet it expires {} s after the end of the history (idle timeout {} s)",
                (rec.expires_at.as_millis() - end.as_millis()) / 1000,
                idle.as_secs()
            ),
            lineage: Some(l.to_owned()),
            witnesses: evs
                .iter()
                .filter(|e| e.op == Op::Remember)
                .map(|e| e.index)
                .collect(),
        });
    }
}

fn ending_events(
    delivered: &[SessionEvent],
    live: &HashMap<String, Vec<&Record>>,
    faulted: bool,
    out: &mut Vec<Anomaly>,
) {
    let live: BTreeMap<&str, &str> = live
        .iter()
        .flat_map(|(l, rs)| {
            rs.iter()
                .filter_map(move |r| r.device.as_ref().map(|d| (d.handle.as_str(), l.as_str())))
        })
        .collect();
    let mut changed: BTreeMap<&str, usize> = BTreeMap::new();
    for e in delivered {
        let (what, handle) = match e {
            SessionEvent::Destroyed {
                handle: Some(h), ..
            } => ("destroyed", h),
            SessionEvent::Revoked {
                scope: RevokeScope::Device(h),
                ..
            } => ("revoked", h),
            SessionEvent::CredentialsChanged {
                handle: Some(h), ..
            } => {
                *changed.entry(h.as_str()).or_default() += 1;
                ("credentials changed", h)
            }
            _ => continue,
        };
        if let Some(l) = live.get(handle.as_str()) {
            out.push(Anomaly {
                kind: "events",
                detail: format!(
                    "an event says device {handle} was {what}, yet its session ({l}) is live at the end"
                ),
                lineage: Some((*l).to_owned()),
                witnesses: Vec::new(),
            });
        }
    }
    // Under faults a failed rotation's orphan is a second record of the same device, and
    // ending it is a second announcement: only a history without faults is held to one.
    for (h, n) in changed {
        if n > 1 && !faulted {
            out.push(Anomaly {
                kind: "events",
                detail: format!("device {h}'s credential change was announced {n} times"),
                lineage: None,
                witnesses: Vec::new(),
            });
        }
    }
}

fn status(events: &[Event], faulted: bool, out: &mut Vec<Anomaly>) {
    for e in events {
        if faulted && e.indeterminate() {
            continue;
        }
        // 409: the session was ended by another request meanwhile (nothing written).
        let ok = ((200..300).contains(&e.status) && !e.body.starts_with("transport crossed"))
            || (e.status == 503 && e.body == "session store busy, retry")
            || (e.status == 409 && e.body == "session ended by another request")
            || (e.status == 409
                && e.op == Op::Login
                && e.body == "too many signed-in sessions; sign out on another device first");
        if !ok {
            out.push(Anomaly {
                kind: "status",
                detail: format!("{} answered {} {:?}", e.op_name(), e.status, e.body),
                lineage: e.lineage().map(str::to_owned),
                witnesses: vec![e.index],
            });
        }
    }
}

fn counter(
    l: &str,
    evs: &[&Event],
    unknown: &[&Event],
    rec: Option<&Record>,
    out: &mut Vec<Anomaly>,
) {
    let incrs: Vec<&&Event> = evs
        .iter()
        .filter(|e| e.op == Op::Incr && (200..300).contains(&e.status))
        .collect();
    let acked: Vec<&&Event> = incrs.iter().copied().filter(|e| e.acked()).collect();
    let maybe = incrs.len() - acked.len() + unknown.iter().filter(|e| e.op == Op::Incr).count();
    let mut values: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for e in &acked {
        if let Some(n) = e.seen.as_ref().and_then(|s| s.n) {
            values.entry(n).or_default().push(e.index);
        }
    }
    for (n, who) in &values {
        if who.len() > 1 {
            out.push(Anomaly {
                kind: "counter",
                detail: format!(
                    "{} acknowledged increments of {l} all answered {n}: `update` returned a value that was not committed",
                    who.len()
                ),
                lineage: Some(l.to_owned()),
                witnesses: who.clone(),
            });
        }
    }
    let Some(rec) = rec else { return };
    let stored = rec.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
    let lo = acked.len() as u64;
    let hi = lo + maybe as u64;
    if stored < lo || stored > hi {
        out.push(Anomaly {
            kind: "counter",
            detail: format!(
                "{l}: final counter {stored}, but {lo} increments were acknowledged ({maybe} more answered with a cleared cookie or were indeterminate)"
            ),
            lineage: Some(l.to_owned()),
            witnesses: acked.iter().map(|e| e.index).collect(),
        });
    }
    if let Some((&max, who)) = values.iter().next_back() {
        if max > stored {
            out.push(Anomaly {
                kind: "counter",
                detail: format!("{l}: `update` answered {max}, the final counter is {stored}"),
                lineage: Some(l.to_owned()),
                witnesses: who.clone(),
            });
        }
    }
}

/// The writes that may have landed last: the acknowledged ones no other acknowledged write
/// followed in real time, and the indeterminate `candidates`.
fn last_writes<'a>(
    acked: &[&'a Event],
    candidates: impl Iterator<Item = &'a Event>,
) -> Vec<&'a Event> {
    acked
        .iter()
        .copied()
        .filter(|w| !acked.iter().any(|o| o.invoked > w.completed))
        .chain(candidates)
        .collect()
}

/// Whether the indeterminate write `w` of `reg` may be the last one to land: it may land any
/// time after it was sent — even after later requests completed (a paused server runs it
/// when it wakes) — but saves are compare-and-set on a version read before `w` completed,
/// so never after a later acknowledged request that wrote the session. It may land before
/// such a request, though, which then keeps `reg` unless it wrote `reg` itself: only a
/// later acknowledged `put` (which always writes it) rules `w` out; a later `remove` may
/// have found nothing to remove and written nothing. (Found by the checker under pauses
/// of the Redis and Mongo-wire servers.)
fn may_land_last(w: &Event, evs: &[&Event]) -> bool {
    !evs.iter()
        .any(|o| o.op == Op::Put && o.acked() && o.invoked > w.completed)
}

fn register(
    l: &str,
    evs: &[&Event],
    unknown: &[&Event],
    rec: Option<&Record>,
    out: &mut Vec<Anomaly>,
) {
    let Some(rec) = rec else { return };
    let is_write = |e: &&Event| matches!(e.op, Op::Put | Op::Remove);
    let writes: Vec<&Event> = evs
        .iter()
        .copied()
        .filter(|e| is_write(e) && e.acked())
        .collect();
    let value = |e: &Event| (e.op == Op::Put).then(|| e.arg.clone());
    let maximal = last_writes(
        &writes,
        unknown
            .iter()
            .copied()
            .filter(|w| is_write(w) && may_land_last(w, evs)),
    );
    let stored = rec
        .data
        .get("reg")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if writes.is_empty() {
        return;
    }
    if !maximal.iter().any(|w| value(w) == stored) {
        out.push(Anomaly {
            kind: "register",
            detail: format!(
                "{l}: final `reg` is {stored:?}, but the last acknowledged writes wrote {:?}: an acknowledged write was lost",
                maximal.iter().map(|w| value(w)).collect::<Vec<_>>()
            ),
            lineage: Some(l.to_owned()),
            witnesses: maximal.iter().map(|w| w.index).collect(),
        });
    }
}

/// The user `l` certainly had while `x` ran: an acknowledged login as that user completed
/// before `x` began, and no acknowledged login as someone else could have come after it.
fn principal_during(evs: &[&Event], x: &Event) -> Option<String> {
    let logins: Vec<&&Event> = evs
        .iter()
        .filter(|e| e.op == Op::Login && e.acked())
        .collect();
    let last = logins
        .iter()
        .filter(|e| e.completed < x.invoked)
        .max_by_key(|e| e.completed)?;
    let moved = logins
        .iter()
        .any(|o| o.arg != last.arg && o.completed > last.completed && o.invoked < x.completed);
    (!moved).then(|| last.arg.clone())
}

/// Whether another request rotated (`login`, `regenerate`, a re-stamp after a password
/// change) session `l` while `x` ran.
fn rotated_during(by_lineage: &BTreeMap<&str, Vec<&Event>>, l: &str, x: &Event) -> bool {
    by_lineage.get(l).is_some_and(|evs| {
        evs.iter().any(|r| {
            (matches!(r.op, Op::Regenerate | Op::Login)
                || (r.op == Op::Password && r.seen.as_ref().is_some_and(|s| s.restamped)))
                && r.index != x.index
                && (200..300).contains(&r.status)
                && r.invoked < x.completed
                && r.completed > x.invoked
        })
    })
}

fn revoked(
    events: &[Event],
    by_lineage: &BTreeMap<&str, Vec<&Event>>,
    live: &HashMap<String, Vec<&Record>>,
    out: &mut Vec<Anomaly>,
) {
    // lineage -> (completion of the earliest acknowledged revocation covering it, by whom)
    let mut covered: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    let mut cover = |l: &str, x: &Event| {
        let l = by_lineage.get_key_value(l).map(|(k, _)| *k);
        if let Some(l) = l {
            let e = covered.entry(l).or_insert((x.completed, x.index));
            if x.completed < e.0 {
                *e = (x.completed, x.index);
            }
        }
    };
    // Device handle -> the lineage it names (a handle belongs to one session for good).
    let handles: HashMap<&str, &str> = events
        .iter()
        .filter_map(|e| e.seen.as_ref())
        .filter_map(|s| Some((s.handle.as_deref()?, s.lineage.as_deref()?)))
        .collect();
    for x in events
        .iter()
        .filter(|e| e.acked() || e.cookie == CookieOut::Cleared)
    {
        if !(200..300).contains(&x.status) {
            continue;
        }
        let Some(seen) = &x.seen else { continue };
        let own = seen.lineage.as_deref();
        match (x.op, &seen.user) {
            (Op::Destroy, _) | (Op::LogoutEverywhere, None) => {
                // A destroy removes the id its request loaded. If another tab rotated the
                // session meanwhile, that id was already dead and the session lives on
                // under its new id: not a revocation of it.
                let Some(l) = own else { continue };
                if !rotated_during(by_lineage, l, x) {
                    cover(l, x);
                }
            }
            // A revocation that removed a live session of the user's device removed every
            // id of that device at that moment (a rotation in flight then fails): the
            // lineage is over — unless a login as another user overlapped it, which may
            // have moved the session away first (the revoke then removed only a doomed
            // in-flight rotation's id of the old user, and answered 1; found by the
            // exploration, seed 61 of the README's command).
            (Op::RevokeDevice, Some(u)) if seen.count == Some(1) => {
                let l = seen.revoked.as_deref().and_then(|h| handles.get(h));
                if let Some((l, evs)) = l.and_then(|l| by_lineage.get_key_value(*l)) {
                    if principal_during(evs, x).as_deref() == Some(u.as_str()) {
                        cover(l, x);
                    }
                }
            }
            (Op::LogoutEverywhere, Some(u)) | (Op::LogoutOthers, Some(u)) => {
                for (l, evs) in by_lineage {
                    if x.op == Op::LogoutOthers && Some(*l) == own {
                        continue;
                    }
                    // Its own session, unless another tab rotated it meanwhile (maybe to
                    // another user: then the principal rule below decides).
                    let mine = x.op == Op::LogoutEverywhere
                        && Some(*l) == own
                        && !rotated_during(by_lineage, l, x);
                    if mine || principal_during(evs, x).as_deref() == Some(u.as_str()) {
                        cover(l, x);
                    }
                }
            }
            _ => {}
        }
    }
    for (l, (t, by)) in covered {
        let after: Vec<usize> = by_lineage[l]
            .iter()
            .filter(|e| e.invoked > t && (200..300).contains(&e.status))
            .map(|e| e.index)
            .collect();
        if !after.is_empty() {
            out.push(Anomaly {
                kind: "revoked",
                detail: format!(
                    "{l} was revoked by #{by} (done at {t}µs), yet requests that began later saw it"
                ),
                lineage: Some(l.to_owned()),
                witnesses: std::iter::once(by).chain(after).collect(),
            });
        }
        if live.contains_key(l) {
            out.push(Anomaly {
                kind: "revoked",
                detail: format!(
                    "{l} was revoked by #{by} (done at {t}µs), yet it is live at the end"
                ),
                lineage: Some(l.to_owned()),
                witnesses: vec![by],
            });
        }
    }
}

fn index(fin: &Final, out: &mut Vec<Anomaly>) {
    for (user, listed) in &fin.index {
        let live: BTreeSet<SessionId> = fin
            .records
            .iter()
            .zip(&fin.stored_ids)
            .filter(|(r, _)| r.user_id.as_deref() == Some(user.as_str()))
            .map(|(_, stored)| stored.clone())
            .collect();
        if &live != listed {
            let missing: Vec<String> = live
                .difference(listed)
                .map(|id| id.short_hash().to_string())
                .collect();
            let extra: Vec<String> = listed
                .difference(&live)
                .map(|id| id.short_hash().to_string())
                .collect();
            out.push(Anomaly {
                kind: "index",
                detail: format!(
                    "user {user}: live sessions missing from the index {missing:?}, listed but not live with that user {extra:?}"
                ),
                lineage: None,
                witnesses: Vec::new(),
            });
        }
    }
}

impl Event {
    /// Answered by a store failure (`503`: not in time; `500`: failed): under faults it may
    /// or may not have taken effect.
    pub fn indeterminate(&self) -> bool {
        // The layer answers a failure of its end-of-request write with the status alone;
        // a handler's own error says what failed.
        matches!(
            (self.status, self.body.as_str()),
            (503, "" | "session store busy, retry") | (500, "" | "session store unavailable")
        )
    }

    pub fn op_name(&self) -> String {
        format!("#{} {:?}", self.index, self.op)
    }
}

/// The anomalies with the part of the history that shows each: the witnesses and every
/// request on the same session.
pub fn report(
    label: &str,
    seed: u64,
    events: &[Event],
    faults: &[crate::nemesis::Fault],
    anomalies: &[Anomaly],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "history checker: {} anomal{} on {label}, seed {seed} (replay: COATCHECK_HISTORY_SEED={seed} cargo test -p coatcheck --all-features --test history {})",
        anomalies.len(),
        if anomalies.len() == 1 { "y" } else { "ies" },
        label
    );
    if !faults.is_empty() {
        let _ = writeln!(s, "\nthe faults injected:");
        for f in faults {
            let _ = writeln!(s, "   {f}");
        }
    }
    if std::env::var("COATCHECK_HISTORY_DUMP").is_ok_and(|v| v == "1") {
        let _ = writeln!(s, "\nthe whole history:");
        for e in events {
            let _ = writeln!(s, "   {e}");
        }
    }
    for a in anomalies.iter().take(6) {
        let _ = writeln!(s, "\n[{}] {}", a.kind, a.detail);
        // The session's requests, and every other request of the devices that held it
        // (failed ones say no session; others may show where it went).
        let devices: BTreeSet<usize> = events
            .iter()
            .filter(|e| a.lineage.is_some() && e.lineage() == a.lineage.as_deref())
            .map(|e| e.device)
            .collect();
        let shown: Vec<&Event> = events
            .iter()
            .filter(|e| {
                a.witnesses.contains(&e.index)
                    || (a.lineage.is_some() && e.lineage() == a.lineage.as_deref())
                    || devices.contains(&e.device)
            })
            .collect();
        for e in shown.iter().take(100) {
            let mark = if a.witnesses.contains(&e.index) {
                "*"
            } else {
                " "
            };
            let _ = writeln!(s, " {mark} {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Seen;

    fn event(
        index: usize,
        op: Op,
        status: u16,
        body: &str,
        sent: Option<&SessionId>,
        n: Option<u64>,
    ) -> Event {
        let seen = (status == 200).then(|| Seen {
            lineage: Some("L8".into()),
            n,
            ..Seen::default()
        });
        Event {
            index,
            instance: 0,
            device: 3,
            tab: 0,
            op,
            arg: String::new(),
            invoked: index as u64 * 10,
            completed: index as u64 * 10 + 5,
            sent: sent.cloned(),
            status,
            body: body.into(),
            seen,
            cookie: CookieOut::Untouched,
        }
    }

    /// An increment answered `503` under faults may have happened: the final counter may
    /// exceed the acknowledged ones by it, attributed by the id the request's cookie named.
    #[test]
    fn an_indeterminate_increment_is_attributed_by_its_cookie() {
        let id = SessionId::generate();
        let mut rec = Record::new(id.clone(), Timestamp::now(), Timestamp::now());
        rec.data.insert("lineage".into(), "L8".into());
        rec.data.insert("n".into(), 2.into());
        let mut first = event(0, Op::Incr, 200, "", None, Some(1));
        first.cookie = CookieOut::Set(id.clone());
        // The same cookie, after its session was found gone: another lineage, another id.
        let mut lost = event(2, Op::Read, 200, "", Some(&id), None);
        if let Some(seen) = lost.seen.as_mut() {
            seen.lineage = Some("L9".into());
        }
        let new_id = SessionId::generate();
        lost.cookie = CookieOut::Set(new_id.clone());
        let mut other = Record::new(new_id.clone(), Timestamp::now(), Timestamp::now());
        other.data.insert("lineage".into(), "L9".into());
        let events = vec![
            first,
            event(
                1,
                Op::Incr,
                503,
                "session store busy, retry",
                Some(&id),
                None,
            ),
            lost,
        ];
        let fin = Final {
            records: vec![rec, other],
            stored_ids: vec![id, new_id],
            index: BTreeMap::new(),
            at: Timestamp::now(),
        };
        let setup = Setup {
            faulted: true,
            user_index: false,
            limit: None,
            delivered: &[],
            idle: Duration::from_secs(600),
        };
        let found = check(&events, &fin, &setup);
        assert!(
            found.is_empty(),
            "{:?}",
            found.iter().map(|a| &a.detail).collect::<Vec<_>>()
        );
    }
}
