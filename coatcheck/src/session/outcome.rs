//! The end of a request, as one explicit state machine.
//!
//! Whatever a handler did — read, wrote, logged in, logged out — its request ends in one
//! [`Outcome`], and one function, [`Outcome::respond`], turns that into what the response
//! does with the cookie (or the header token) and whether the request's answer stands.
//! Nothing here knows a web framework: the tower layer (and any other adapter) only
//! applies the [`CookieAction`].
//!
//! The rules, in one place:
//!
//! - A response **sets** the cookie for a session this request created, rotated to, or
//!   wrote (or touched) and found live at its end — when the cookie must change (a new id,
//!   re-signing, a persistent cookie's `Expires` following the expiry).
//! - A response **clears** the cookie only when its own request ended the session
//!   (`destroy`, `logout_everywhere`, revoking its own device, a stale credential found at
//!   load).
//! - A request whose session another request **rotated** (a login or `regenerate` on
//!   another tab, a double-submitted sign-in form) or **revoked** while it ran, or whose
//!   cookie named an id a rotation had already retired, sends **no cookie at all**: the
//!   browser holds, or is about to receive, a newer one, which a stale answer must never
//!   replace or delete. When such a request had changes, they are not kept and it answers
//!   `409` ([`SessionError::Ended`]), never a silent `200`.

use coatcheck_core::{Record, Timestamp};

use super::CookieAction;
use crate::SessionError;

/// What a request did to its session, as it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No session, and none made.
    Untouched,
    /// The session was read (and maybe touched) under the cookie's id; `resend`: the cookie
    /// goes out again (re-signed, or a persistent cookie's `Expires` moved).
    Read { cookie: CookieAction, resend: bool },
    /// The session's changes were saved under its id; `resend` as for `Read`.
    Written { cookie: CookieAction, resend: bool },
    /// This request created the session: the browser gets its first cookie.
    Created(CookieAction),
    /// This request rotated the session to a new id (`login`, `regenerate`).
    RotatedTo(CookieAction),
    /// This request ended the session: the cookie is cleared.
    EndedHere,
    /// Another request rotated (`rotated`) or revoked the session, before this request
    /// loaded it or while it ran: no cookie. `lost`: this request's changes are not kept.
    Superseded { rotated: bool, lost: bool },
    /// A store call failed: nothing written, no cookie; the failure is the answer.
    Failed,
}

impl Outcome {
    /// The one function from outcome to cookie action: `Err` when the request's answer
    /// must not stand (its changes were not kept).
    pub(crate) fn respond(self) -> Result<CookieAction, SessionError> {
        match self {
            Outcome::Untouched | Outcome::Failed => Ok(CookieAction::None),
            Outcome::Read { cookie, resend } | Outcome::Written { cookie, resend } => {
                Ok(if resend { cookie } else { CookieAction::None })
            }
            Outcome::Created(cookie) | Outcome::RotatedTo(cookie) => Ok(cookie),
            Outcome::EndedHere => Ok(CookieAction::Clear),
            Outcome::Superseded { lost: false, .. } => Ok(CookieAction::None),
            Outcome::Superseded { lost: true, .. } => Err(SessionError::Ended),
        }
    }
}

/// The request's state as it ends, read once (see `Session::settle`).
pub(super) struct End {
    pub record: Option<Record>,
    pub persisted: bool,
    /// Changes not written yet.
    pub dirty: bool,
    /// An expiry the handler set.
    pub explicit: Option<Timestamp>,
    /// A new id, or a cookie that changes between persistent and not.
    pub id_changed: bool,
    /// The cookie was signed with an older secret.
    pub resign: bool,
    /// This request ended the session.
    pub destroyed: bool,
    pub failed: bool,
    /// An early commit moved the expiry.
    pub due: bool,
    /// The cookie named a rotated id when the request loaded it.
    pub moved_on: bool,
    /// Ended by another request while this one ran (`true`: rotated).
    pub in_flight: Option<bool>,
    /// The stored expiry as loaded.
    pub loaded_expires: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use coatcheck_core::SessionId;

    fn set() -> CookieAction {
        CookieAction::Set {
            id: SessionId::generate(),
            expires: None,
        }
    }

    /// The table of the module's rules: only a request's own ending clears, a superseded
    /// one never touches the cookie, and loses its answer only with changes.
    #[test]
    fn every_outcome_has_one_answer() {
        let cases: [(Outcome, Result<CookieAction, SessionError>); 5] = [
            (Outcome::Untouched, Ok(CookieAction::None)),
            (Outcome::Failed, Ok(CookieAction::None)),
            (Outcome::EndedHere, Ok(CookieAction::Clear)),
            (
                Outcome::Superseded {
                    rotated: true,
                    lost: false,
                },
                Ok(CookieAction::None),
            ),
            (
                Outcome::Superseded {
                    rotated: false,
                    lost: false,
                },
                Ok(CookieAction::None),
            ),
        ];
        for (outcome, want) in cases {
            let got = outcome.clone().respond();
            assert_eq!(got.ok(), want.ok(), "{outcome:?}");
        }
        for rotated in [true, false] {
            let lost = Outcome::Superseded {
                rotated,
                lost: true,
            };
            assert!(matches!(lost.respond(), Err(SessionError::Ended)));
        }
        let c = set();
        for o in [
            Outcome::Created(c.clone()),
            Outcome::RotatedTo(c.clone()),
            Outcome::Read {
                cookie: c.clone(),
                resend: true,
            },
            Outcome::Written {
                cookie: c.clone(),
                resend: true,
            },
        ] {
            assert_eq!(o.respond().ok(), Some(c.clone()));
        }
        for o in [
            Outcome::Read {
                cookie: c.clone(),
                resend: false,
            },
            Outcome::Written {
                cookie: c.clone(),
                resend: false,
            },
        ] {
            assert_eq!(o.respond().ok(), Some(CookieAction::None));
        }
    }
}
