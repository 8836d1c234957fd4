//! What the browser sees (issue 41): the invariants judged at the cookie jar rather than
//! the store. The module `check` states them; each function here checks one.

use std::collections::HashMap;

use coatcheck::store::SessionId;

use super::{Anomaly, Final};
use crate::history::run::{CookieOut, Event, Op};

/// The ids an acknowledged rotation retired (a login, a `regenerate`, a re-stamp by
/// `credentials_changed`: the request held the id and was answered a new one), with the
/// request that rotated each.
/// A rotation keeps the session's lineage: a login whose session was already gone (a
/// credential check found it signed out) starts a new one, and retires nothing.
fn rotated(events: &[Event]) -> HashMap<&SessionId, &Event> {
    // The lineage each id was issued under.
    let mut lineage: HashMap<&SessionId, &str> = HashMap::new();
    for e in events {
        if let (Some(l), CookieOut::Set(id)) = (e.lineage(), &e.cookie) {
            lineage.entry(id).or_insert(l);
        }
    }
    let mut out = HashMap::new();
    for r in events.iter().filter(|r| {
        matches!(r.op, Op::Login | Op::Regenerate | Op::Password) && (200..300).contains(&r.status)
    }) {
        if let (Some(old), CookieOut::Set(new)) = (&r.sent, &r.cookie) {
            let same = r.lineage().is_some() && lineage.get(old).copied() == r.lineage();
            if old != new && same {
                out.entry(old).or_insert(r);
            }
        }
    }
    out
}

fn anomaly(kind: &'static str, detail: String, e: &Event, also: &[usize]) -> Anomaly {
    let mut witnesses = also.to_vec();
    witnesses.push(e.index);
    Anomaly {
        kind,
        detail,
        lineage: e.lineage().map(str::to_owned),
        witnesses,
    }
}

/// **signed_out**: an answer cleared the cookie of a session that another request had
/// rotated (acknowledged, and begun before this answer was sent), though its own request
/// ended nothing: a double-submitted sign-in, a tab in flight across a login. Only the
/// request's own logout clears (a rotated id cannot be revoked any more: its mark holds no
/// user).
pub(super) fn signed_out(events: &[Event], out: &mut Vec<Anomaly>) {
    let rotations = rotated(events);
    for e in events.iter().filter(|e| e.cookie == CookieOut::Cleared) {
        if matches!(e.op, Op::Destroy | Op::LogoutEverywhere | Op::RevokeDevice) {
            continue;
        }
        let Some(r) = e.sent.as_ref().and_then(|id| rotations.get(id)) else {
            continue;
        };
        if r.index != e.index && r.invoked < e.completed {
            out.push(anomaly(
                "signed_out",
                format!(
                    "{} cleared the cookie of a session #{} rotated: the device was signed out",
                    e.op_name(),
                    r.index
                ),
                e,
                &[r.index],
            ));
        }
    }
}

/// **stale_cookie**: an answer set a cookie for an id that an acknowledged rotation had
/// retired before the request began.
///
/// Not counted: an answer whose last store call proved its id live (a save or a touch
/// that re-sends a persistent cookie, to move its `Expires`) just before a rotation on
/// another tab, and that reaches the jar after the rotation's answer. No server closes
/// that window (the store's reply is on its way when the rotation runs); the checker saw
/// it 2 times in 200 memory histories with a post-call delay of up to 3 ms, and the
/// middleware's part of it — an early commit re-sending the cookie at the end of a
/// handler that went on for long — is pinned by `coatcheck/tests/rotation.rs`.
pub(super) fn stale_cookie(events: &[Event], out: &mut Vec<Anomaly>) {
    let rotations = rotated(events);
    for e in events {
        let CookieOut::Set(id) = &e.cookie else {
            continue;
        };
        if let Some(r) = rotations.get(id) {
            if r.index != e.index && r.completed < e.invoked {
                out.push(anomaly(
                    "stale_cookie",
                    format!(
                        "{} set the cookie of an id #{} had rotated away",
                        e.op_name(),
                        r.index
                    ),
                    e,
                    &[r.index],
                ));
            }
        }
    }
}

/// **silent_loss**: a write answered `2xx` and cleared the cookie (its changes dropped
/// with the session).
pub(super) fn silent_loss(events: &[Event], out: &mut Vec<Anomaly>) {
    let writes = |op: Op| {
        matches!(
            op,
            Op::Put
                | Op::Incr
                | Op::Remove
                | Op::Flash
                | Op::Form
                | Op::Remember
                | Op::Expiry
                | Op::Legacy
        )
    };
    // A request that found no session (a credential check signed it out at load) and
    // wrote nothing to one is not a loss: it has no lineage.
    for e in events
        .iter()
        .filter(|e| writes(e.op) && (200..300).contains(&e.status) && e.lineage().is_some())
    {
        if e.cookie == CookieOut::Cleared {
            out.push(anomaly(
                "silent_loss",
                format!(
                    "{} answered {} but its session was ended: its write is lost",
                    e.op_name(),
                    e.status
                ),
                e,
                &[],
            ));
        }
    }
}

/// **oversize_refused**: only growth of a session past the data limit is refused; a
/// read, a rotation, a logout, a CSRF token, flash messages and "remember me" never are
/// (the session's own keys do not count against the application's limit).
pub(super) fn oversize_refused(events: &[Event], out: &mut Vec<Anomaly>) {
    let may_grow = |op: Op| matches!(op, Op::Put | Op::Incr | Op::Form | Op::Big);
    for e in events
        .iter()
        .filter(|e| !may_grow(e.op) && e.status == 500 && e.body == "session data too large")
    {
        out.push(anomaly(
            "oversize_refused",
            format!(
                "{} was refused as too large, though it grows nothing",
                e.op_name()
            ),
            e,
            &[],
        ));
    }
}

