//! The store's errors: [`BuildError`] (the same name in every coatcheck store crate) and
//! [`MigrateError`].

#[cfg(doc)]
use crate::{PostgresStore, PostgresStoreBuilder};

/// Building a [`PostgresStore`] failed. Nothing was sent to the server.
///
/// ```
/// use coatcheck::postgres::{BuildError, PostgresStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = PostgresStore::builder()
///     .table("sessions\"; DROP TABLE users; --")
///     .connect_lazy("postgres://localhost/app")
///     .unwrap_err();
/// assert!(matches!(err, BuildError::InvalidIdentifier { what: "table", .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A schema or table name is not a plain identifier.
    #[error(
        "invalid {what} name {name:?}: use 1 to 63 characters of A-Z, a-z, 0-9 and '_', \
         not starting with a digit"
    )]
    InvalidIdentifier {
        /// `"schema"` or `"table"`.
        what: &'static str,
        /// The refused name.
        name: String,
    },
    /// The database URL could not be parsed.
    #[error("invalid Postgres URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// A cleanup batch size of zero.
    #[error("the cleanup batch size must be at least 1")]
    ZeroCleanupBatch,
    /// A pool size of zero.
    #[error("the pool needs at least one connection")]
    ZeroConnections,
    /// An encrypting codec ([`EncryptedCodec`](coatcheck_core::EncryptedCodec)) with
    /// express-compatible mode: Node reads the `sess` column as plain JSON.
    #[error("express-compatible mode stores express-session's JSON and cannot encrypt it; drop the encrypting codec or the express format")]
    EncryptedExpress,
    /// Other options that cannot go together
    /// ([`StoreOptions::validate`](coatcheck_core::StoreOptions::validate)).
    #[error(transparent)]
    Conflict(coatcheck_core::OptionsConflict),
    /// [`PostgresStoreBuilder::connect_lazy`] was called outside a Tokio runtime (sqlx's
    /// pool spawns its maintenance task there).
    #[error("connect_lazy must be called from within a Tokio runtime")]
    NoRuntime,
}

/// [`PostgresStore::migrate`] failed; the source is the database's error.
///
/// ```no_run
/// # async fn f(store: coatcheck::postgres::PostgresStore) {
/// if let Err(e) = store.migrate().await {
///     eprintln!("{e}: {:?}", std::error::Error::source(&e));
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("migrating the session table failed: {0}")]
pub struct MigrateError(#[source] pub sqlx::Error);

/// The name of [`BuildError`] before every store crate used the same one.
#[deprecated(
    since = "0.2.0",
    note = "renamed `BuildError`, as in every coatcheck store crate"
)]
pub type ConfigError = BuildError;

impl From<coatcheck_core::OptionsConflict> for BuildError {
    fn from(conflict: coatcheck_core::OptionsConflict) -> Self {
        match conflict {
            coatcheck_core::OptionsConflict::EncryptedExpress => BuildError::EncryptedExpress,
            // `OptionsConflict` is non-exhaustive; a conflict added there is refused here
            // under its own message until this crate names it.
            _ => BuildError::Conflict(conflict),
        }
    }
}
