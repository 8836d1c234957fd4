//! The session's CSRF synchroniser secret: created lazily, committed before it is handed
//! out, dropped at every rotation of the id.

use std::sync::Arc;

use coatcheck_core::keys::CSRF_KEY;
use serde_json::Value;

use super::{Op, Session, UpdateFn};
use crate::csrf::{mask, new_secret};
use crate::SessionError;

impl Session {
    /// The CSRF token to put in this response's forms (a hidden field named as the
    /// [`CsrfLayer`](crate::CsrfLayer) expects, `csrf_token` by default) or to give to
    /// scripts for the `x-csrf-token` header. Every call returns a differently masked
    /// token (against BREACH-style compression attacks), all of them valid until the
    /// session's id next changes ([`login`](Session::login),
    /// [`regenerate`](Session::regenerate)); tabs never invalidate each other's.
    ///
    /// The session's secret is made on first use and written at once (a session that did
    /// not exist is created, and its cookie sent): two tabs asking for the first token at
    /// the same moment end up with the same secret.
    ///
    /// ```
    /// use coatcheck::{Session, SessionError};
    ///
    /// async fn form(session: Session) -> Result<String, SessionError> {
    ///     let token = session.csrf_token().await?;
    ///     Ok(format!(
    ///         r#"<form method="post" action="/settings">
    ///              <input type="hidden" name="csrf_token" value="{token}">
    ///              <button>Save</button>
    ///            </form>"#
    ///     ))
    /// }
    /// ```
    pub async fn csrf_token(&self) -> Result<String, SessionError> {
        if let Some(secret) = self.csrf_secret().await? {
            return Ok(mask(&secret));
        }
        let fresh = Value::String(new_secret());
        // Keeps a secret another request stored first: of two tabs racing for the first
        // token, the loser's save conflicts, replays this onto the winner's record, and
        // hands out the winner's secret.
        let keep_or_set: UpdateFn = Arc::new(move |current: Option<&Value>| {
            Ok(match current {
                Some(v @ Value::String(_)) => v.clone(),
                _ => fresh.clone(),
            })
        });
        self.change_unchecked(Op::Update(CSRF_KEY.to_owned(), keep_or_set))
            .await?;
        self.commit().await?;
        match self.csrf_secret().await? {
            Some(secret) => Ok(mask(&secret)),
            // Committed and gone: another request ended the session meanwhile.
            None => Err(SessionError::Ended),
        }
    }

    /// The stored secret, if the session has one.
    pub(crate) async fn csrf_secret(&self) -> Result<Option<String>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self
            .state()
            .record
            .as_ref()
            .and_then(|r| match r.data.get(CSRF_KEY) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            }))
    }
}
