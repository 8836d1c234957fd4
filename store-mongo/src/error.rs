//! [`BuildError`]: the same name in every coatcheck store crate.

#[cfg(doc)]
use crate::MongoStore;
#[cfg(doc)]
use coatcheck_core::StoreError;

/// Setting a store up failed: bad URL or names, or the indexes could not be ensured.
///
/// Errors of the store's operations are [`StoreError`]s; this type is only returned by
/// constructors and [`MongoStore::ensure_indexes`].
///
/// ```
/// use coatcheck::mongo::{MongoStore, BuildError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let err = MongoStore::connect("not a mongodb url", "app").await.unwrap_err();
/// assert!(matches!(err, BuildError::Options(_)));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The connection string or client options were rejected.
    #[error("invalid MongoDB connection options: {0}")]
    Options(#[source] mongodb::error::Error),
    /// The database or collection name is not one MongoDB accepts.
    #[error("invalid MongoDB {what} name {name:?}: {why}")]
    InvalidName {
        /// `"database"` or `"collection"`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },
    /// An encrypting codec ([`EncryptedCodec`](coatcheck_core::EncryptedCodec)) with
    /// express-compatible mode: Node reads the `session` field as plain JSON.
    #[error("express-compatible mode stores express-session's JSON and cannot encrypt it; drop the encrypting codec or the express format")]
    EncryptedExpress,
    /// Other options that cannot go together
    /// ([`StoreOptions::validate`](coatcheck_core::StoreOptions::validate)).
    #[error(transparent)]
    Conflict(coatcheck_core::OptionsConflict),
    /// Creating the TTL or user index failed (server unreachable, or an index with the same
    /// key but other options already exists).
    #[error("could not ensure the session indexes: {0}")]
    Indexes(#[source] mongodb::error::Error),
}

/// The name of [`BuildError`] before every store crate used the same one.
#[deprecated(
    since = "0.2.0",
    note = "renamed `BuildError`, as in every coatcheck store crate"
)]
pub type SetupError = BuildError;

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
