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
//!   subject of an indeterminate one, nor of a login answered `409` "ended by another
//!   request" (its rotation may have signed it in before a revocation of the user ended
//!   the new session), is live at the end (a server that forgot it lost
//!   acknowledged writes);
//! - **transport**: a browser (cookie, with or without an `Authorization: Basic` header)
//!   is answered in the cookie, an API client (Bearer) in `x-session-token`, never the
//!   other way;
//!
//! and what pages do with a session (issue 31), on every store with everything above on:
//!
//! - **csrf**: a browser's form post (under `CsrfLayer`) is served only with a token of
//!   the session its cookie names — never cross-site (`Sec-Fetch-Site`), never without a
//!   token, never with a token issued under an earlier id of the session (the secret
//!   changes with every id); a token of that very session is never refused, nor is a
//!   session live at the end refused as missing; a Bearer client is never refused; no two
//!   pages get the same masked token; a token that was sent is always read (never
//!   refused as missing or malformed); a refused form writes nothing (its value is never
//!   seen nor stored);
//! - **flash**: a flash message is shown at most once, only in the session it was queued
//!   in; an acknowledged one on a session live at the end was shown or is still waiting
//!   (unless a failed take of that device may have removed it);
//! - **oversize**: a request that wrote past `max_data_bytes` is refused and stored
//!   nothing: its register value is never seen nor left behind.
//!
//! and what the browser sees (issue 41): the devices' jars take every answer in the order
//! it arrives, a tab double-submits its sign-in form, tabs run across their own device's
//! logins and regenerates, and sessions stored before the size limit (`/legacy`) go on
//! being used:
//!
//! - **signed_out**: no device is signed out except by a logout, a revocation, an eviction
//!   or an expiry: an answer clears the cookie only when its own request ended the
//!   session, never because another request rotated it (a double-submitted sign-in, a
//!   request in flight across a login or `regenerate`);
//! - **stale_cookie**: no answer sets a cookie for an id that a rotation had retired
//!   before the request began;
//! - **silent_loss**: no write answered `2xx` while its changes were dropped (an answer
//!   that clears the cookie drops them): a flash, a form, a counter are kept or refused;
//! - **oversize_refused**: a session over the data limit (stored before it) is never
//!   refused a read, a shrink, a rotation, a logout or a CSRF token, only growth;
//! - **marks**: a rotation's mark holds nothing of the session (no data, user or device:
//!   holding the old id gains nothing) and no index lists it.
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

use coatcheck::store::{Record, SessionId, SessionStore, Timestamp};
use coatcheck::{LimitPolicy, SessionEvent};

use crate::history::run::{CookieOut, Event, Op};

mod browser;
mod data;
mod ending;
mod forms;

