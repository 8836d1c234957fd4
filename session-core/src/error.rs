//! Typed store errors.

/// A boxed error kept as the source of [`StoreError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Stored bytes that could not be read back as a session.
///
/// Kept apart from [`StoreError::Backend`]: the backend answered fine, but what it holds is
/// not a record this codec understands (garbage, another application's key, a newer format).
#[derive(Debug, thiserror::Error)]
#[error("stored session is unreadable: {message}")]
pub struct DecodeError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl DecodeError {
    /// A decode error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        DecodeError {
            message: message.into(),
            source: None,
        }
    }

    /// A decode error keeping the underlying parser error.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        DecodeError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// What a [`SessionStore`](crate::SessionStore) method can fail with.
///
/// ```
/// use coatcheck::core::StoreError;
///
/// let err = StoreError::backend(std::io::Error::other("connection refused"));
/// assert!(err.is_backend());
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` found the id already taken by a live record.
    #[error("session id is already taken")]
    IdTaken,
    /// `save` found another version stored: someone saved in between.
    #[error("session was saved concurrently (version conflict)")]
    Conflict,
    /// `save` found no live record: it was deleted, revoked or has expired.
    #[error("session not found (deleted, revoked or expired)")]
    NotFound,
    /// `create_limited` with [`LimitPolicy::Refuse`](crate::LimitPolicy::Refuse): the user
    /// already has the most sessions allowed; nothing was created.
    #[error("the user already has the most sessions allowed")]
    LimitReached,
    /// The stored bytes are not a readable record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The record could not be encoded for storage (or exceeds what the backend accepts).
    #[error("session could not be encoded: {0}")]
    Encode(#[from] crate::EncodeError),
    /// The store cannot do this in its configuration (for example `list_for_user` on a store
    /// in express-compatible mode without a user index; see
    /// [`Capabilities`](crate::Capabilities)).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
    /// The backend failed: connection, timeout, server error. The source is kept.
    #[error("session store backend failed: {0}")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        StoreError::Backend(e.into())
    }

    /// Whether this is a [`StoreError::Backend`].
    pub fn is_backend(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}
