//! The data keys a session keeps for itself, declared once.
//!
//! Session metadata that every store must keep with no schema change lives in the data
//! map, under keys in the `coatcheck.` namespace (Django keeps its per-session expiry the
//! same way, in `_session_expiry`). The application never reads or writes them through
//! the session API (`insert`, `get`, `update`, `remove` and `take` refuse or hide them),
//! and `clear` keeps them. An Express app sharing the sessions sees them as plain values.
//!
//! `roles` is **not** reserved: it is application data that the facade's role guard reads
//! by convention (`coatcheck::ROLES_KEY`), written by the application at login.
//!
//! ```
//! use coatcheck::core::keys;
//!
//! assert!(keys::is_reserved(keys::CSRF_KEY));
//! assert!(!keys::is_reserved("roles"));
//! ```

/// A remembered session ("remember me" ticked), stored as `true`.
pub const REMEMBER_ME_KEY: &str = "coatcheck.remember";

/// The stamp of the user's credentials at login (the credential check).
pub const CREDENTIAL_KEY: &str = "coatcheck.credential";

/// The session's CSRF synchroniser secret (handed out masked, never as stored).
pub const CSRF_KEY: &str = "coatcheck.csrf";

/// Flash messages not shown yet.
pub const FLASH_KEY: &str = "coatcheck.flash";

pub use crate::encrypted::REWRITE_KEY;

/// Every reserved key.
pub const RESERVED_KEYS: [&str; 5] = [
    REMEMBER_ME_KEY,
    CREDENTIAL_KEY,
    CSRF_KEY,
    FLASH_KEY,
    REWRITE_KEY,
];

/// Whether `key` is one of the session's own keys.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with("coatcheck.") && RESERVED_KEYS.contains(&key)
}
