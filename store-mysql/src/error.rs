//! The store's errors: [`BuildError`] (the same name in every coatcheck store crate) and
//! [`MigrateError`].

#[cfg(doc)]
use crate::{MySqlStore, MySqlStoreBuilder};

/// Building a [`MySqlStore`] failed. Nothing was sent to the server.
///
/// ```
/// use coatcheck::mysql::{BuildError, MySqlStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = MySqlStore::builder()
///     .table("sessions`; DROP TABLE users; --")
///     .connect_lazy("mysql://root@localhost/app")
///     .unwrap_err();
/// assert!(matches!(err, BuildError::InvalidIdentifier { what: "table", .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A database or table name is not a plain identifier.
    #[error(
        "invalid {what} name {name:?}: use 1 to 64 characters of A-Z, a-z, 0-9 and '_', \
         not starting with a digit"
    )]
    InvalidIdentifier {
        /// `"database"`, `"table"` or `"express user key"`.
        what: &'static str,
        /// The refused name.
        name: String,
    },
    /// The database URL could not be parsed.
    #[error("invalid MySQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// A cleanup batch size of zero.
    #[error("the cleanup batch size must be at least 1")]
    ZeroCleanupBatch,
    /// A pool size of zero.
    #[error("the pool needs at least one connection")]
    ZeroConnections,
    /// An encrypting codec ([`EncryptedCodec`](coatcheck_core::EncryptedCodec)) with
    /// express-compatible mode.
    #[error("express-compatible mode stores express-session's JSON and cannot encrypt it; drop the encrypting codec or the express format")]
    EncryptedExpress,
    /// Other options that cannot go together
    /// ([`StoreOptions::validate`](coatcheck_core::StoreOptions::validate)).
    #[error(transparent)]
    Conflict(coatcheck_core::OptionsConflict),
    /// [`MySqlStoreBuilder::connect_lazy`] was called outside a Tokio runtime (sqlx's pool
    /// spawns its maintenance task there).
    #[error("connect_lazy must be called from within a Tokio runtime")]
    NoRuntime,
}

/// [`MySqlStore::migrate`] failed: the server refused a statement (the source is its
/// error: no right to create tables, ...), or a table of that name exists without what the
/// store needs.
///
/// ```no_run
/// # async fn f(store: coatcheck::mysql::MySqlStore) {
/// if let Err(e) = store.migrate().await {
///     eprintln!("{e}: {:?}", std::error::Error::source(&e));
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The server refused a statement of the migration.
    #[error("migrating the session table failed: {0}")]
    Database(#[source] sqlx::Error),
    /// The table exists but is not what this store reads and writes (a column is missing,
    /// or, in express mode, its principal column reads another key): nothing was changed.
    #[error("table {table} exists but does not fit this store ({source}); drop it, fix it or configure another table name")]
    WrongShape {
        /// The table's name.
        table: String,
        /// What does not fit (the server's complaint about the probe, or a description).
        #[source]
        source: sqlx::Error,
    },
}

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