/// **marks**: a rotation's mark holds only itself (no data, no user, no device) and no
/// index lists it.
pub(super) fn marks(fin: &Final, out: &mut Vec<Anomaly>) {
    for m in &fin.marks {
        let listed = fin.index.values().any(|ids| ids.contains(&m.id));
        // A mark written under an older data key reads with the codec's rewrite mark: the
        // reader's, not the mark's.
        let held = m
            .data
            .keys()
            .filter(|k| k.as_str() != coatcheck::core::REWRITE_KEY)
            .count();
        if held != 1 || m.user_id.is_some() || m.device.is_some() || listed {
            out.push(Anomaly {
                kind: "marks",
                detail: format!(
                    "the mark under {} holds {:?} (user {:?}, device {}, listed {listed})",
                    m.id.short_hash(),
                    m.data.keys().collect::<Vec<_>>(),
                    m.user_id,
                    m.device.is_some()
                ),
                lineage: None,
                witnesses: Vec::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::app::Seen;
    use coatcheck::store::{Record, Timestamp};

    fn event(index: usize, op: Op, sent: Option<&SessionId>, cookie: CookieOut) -> Event {
        Event {
            index,
            instance: 0,
            device: 0,
            tab: index % 2,
            op,
            arg: String::new(),
            invoked: index as u64 * 10,
            completed: index as u64 * 10 + 15,
            sent: sent.cloned(),
            status: 200,
            body: String::new(),
            seen: Some(Seen {
                lineage: Some("L1".into()),
                ..Seen::default()
            }),
            cookie,
            token_id: None,
            refused: None,
        }
    }

    /// A session created, then a login on tab 0 rotating it while tab 1's write was in
    /// flight with the old cookie.
    fn login_and(
        e: impl FnOnce(&SessionId, &SessionId) -> Event,
    ) -> (Vec<Event>, SessionId, SessionId) {
        let (old, new) = (SessionId::generate(), SessionId::generate());
        let events = vec![
            event(0, Op::Put, None, CookieOut::Set(old.clone())),
            event(2, Op::Login, Some(&old), CookieOut::Set(new.clone())),
            e(&old, &new),
        ];
        (events, old, new)
    }

    fn kinds(events: &[Event], f: fn(&[Event], &mut Vec<Anomaly>)) -> Vec<&'static str> {
        let mut out = Vec::new();
        f(events, &mut out);
        out.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_clear_of_a_rotated_session_is_signed_out_unless_it_was_a_logout() {
        let (events, ..) = login_and(|old, _| event(3, Op::Read, Some(old), CookieOut::Cleared));
        assert_eq!(kinds(&events, signed_out), ["signed_out"]);
        let (events, ..) = login_and(|old, _| event(3, Op::Destroy, Some(old), CookieOut::Cleared));
        assert!(kinds(&events, signed_out).is_empty());
        // A login that found its session gone (another lineage) retired nothing.
        let (mut events, old, _) =
            login_and(|old, _| event(3, Op::Read, Some(old), CookieOut::Cleared));
        events[1].seen = Some(Seen {
            lineage: Some("L2".into()),
            ..Seen::default()
        });
        assert!(kinds(&events, signed_out).is_empty(), "{old:?}");
    }

    #[test]
    fn a_cookie_set_for_an_id_retired_before_the_request_began_is_stale() {
        let (mut events, ..) =
            login_and(|old, _| event(9, Op::Read, Some(old), CookieOut::Set(old.clone())));
        assert_eq!(kinds(&events, stale_cookie), ["stale_cookie"]);
        // In flight across the rotation: the window no server closes (see `stale_cookie`).
        events[2].invoked = 20;
        assert!(kinds(&events, stale_cookie).is_empty());
    }

    #[test]
    fn a_write_answered_2xx_that_cleared_its_cookie_is_a_silent_loss() {
        let (events, ..) = login_and(|old, _| event(3, Op::Flash, Some(old), CookieOut::Cleared));
        assert_eq!(kinds(&events, silent_loss), ["silent_loss"]);
        let (mut events, ..) =
            login_and(|old, _| event(3, Op::Flash, Some(old), CookieOut::Cleared));
        events[2].status = 409;
        assert!(kinds(&events, silent_loss).is_empty());
    }

    #[test]
    fn only_growth_may_be_refused_as_too_large() {
        let refused = |op| {
            let mut e = event(0, op, None, CookieOut::Untouched);
            e.status = 500;
            e.body = "session data too large".into();
            vec![e]
        };
        assert_eq!(
            kinds(&refused(Op::Login), oversize_refused),
            ["oversize_refused"]
        );
        assert_eq!(
            kinds(&refused(Op::Csrf), oversize_refused),
            ["oversize_refused"]
        );
        assert!(kinds(&refused(Op::Put), oversize_refused).is_empty());
    }

    #[test]
    fn a_mark_holding_anything_of_the_session_is_an_anomaly() {
        let now = Timestamp::now();
        let mut mark = Record::new(SessionId::generate(), now, now);
        mark.data
            .insert(coatcheck::core::keys::ROTATED_KEY.into(), 1.into());
        let fin = |mark: Record| Final {
            records: Vec::new(),
            stored_ids: Vec::new(),
            marks: vec![mark],
            index: Default::default(),
            at: now,
        };
        let mut out = Vec::new();
        marks(&fin(mark.clone()), &mut out);
        assert!(out.is_empty());
        mark.user_id = Some("u0".into());
        marks(&fin(mark), &mut out);
        assert_eq!(out.len(), 1);
    }
}
