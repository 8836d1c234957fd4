//! Session errors as actix-web responses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use coatcheck::{AuthRejection, SessionError, SessionFailure};

use crate::headers;

/// A [`SessionError`] as an actix-web error: handlers return `Result<_, Error>` and use `?`
/// on session operations. It answers what the tower layer answers: `409` when another
/// request ended the session or the user has too many, `401` for an unknown user, `503`
/// (with `Retry-After: 1`) when the store did not answer in time, `500` otherwise; the body
/// says nothing about the backend, and the response carries a [`SessionFailure`] in its
/// extensions for an application's own error page.
///
/// ```
/// use actix_web::Responder;
/// use coatcheck_actix::{Error, Session};
///
/// async fn save(session: Session) -> Result<impl Responder, Error> {
///     session.insert("theme", "dark").await?;
///     Ok("saved")
/// }
/// # let _ = save;
/// ```
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] pub SessionError);

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        headers::status(self.0.status())
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(
            self.0,
            SessionError::Ended | SessionError::SessionLimit | SessionError::UnknownUser
        ) {
            tracing::debug!(error = %self.0, "session operation refused");
        } else {
            tracing::error!(error = %self.0, "session operation failed");
        }
        headers::failure_response(SessionFailure::for_error(&self.0))
    }
}

/// An [`AuthRejection`] as an actix-web error: `401` when nobody is logged in, `403`
/// without the role, the session error's own answer when the session could not be read.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AuthError(#[from] pub AuthRejection);

impl From<SessionError> for AuthError {
    fn from(e: SessionError) -> Self {
        AuthError(AuthRejection::Session(e))
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        headers::status(self.0.status())
    }

    fn error_response(&self) -> HttpResponse {
        match &self.0 {
            AuthRejection::Session(e) => {
                tracing::error!(error = %e, "session could not be read for a guard");
                headers::failure_response(SessionFailure::for_error(e))
            }
            other => HttpResponse::build(self.status_code())
                .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
                .body(other.to_string()),
        }
    }
}
