//! The extractors: [`Session`] and [`Authenticated`].

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use coatcheck::SessionError;
use futures_util::future::LocalBoxFuture;

use crate::{AuthError, Error};

/// The request's session: [`coatcheck::Session`], as an actix-web extractor. It
/// dereferences to it, so every method is the same (and documented there). Without a
/// [`SessionMiddleware`](crate::SessionMiddleware) around the route, extracting it fails
/// with `500` ([`SessionError::MissingLayer`]).
///
/// ```
/// use actix_web::Responder;
/// use coatcheck_actix::{Error, Session};
///
/// async fn login(session: Session) -> Result<impl Responder, Error> {
///     session.login("ada").await?; // a new id, the old one retired
///     Ok("welcome")
/// }
/// # let _ = login;
/// ```
#[derive(Clone, Debug)]
pub struct Session(pub coatcheck::Session);

impl Deref for Session {
    type Target = coatcheck::Session;
    fn deref(&self) -> &coatcheck::Session {
        &self.0
    }
}

impl Session {
    /// The request's session, as the middleware put it in the request's extensions.
    pub fn of(req: &HttpRequest) -> Result<Session, Error> {
        req.extensions()
            .get::<coatcheck::Session>()
            .cloned()
            .map(Session)
            .ok_or(Error(SessionError::MissingLayer))
    }
}

impl FromRequest for Session {
    type Error = Error;
    type Future = Ready<Result<Session, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Session::of(req))
    }
}

/// The logged-in user (`requireAuth` as an extractor): a handler taking it only runs when
/// the session has a principal; otherwise the request gets `401`. Dereferences to
/// [`coatcheck::Authenticated`] (`user_id`, `session`, `roles`, `require_role`).
///
/// ```
/// use coatcheck_actix::Authenticated;
///
/// async fn me(user: Authenticated) -> String {
///     format!("hello {}", user.user_id)
/// }
/// # let _ = me;
/// ```
#[derive(Clone, Debug)]
pub struct Authenticated(pub coatcheck::Authenticated);

impl Deref for Authenticated {
    type Target = coatcheck::Authenticated;
    fn deref(&self) -> &coatcheck::Authenticated {
        &self.0
    }
}

impl FromRequest for Authenticated {
    type Error = AuthError;
    type Future = LocalBoxFuture<'static, Result<Authenticated, AuthError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let session = Session::of(req);
        Box::pin(async move {
            let session = session.map_err(|e| AuthError::from(e.0))?;
            Ok(Authenticated(
                coatcheck::Authenticated::from_session(session.0).await?,
            ))
        })
    }
}