use data::{counter, register, remember};
use ending::{cap, credential, ending_events, index, lost, revoked};

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
    /// The rotations' marks still live (`coatcheck::core::keys::ROTATED_KEY`).
    pub marks: Vec<Record>,
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
    let mut marks = Vec::new();
    for id in ids {
        match settled(|| store.load(&id))
            .await
            .expect("load after quiescence")
        {
            // A rotation's mark is no session (the middleware reads it as none).
            Some(r) if coatcheck::core::keys::is_rotation_mark(&r.data) => marks.push(r),
            Some(r) => records.push(r),
            None => {}
        }
    }
    let stored_ids = records.iter().map(|r| store.stored_id(&r.id)).collect();
    Final {
        records,
        stored_ids,
        marks,
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
    // An id issued by an answer that named no lineage (a refused login's `409` still stores
    // the session it created) belongs to the lineage a request read under it without
    // being given another id. (Found under faults on the Mongo-wire server: such a
    // session's indeterminate requests went unattributed, and **lost** flagged it.)
    for e in events.iter().filter(|e| (200..300).contains(&e.status)) {
        if let (Some(l), Some(id)) = (e.lineage(), &e.sent) {
            let same = match &e.cookie {
                CookieOut::Untouched => true,
                CookieOut::Set(set) => set == id,
                CookieOut::Cleared => false,
            };
            if same {
                lineage_of_id.entry(id).or_insert(l);
            }
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
    // A login answered `409` "ended by another request" may have signed its session in
    // first: its rotation took effect, then a revocation of the user (logout everywhere on
    // another device) ended the new session before the request's own last write.
    let maybe_signed_in: BTreeSet<&str> = events
        .iter()
        .filter(|e| {
            e.op == Op::Login && e.status == 409 && e.body == "session ended by another request"
        })
        .filter_map(|e| {
            e.sent
                .as_ref()
                .and_then(|id| lineage_of_id.get(id))
                .copied()
        })
        .collect();
    lost(&by_lineage, &unknown, &maybe_signed_in, &live, &mut out);
    credential(events, &by_lineage, &mut out);
    if let Some((max, _)) = setup.limit {
        cap(&live, max, &mut out);
    }
    ending_events(setup.delivered, &live, setup.faulted, &mut out);
    let live_ids: BTreeSet<&SessionId> = live.values().flatten().map(|r| &r.id).collect();
    forms::csrf(events, &live_ids, setup.faulted, &mut out);
    forms::flash(events, &live, &mut out);
    forms::unwritten(events, &fin.records, &mut out);
    if user_index {
        index(fin, &mut out);
    }
    browser::signed_out(events, &mut out);
    browser::stale_cookie(events, &mut out);
    browser::silent_loss(events, &mut out);
    browser::oversize_refused(events, &mut out);
    browser::marks(fin, &mut out);
    out
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
            // `CsrfLayer`'s refusals (the **csrf** invariant says which were wrong).
            || (e.status == 403 && e.op == Op::Form && e.refused.is_some())
            // Growth past the data limit: a write of a session stored before the limit
            // (`/legacy`) may grow it by a byte (**oversize_refused** says which may not).
            || (e.status == 500
                && matches!(e.op, Op::Big | Op::Put | Op::Incr | Op::Form)
                && e.body == "session data too large")
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

impl Event {
    /// Answered by a store failure (`503`: not in time; `500`: failed): under faults it may
    /// or may not have taken effect.
    pub fn indeterminate(&self) -> bool {
        // The layer's own answers (a failure of its end-of-request write) have no body:
        // the recorded body is then their `SessionFailure` message.
        matches!(
            (self.status, self.body.as_str()),
            (503, "session store busy, retry") | (500, "session store unavailable")
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
    faults: &[crate::history::nemesis::Fault],
    anomalies: &[Anomaly],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    // Cargo gives a test binary its package's name when it runs it: the replay command
    // names the crate whose `tests/history.rs` ran (ours, or a store author's).
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<your crate>".into());
    // The test target: the running binary is `target/…/deps/<target>-<hash>`.
    let target = std::env::args()
        .next()
        .and_then(|bin| {
            let stem = std::path::Path::new(&bin).file_stem()?.to_str()?.to_owned();
            Some(
                stem.rsplit_once('-')
                    .map_or(stem.clone(), |(t, _)| t.to_owned()),
            )
        })
        .unwrap_or_else(|| "history".into());
    let _ = writeln!(
        s,
        "history checker: {} anomal{} on {label}, seed {seed} (replay: COATCHECK_HISTORY_SEED={seed} cargo test -p {package} --test {target} {})",
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
    use crate::history::app::Seen;

    /// The store at the end: these records under these stored ids, no index.
    fn final_of(records: Vec<(Record, SessionId)>) -> Final {
        let (records, stored_ids) = records.into_iter().unzip();
        Final {
            records,
            stored_ids,
            marks: Vec::new(),
            index: BTreeMap::new(),
            at: Timestamp::now(),
        }
    }

    /// `events` and `fin` of a history with faults show no anomaly.
    fn assert_no_anomaly_under_faults(events: &[Event], fin: &Final) {
        let setup = Setup {
            faulted: true,
            user_index: false,
            limit: None,
            delivered: &[],
            idle: Duration::from_secs(600),
        };
        let found = check(events, fin, &setup);
        assert!(
            found.is_empty(),
            "{:?}",
            found.iter().map(|a| &a.detail).collect::<Vec<_>>()
        );
    }

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
            token_id: None,
            refused: None,
        }
    }

    /// A session created by a request answered `409` (a login the cap refused still stores
    /// the session the request made) has no lineage in that answer; a later read under its
    /// id names it. Its indeterminate requests belong to it: one of them (a login) may
    /// have moved it to an id no client received, so it being gone is not **lost**.
    #[test]
    fn an_id_issued_without_a_lineage_is_attributed_by_a_later_read() {
        let id = SessionId::generate();
        let mut refused = event(
            0,
            Op::Login,
            409,
            "too many signed-in sessions; sign out on another device first",
            None,
            None,
        );
        refused.cookie = CookieOut::Set(id.clone());
        let events = vec![
            refused,
            event(1, Op::Incr, 200, "", Some(&id), Some(1)),
            event(
                2,
                Op::Login,
                503,
                "session store busy, retry",
                Some(&id),
                None,
            ),
        ];
        let fin = final_of(Vec::new());
        assert_no_anomaly_under_faults(&events, &fin);
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
        let fin = final_of(vec![(rec, id), (other, new_id)]);
        assert_no_anomaly_under_faults(&events, &fin);
    }
}
