//! Flash messages: a message stored for the next page the user sees, shown once.

use std::sync::{Arc, Mutex};

use coatcheck_core::keys::FLASH_KEY;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Op, Session, UpdateFn};
use crate::SessionError;

/// How a [`Flash`] message should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FlashLevel {
    /// Neutral information.
    Info,
    /// Something worked ("Signed out of 2 devices").
    Success,
    /// Something to look at.
    Warning,
    /// Something failed.
    Error,
}

/// A message kept in the session until a page shows it ([`Session::flash`],
/// [`Session::take_flash`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Flash {
    /// How it should look.
    pub level: FlashLevel,
    /// The text, as given (escape it when rendering, as any user-visible text).
    pub text: String,
}

/// At most this many messages wait in a session; older ones are dropped first (a page
/// that flashes on every request and is never followed by one that shows them must not
/// grow the session without bound).
pub const MAX_PENDING_FLASHES: usize = 32;

impl Session {
    /// Keeps a message for the next page that calls [`take_flash`](Session::take_flash)
    /// — typically the one a redirect leads to. Written at the end of the request, and
    /// replayed on a concurrent save like every change, so messages of two tabs are both
    /// kept. Kept across [`login`](Session::login) and [`regenerate`](Session::regenerate)
    /// (a "welcome back" set before a login survives it); gone with the session. At most
    /// [`MAX_PENDING_FLASHES`] wait; the oldest go first.
    ///
    /// ```
    /// use coatcheck::{FlashLevel, Session, SessionError};
    ///
    /// async fn sign_out_others(session: Session) -> Result<&'static str, SessionError> {
    ///     let n = session.logout_other_devices().await?;
    ///     session.flash(FlashLevel::Success, format!("Signed out of {n} devices")).await?;
    ///     Ok("redirect to /sessions")
    /// }
    /// ```
    pub async fn flash(
        &self,
        level: FlashLevel,
        text: impl Into<String>,
    ) -> Result<(), SessionError> {
        let message = serde_json::to_value(Flash {
            level,
            text: text.into(),
        })
        .map_err(SessionError::Serialize)?;
        let push: UpdateFn = Arc::new(move |current: Option<&Value>| {
            let mut list = match current {
                Some(Value::Array(list)) => list.clone(),
                _ => Vec::new(),
            };
            list.push(message.clone());
            let over = list.len().saturating_sub(MAX_PENDING_FLASHES);
            list.drain(..over);
            Ok(Value::Array(list))
        });
        self.change_unchecked(Op::Update(FLASH_KEY.to_owned(), push))
            .await
    }

    /// The messages waiting for this session, oldest first, removed as they are returned:
    /// each is returned **once**, even when two tabs ask at the same moment. The removal
    /// is written at once with a compare-and-set (as [`update`](Session::update) writes), so
    /// of two concurrent takes one gets the messages and the other finds none; a take that
    /// fails (the store is down) returns an error and the messages stay. Once taken they
    /// are the handler's to show: if a later write of the same request fails, the response
    /// becomes that failure and they are gone — take them last, after the request's own
    /// writes. Empty when there are none or there is no session (nothing is written then).
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn page(session: Session) -> Result<String, SessionError> {
    ///     let mut html = String::new();
    ///     for f in session.take_flash().await? {
    ///         // Escape f.text in a real template.
    ///         html.push_str(&format!("<p class={:?}>{}</p>", f.level, f.text));
    ///     }
    ///     Ok(html)
    /// }
    /// ```
    pub async fn take_flash(&self) -> Result<Vec<Flash>, SessionError> {
        self.ensure_loaded().await?;
        let waiting = self
            .state()
            .record
            .as_ref()
            .is_some_and(|r| r.data.contains_key(FLASH_KEY));
        if !waiting {
            return Ok(Vec::new());
        }
        let slot = Arc::new(Mutex::new(None));
        self.change_unchecked(Op::Take(FLASH_KEY.to_owned(), slot.clone()))
            .await?;
        // Committed now: what the winning write removed is what this request shows (a
        // take written at the end of the request would be replayed onto a fresher copy
        // after another tab had shown the same messages).
        self.commit().await?;
        let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(match taken {
            Some(Value::Array(list)) => list
                .into_iter()
                .filter_map(|m| serde_json::from_value(m).ok())
                .collect(),
            _ => Vec::new(),
        })
    }
}
