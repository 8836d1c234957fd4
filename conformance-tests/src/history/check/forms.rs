//! The invariants of what pages do with a session (issue 31): **csrf**, **flash**,
//! **oversize**.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use coatcheck::core::keys::FLASH_KEY;
use coatcheck::store::{Record, SessionId};
use coatcheck::MAX_PENDING_FLASHES;

use super::Anomaly;
use crate::history::run::{client, Client, Event, Op};

fn anomaly(kind: &'static str, detail: String, e: &Event, more: &[usize]) -> Anomaly {
    Anomaly {
        kind,
        detail,
        lineage: e.lineage().map(str::to_owned),
        witnesses: std::iter::once(e.index)
            .chain(more.iter().copied())
            .collect(),
    }
}

/// **csrf**: a browser's form is served only with a token of the session its cookie named
/// (never cross-site, never without a token, never with a token issued under another id:
/// the secret changes whenever the id does); a token of that very session is never
/// refused as wrong, nor is a session that is live at the end refused as missing; an API
/// client (Bearer) is never refused; and no two pages got the same masked token.
///
/// Under a failover (`faulted`), a form may be refused for want of a session that is live
/// at the end: a read during the failover can miss a live key (Redis replication is not
/// consensus; found on `failover_valkey_every_write`, seed 20261133, once in four CI runs,
/// not reproduced in three replays). The refusal fails closed (nothing is written), so it
/// is allowed there, and only there.
pub(super) fn csrf(
    events: &[Event],
    live_ids: &BTreeSet<&SessionId>,
    faulted: bool,
    out: &mut Vec<Anomaly>,
) {
    let mut tokens: HashMap<&str, usize> = HashMap::new();
    for e in events {
        let Some(t) = e.seen.as_ref().and_then(|s| s.csrf.as_deref()) else {
            continue;
        };
        if let Some(first) = tokens.insert(t, e.index) {
            out.push(anomaly(
                "csrf",
                format!(
                    "#{first} and #{} were handed the same masked token",
                    e.index
                ),
                e,
                &[first],
            ));
        }
    }
    for e in events.iter().filter(|e| e.op == Op::Form) {
        let served = (200..300).contains(&e.status);
        if client(e.device) == Client::Api {
            if e.status == 403 {
                out.push(anomaly(
                    "csrf",
                    format!("an API client's form was refused ({:?})", e.refused),
                    e,
                    &[],
                ));
            }
            continue;
        }
        let same = e.token_id.is_some() && e.token_id == e.sent;
        let wrong = match (served, e.refused) {
            (true, _) if e.variant() == "cross" => Some("a cross-site form was served"),
            (true, _) if e.token_id.is_none() => Some("a form without a token was served"),
            (true, _) if !same => {
                Some("a form was served with a token issued under another session id")
            }
            (false, Some("missing" | "malformed" | "form_too_large")) if e.token_id.is_some() => {
                Some("the token it sent was not read")
            }
            (false, Some("mismatch" | "not_issued")) if same => {
                Some("a token of the session the cookie named was refused")
            }
            (false, Some("no_session"))
                if !faulted && e.sent.as_ref().is_some_and(|id| live_ids.contains(id)) =>
            {
                Some("refused for want of a session, yet its session is live at the end")
            }
            (false, Some("cross_site")) if e.variant() != "cross" => {
                Some("a same-origin form was refused as cross-site")
            }
            _ => None,
        };
        if let Some(what) = wrong {
            out.push(anomaly(
                "csrf",
                format!(
                    "{what} ({}, refused {:?}, token of {}, cookie {})",
                    e.variant(),
                    e.refused,
                    e.token_id
                        .as_ref()
                        .map(|i| i.short_hash().to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.sent
                        .as_ref()
                        .map(|i| i.short_hash().to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                e,
                &[],
            ));
        }
    }
}

/// The texts of the flash messages `rec` still holds.
fn pending(rec: &Record) -> BTreeSet<String> {
    rec.data
        .get(FLASH_KEY)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("text").and_then(|t| t.as_str()).map(str::to_owned))
        .collect()
}

/// **flash**: every message is shown at most once, only in the session it was queued in
/// and not before it was queued; an acknowledged message of a session that is live at the
/// end was shown or is still waiting, unless a take of that device may have removed it
/// without showing it (it failed: another request ended or rotated the session
/// meanwhile, or a fault).
pub(super) fn flash(
    events: &[Event],
    live: &HashMap<String, Vec<&Record>>,
    out: &mut Vec<Anomaly>,
) {
    let queued: HashMap<&str, &Event> = events
        .iter()
        .filter(|e| e.op == Op::Flash)
        .map(|e| (e.arg.as_str(), e))
        .collect();
    let mut shown: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| (200..300).contains(&e.status)) {
        for text in e.seen.iter().flat_map(|s| s.flashes.iter().flatten()) {
            shown.entry(text.as_str()).or_default().push(e);
        }
    }
    for (text, takes) in &shown {
        let more: Vec<usize> = takes.iter().map(|t| t.index).collect();
        if takes.len() > 1 {
            out.push(anomaly(
                "flash",
                format!("{text} was shown {} times", takes.len()),
                takes[0],
                &more,
            ));
        }
        let Some(q) = queued.get(text) else { continue };
        for t in takes {
            if t.completed < q.invoked {
                out.push(anomaly(
                    "flash",
                    format!(
                        "{text} was shown by #{} before #{} queued it",
                        t.index, q.index
                    ),
                    q,
                    &more,
                ));
            }
            if q.lineage().is_some() && t.lineage().is_some() && q.lineage() != t.lineage() {
                out.push(anomaly(
                    "flash",
                    format!(
                        "{text} was queued in {:?} and shown in {:?}",
                        q.lineage(),
                        t.lineage()
                    ),
                    q,
                    &more,
                ));
            }
        }
    }
    let mut per_lineage: HashMap<&str, usize> = HashMap::new();
    for q in queued.values() {
        if let Some(l) = q.lineage() {
            *per_lineage.entry(l).or_default() += 1;
        }
    }
    for q in queued.values().filter(|q| q.acked()) {
        let Some(l) = q.lineage() else { continue };
        let Some(rec) = live.get(l).and_then(|rs| rs.first()) else {
            continue;
        };
        // Past the cap the oldest are dropped by design.
        if per_lineage.get(l).copied().unwrap_or(0) > MAX_PENDING_FLASHES
            || shown.contains_key(q.arg.as_str())
            || pending(rec).contains(&q.arg)
        {
            continue;
        }
        let failed_take = events.iter().any(|t| {
            t.op == Op::TakeFlash
                && t.device == q.device
                && !(200..300).contains(&t.status)
                && t.completed > q.invoked
        });
        if !failed_take {
            out.push(anomaly(
                "flash",
                format!(
                    "{} was acknowledged, its session {l} is live at the end, yet it was never shown and is not waiting",
                    q.arg
                ),
                q,
                &[],
            ));
        }
    }
}

/// **oversize**: a request that wrote past the session size limit stored nothing: it is
/// not served, and the register value it wrote is never seen by any request nor left in
/// any session. The same holds for a form `CsrfLayer` refused (**csrf**): its handler never
/// ran.
pub(super) fn unwritten(events: &[Event], records: &[Record], out: &mut Vec<Anomaly>) {
    let stored: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.data.get("reg").and_then(|v| v.as_str()))
        .collect();
    let seen: HashMap<&str, usize> = events
        .iter()
        .filter_map(|e| Some((e.seen.as_ref()?.reg.as_deref()?, e.index)))
        .collect();
    let refused = |e: &&Event| e.op == Op::Form && e.refused.is_some();
    for e in events.iter().filter(|e| e.op == Op::Big || refused(e)) {
        let kind = if e.op == Op::Big { "oversize" } else { "csrf" };
        let v = e.value();
        let wrong = if (200..300).contains(&e.status) {
            Some("a write past the size limit was acknowledged".to_owned())
        } else if let Some(by) = seen.get(v) {
            Some(format!("its value {v} was seen by #{by}"))
        } else if stored.contains(v) {
            Some(format!("its value {v} is stored at the end"))
        } else {
            None
        };
        if let Some(what) = wrong {
            out.push(anomaly(kind, what, e, &[]));
        }
    }
}
