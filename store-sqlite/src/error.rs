//! The store's errors: [`BuildError`] (the same name in every coatcheck store crate) and
//! [`MigrateError`].

#[cfg(doc)]
use crate::{SqliteStore, SqliteStoreBuilder};

/// Building a [`SqliteStore`] failed. Nothing was opened.
///
/// ```
/// use coatcheck::sqlite::{BuildError, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = SqliteStore::builder()
///     .table("sessions\"; DROP TABLE users; --")
///     .connect_lazy("sqlite://sessions.db?mode=rwc")
///     .unwrap_err();
/// assert!(matches!(err, BuildError::InvalidIdentifier { what: "table", .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A table name or express user key is not a plain identifier.
    #[error(
        "invalid {what} name {name:?}: use 1 to 64 characters of A-Z, a-z, 0-9 and '_', \
         not starting with a digit"
    )]
    InvalidIdentifier {
        /// `"table"` or `"express user key"`.
        what: &'static str,
        /// The refused name.
        name: String,
    },
    /// The database URL could not be parsed, or is not a `sqlite:` URL.
    #[error("invalid SQLite URL: {0}")]
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
    /// [`SqliteStoreBuilder::connect_lazy`] was called outside a Tokio runtime (sqlx's pool
    /// spawns its maintenance task there).
    #[error("connect_lazy must be called from within a Tokio runtime")]
    NoRuntime,
}

/// [`SqliteStore::migrate`] failed: the file could not be opened or written (the source is
/// SQLite's error, e.g. `attempt to write a readonly database`), or a table of that name
/// exists without the columns the store needs.
///
/// ```no_run
/// # async fn f(store: coatcheck::sqlite::SqliteStore) {
/// if let Err(e) = store.migrate().await {
///     eprintln!("{e}: {:?}", std::error::Error::source(&e));
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// SQLite refused a statement of the migration.
    #[error("migrating the session table failed: {0}")]
    Database(#[source] sqlx::Error),
    /// The table exists but is not a coatcheck session table (a column is missing or named
    /// otherwise): nothing was changed.
    #[error("table {table} exists but does not have the session columns ({source}); drop it or configure another table name")]
    WrongShape {
        /// The table's name.
        table: String,
        /// SQLite's complaint about the probe (e.g. `no such column: version`).
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
