//! The invariants on what a session holds: **counter**, **register**, **remember**.

use std::collections::BTreeMap;
use std::time::Duration;

use coatcheck::store::{Record, Timestamp};

use super::Anomaly;
use crate::history::run::{Event, Op};

pub(super) fn counter(
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
pub(super) fn last_writes<'a>(
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
/// later acknowledged `put` or `form` (which always write it) rules `w` out; a later `remove` may
/// have found nothing to remove and written nothing. (Found by the checker under pauses
/// of the Redis and Mongo-wire servers.)
pub(super) fn may_land_last(w: &Event, evs: &[&Event]) -> bool {
    !evs.iter()
        .any(|o| matches!(o.op, Op::Put | Op::Form) && o.acked() && o.invoked > w.completed)
}

pub(super) fn register(
    l: &str,
    evs: &[&Event],
    unknown: &[&Event],
    rec: Option<&Record>,
    out: &mut Vec<Anomaly>,
) {
    let Some(rec) = rec else { return };
    let is_write = |e: &&Event| matches!(e.op, Op::Put | Op::Form | Op::Remove);
    let writes: Vec<&Event> = evs
        .iter()
        .copied()
        .filter(|e| is_write(e) && e.acked())
        .collect();
    let value = |e: &Event| (e.op != Op::Remove).then(|| e.value().to_owned());
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

pub(super) fn remember(
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
