//! What session operations fail with.

use coatcheck_core::StoreError;

/// An error from a [`Session`](crate::Session) operation or from saving at the end of a
/// request.
///
/// With the `axum` feature it is an `IntoResponse`, so handlers can use `?`: store
/// failures become `500` (`503` when the store did not answer in time or concurrent saves
/// kept conflicting), never an empty session; the body says nothing about the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed (backend down, unreadable record, ...).
    #[error("session store failed: {0}")]
    Store(#[from] StoreError),
    /// A value could not be turned into JSON.
    #[error("session value could not be serialized: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A stored value does not have the type asked for.
    #[error("session value {key:?} has an unexpected type: {source}")]
    Deserialize {
        /// The key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Concurrent requests kept saving the same session; the retries ran out.
    #[error("session kept being saved concurrently; gave up after {0} attempts")]
    TooManyConflicts(u32),
    /// A key the application may not write: the session's own
    /// [`REMEMBER_ME_KEY`](crate::REMEMBER_ME_KEY) and
    /// [`CREDENTIAL_KEY`](crate::CREDENTIAL_KEY), or, in express-compatible mode, a key
    /// express-session drops or owns ([`coatcheck_core::EXPRESS_RESERVED_KEYS`]); nothing
    /// was changed.
    #[error("session key {0:?} is reserved")]
    ReservedKey(String),
    /// The session was ended by another request (destroyed, logged out everywhere, or
    /// rotated by a concurrent `login`/`regenerate`) while this one ran: nothing of this
    /// request was written and the cookie is cleared. Answers `409 Conflict`.
    #[error("the session was ended by another request; nothing was written")]
    Ended,
    /// A login was refused: the user already has the most sessions
    /// [`max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user) allows
    /// (policy [`LimitPolicy::Refuse`](coatcheck_core::LimitPolicy::Refuse)). Nothing was
    /// written; the request's session stays as it was. Answers `409 Conflict`.
    #[error("the user already has the most sessions allowed; sign out elsewhere first")]
    SessionLimit,
    /// A login was refused: the
    /// [`credential_check`](crate::SessionLayerBuilder::credential_check) lookup says the
    /// user does not exist. Nothing was written. Answers `401 Unauthorized`.
    #[error("the user to log in does not exist (credential check)")]
    UnknownUser,
    /// The application's
    /// [`credential_check`](crate::SessionLayerBuilder::credential_check) lookup failed:
    /// the session could not be checked, so it is not used. Answers `500`, or `503` when
    /// it did not answer within the layer's
    /// [`store_timeout`](crate::SessionConfig::store_timeout) (its source is then a
    /// [`StoreTimedOut`](crate::StoreTimedOut)).
    #[error("credential check failed: {0}")]
    CredentialLookup(#[source] crate::CredentialLookupError),
    /// A write would have stored more data than
    /// [`max_data_bytes`](crate::SessionConfig::max_data_bytes) allows: nothing was
    /// written, the stored session is as it was, and the request fails (`500`: the
    /// application tried to keep too much in the session) — also when a handler catches
    /// it from [`update`](crate::Session::update) and answers a success, since the
    /// request's view of the session then holds data that was never stored.
    #[error(
        "session data of {size} bytes is over the limit of {limit} bytes; nothing was written"
    )]
    DataTooLarge {
        /// The data's size (its JSON encoding).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The `Session` extractor was used on a route without a `SessionLayer`.
    #[error("no SessionLayer on this route")]
    MissingLayer,
}

impl SessionError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> http::StatusCode {
        match self {
            SessionError::TooManyConflicts(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Ended | SessionError::SessionLimit => http::StatusCode::CONFLICT,
            SessionError::UnknownUser => http::StatusCode::UNAUTHORIZED,
            SessionError::Store(StoreError::Backend(source))
                if source.is::<crate::StoreTimedOut>() =>
            {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            SessionError::CredentialLookup(source) if source.is::<crate::StoreTimedOut>() => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Marks a response the session layer or a [`SessionError`] made: it sits in the response's
/// extensions, so an application renders its own page for session failures with any outer
/// middleware (axum's `map_response`, a tower layer) instead of coatcheck's short plain text.
///
/// ```
/// use axum::{middleware::map_response, response::{IntoResponse, Response}, Router};
/// use coatcheck::SessionFailure;
///
/// async fn my_error_page(res: Response) -> Response {
///     match res.extensions().get::<SessionFailure>() {
///         Some(f) => (f.status, format!("<h1>Sorry</h1><p>{}</p>", f.message)).into_response(),
///         None => res,
///     }
/// }
///
/// # fn wrap(app: Router) -> Router {
/// // Outside the session layer, so it sees what the layer answers too.
/// app.layer(map_response(my_error_page))
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionFailure {
    /// The status coatcheck answered (`409`, `500`, `503`).
    pub status: http::StatusCode,
    /// What went wrong, for a person: no backend detail, no session id.
    pub message: &'static str,
}

impl SessionFailure {
    /// The failure for `status`, with coatcheck's message for it.
    pub(crate) fn for_status(status: http::StatusCode) -> Self {
        let message = match status {
            http::StatusCode::SERVICE_UNAVAILABLE => "session store busy, retry",
            http::StatusCode::CONFLICT => "session ended by another request",
            _ => "session store unavailable",
        };
        SessionFailure { status, message }
    }

    /// The failure for `e`: its status, and a message saying what a person can do about
    /// it where there is something (too many sessions, data too large). What a framework
    /// adapter answers for a [`SessionError`].
    ///
    /// ```
    /// use coatcheck::{SessionError, SessionFailure};
    ///
    /// let failure = SessionFailure::for_error(&SessionError::Ended);
    /// assert_eq!(failure.status, http::StatusCode::CONFLICT);
    /// ```
    pub fn for_error(e: &SessionError) -> Self {
        let mut failure = SessionFailure::for_status(e.status());
        match e {
            SessionError::SessionLimit => {
                failure.message = "too many signed-in sessions; sign out on another device first";
            }
            SessionError::UnknownUser => failure.message = "no such user; sign in again",
            SessionError::DataTooLarge { .. } => failure.message = "session data too large",
            _ => {}
        }
        failure
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionError {
    fn into_response(self) -> axum_core::response::Response {
        if matches!(
            self,
            SessionError::Ended | SessionError::SessionLimit | SessionError::UnknownUser
        ) {
            // Not a failure: another request ended the session first.
            tracing::debug!(error = %self, "session operation refused");
        } else {
            tracing::error!(error = %self, "session operation failed");
        }
        let failure = SessionFailure::for_error(&self);
        let mut res =
            axum_core::response::Response::new(axum_core::body::Body::from(failure.message));
        *res.status_mut() = self.status();
        res.extensions_mut().insert(failure);
        if self.status() == http::StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        res
    }
}
