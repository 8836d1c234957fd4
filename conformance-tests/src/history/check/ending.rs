//! The invariants on how sessions end: **revoked**, **lost**, **credential**, **cap**,
//! **events**, **index**.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use coatcheck::store::{Record, SessionId};
use coatcheck::{RevokeScope, SessionEvent};

use super::{Anomaly, Final};
use crate::history::run::{CookieOut, Event, Op};

pub(super) fn lost(
    by_lineage: &BTreeMap<&str, Vec<&Event>>,
    unknown: &BTreeMap<&str, Vec<&Event>>,
    maybe_signed_in: &BTreeSet<&str>,
    live: &HashMap<String, Vec<&Record>>,
    out: &mut Vec<Anomaly>,
) {
    for (l, evs) in by_lineage {
        if maybe_signed_in.contains(l) {
            continue;
        }
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

pub(super) fn credential(
    events: &[Event],
    by_lineage: &BTreeMap<&str, Vec<&Event>>,
    out: &mut Vec<Anomaly>,
) {
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

pub(super) fn cap(live: &HashMap<String, Vec<&Record>>, max: u32, out: &mut Vec<Anomaly>) {
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

pub(super) fn ending_events(
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

/// The user `l` certainly had while `x` ran: an acknowledged login as that user completed
/// before `x` began, and no acknowledged login as someone else could have come after it.
pub(super) fn principal_during(evs: &[&Event], x: &Event) -> Option<String> {
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
pub(super) fn rotated_during(by_lineage: &BTreeMap<&str, Vec<&Event>>, l: &str, x: &Event) -> bool {
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

pub(super) fn revoked(
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

pub(super) fn index(fin: &Final, out: &mut Vec<Anomaly>) {
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
