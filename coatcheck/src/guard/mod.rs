//! The tutorials' `requireAuth` and `requireRole`: the [`Authenticated`]
//! extractor (401 when nobody is logged in) and the [`RequireRole`] route layer (401, or
//! 403 without the role). Roles are a list of strings under the session key [`ROLES_KEY`],
//! written at login with [`Session::login_with`].

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "axum")]
pub use self::axum::{RequireRole, RequireRoleService};

use std::fmt;

use http::StatusCode;

use crate::{Session, SessionError};

/// The session key holding the user's roles (a list of strings), as the Express tutorials
/// keep them in `req.session.roles`.
pub const ROLES_KEY: &str = "roles";

/// Why a guard turned a request away.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// Nobody is logged in: `401 Unauthorized`.
    #[error("log in first")]
    Unauthenticated,
    /// Logged in, without the role: `403 Forbidden`.
    #[error("forbidden: the {0:?} role is required")]
    Forbidden(String),
    /// The session could not be read (its own status: 5xx, or 409).
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl AuthRejection {
    /// The HTTP status it answers.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthRejection::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthRejection::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthRejection::Session(e) => e.status(),
        }
    }
}

/// The logged-in user: `requireAuth` as an extractor. A handler taking it only runs when
/// the session has a principal; otherwise the request gets `401`.
///
/// ```
/// use axum::{routing::get, Router};
/// use coatcheck::{Authenticated, KeyRing, SessionLayer};
/// use coatcheck::memory::MemoryStore;
///
/// async fn me(user: Authenticated) -> String {
///     format!("hello {}", user.user_id)
/// }
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let app: Router = Router::new()
///     .route("/me", get(me))
///     .layer(SessionLayer::builder(MemoryStore::new(), keys).build().unwrap());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Authenticated {
    /// The principal ([`Session::login`]).
    pub user_id: String,
    /// The session, for anything else.
    pub session: Session,
}

impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    /// The user's roles (the list under [`ROLES_KEY`]; empty when none were stored).
    pub async fn roles(&self) -> Result<Vec<String>, SessionError> {
        Ok(self.session.get(ROLES_KEY).await?.unwrap_or_default())
    }

    /// `Ok` when the user has `role`, else [`AuthRejection::Forbidden`] (`403`).
    pub async fn require_role(&self, role: &str) -> Result<(), AuthRejection> {
        if self.roles().await?.iter().any(|r| r == role) {
            Ok(())
        } else {
            Err(AuthRejection::Forbidden(role.to_owned()))
        }
    }

    /// The logged-in user of `session`, or [`AuthRejection::Unauthenticated`]: what the
    /// extractors of every framework adapter answer.
    pub async fn from_session(session: Session) -> Result<Self, AuthRejection> {
        match session.user_id().await? {
            Some(user_id) => Ok(Authenticated { user_id, session }),
            None => Err(AuthRejection::Unauthenticated),
        }
    }
}
