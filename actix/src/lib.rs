//! coatcheck's server-side sessions for [actix-web]: the browser keeps a signed ticket
//! (the session id in a cookie, or a header token for API clients), the data stays in the
//! store your team already runs — any coatcheck store: memory, Redis (cluster, Sentinel,
//! Valkey), Postgres, MySQL/MariaDB, SQLite, MongoDB.
//!
//! This crate is a thin adapter: the whole lifecycle (compare-and-set saves that replay
//! a request's own changes, id rotation at login that a second tab or a double click
//! survives, revocation, devices, remember-me, flash, CSRF secrets, events, metrics) is
//! [`coatcheck::engine`]'s, the same engine the tower layer drives, proven by the same
//! history checker.
//!
//! ```no_run
//! use actix_web::{post, web, App, HttpServer, Responder};
//! use coatcheck::memory::MemoryStore;
//! use coatcheck::KeyRing;
//! use coatcheck_actix::{Session, SessionMiddleware};
//!
//! #[post("/incr")]
//! async fn incr(session: Session) -> Result<impl Responder, coatcheck_actix::Error> {
//!     let n: u64 = session.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
//!     Ok(n.to_string())
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
//!     let sessions = SessionMiddleware::builder(MemoryStore::new(), keys)
//!         .build()
//!         .expect("valid session options");
//!     HttpServer::new(move || App::new().wrap(sessions.clone()).service(incr))
//!         .bind(("127.0.0.1", 8080))?
//!         .run()
//!         .await
//! }
//! ```
//!
//! - [`SessionMiddleware`]: `App::wrap` it; its builder takes every option of the tower
//!   layer's ([`coatcheck::SessionLayerBuilder`]), with the same meaning.
//! - [`Session`]: the extractor; it dereferences to [`coatcheck::Session`], so every
//!   method (`get`, `insert`, `update`, `login`, `regenerate`, `destroy`,
//!   `logout_everywhere`, devices, flash, `csrf_token`, ...) is the same.
//! - [`Error`]: what handlers return for `?` on a session operation; a `ResponseError`
//!   answering the statuses the tower layer answers (`409`, `500`, `503`).
//! - [`Authenticated`] and [`RequireRole`]: the guards; [`CsrfMiddleware`]: the CSRF check.
//!
//! [actix-web]: https://actix.rs

#![warn(missing_docs)]

mod csrf;
mod error;
mod extract;
mod guard;
mod headers;
mod middleware;

pub use csrf::CsrfMiddleware;
pub use error::{AuthError, Error};
pub use extract::{Authenticated, Session};
pub use guard::RequireRole;
pub use middleware::{SessionMiddleware, SessionMiddlewareBuilder};
