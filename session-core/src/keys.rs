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

/// The mark a rotation leaves under the id it retired: "rotated, not revoked". A login
/// or `regenerate` replaces the old record, in the compare-and-set that retires it, by a
/// short-lived record holding only this key (the instant of the rotation), no user, no device and nothing of
/// the session (no pointer to the new id). A request that still carries the old id then
/// knows its session moved on (the browser holds, or is about to receive, the new
/// cookie) and leaves the cookie alone, where a revoked id clears it. The middleware reads
/// such a record as no session; a store needs to do nothing for it.
pub const ROTATED_KEY: &str = "coatcheck.rotated";

/// Every reserved key.
pub const RESERVED_KEYS: [&str; 6] = [
    REMEMBER_ME_KEY,
    CREDENTIAL_KEY,
    CSRF_KEY,
    FLASH_KEY,
    REWRITE_KEY,
    ROTATED_KEY,
];

/// When the rotation that left this mark ([`ROTATED_KEY`]) happened, if `data` is one.
/// The mark holds that instant (milliseconds since the Unix epoch): a blind `touch` from a
/// request still in flight may stretch the record's expiry, never the mark's meaning.
///
/// ```
/// use coatcheck::core::keys;
/// use coatcheck::store::{Data, Timestamp};
///
/// let mut data = Data::new();
/// assert_eq!(keys::rotated_at(&data), None);
/// data.insert(keys::ROTATED_KEY.into(), 1_700_000_000_000i64.into());
/// assert_eq!(keys::rotated_at(&data), Some(Timestamp::from_millis(1_700_000_000_000)));
/// ```
pub fn rotated_at(data: &crate::Data) -> Option<crate::Timestamp> {
    data.get(ROTATED_KEY)
        .and_then(serde_json::Value::as_i64)
        .map(crate::Timestamp::from_millis)
}

/// Whether `data` is the mark a rotation left ([`ROTATED_KEY`]), however old.
pub fn is_rotation_mark(data: &crate::Data) -> bool {
    data.contains_key(ROTATED_KEY)
}

/// Whether `key` is one of the session's own keys.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with("coatcheck.") && RESERVED_KEYS.contains(&key)
}
