//! What a store reports about sessions that expired by themselves.

use crate::SessionId;

/// One report from a store's opt-in expiry stream: expiry the store saw by itself, not
/// through a request (the middleware's [`NotFoundOnRead`] event covers those). Offered where
/// the backend can tell: Redis keyspace notifications (`RedisStore::expiry_notices`, one
/// [`ExpiryNotice::Expired`] per session) and the Postgres cleanup task
/// (`PostgresStore::spawn_cleanup_reporting`, one [`ExpiryNotice::Removed`] per run that
/// removed rows). Delivered at most once, through a bounded channel whose overflow is
/// dropped and logged: use it for audit trails and housekeeping (closing a WebSocket,
/// updating a side table), never for security decisions — a revoked session is already
/// refused by the store itself.
///
/// [`NotFoundOnRead`]: https://docs.rs/coatcheck/latest/coatcheck/enum.SessionEvent.html
///
/// ```
/// use coatcheck::core::ExpiryNotice;
///
/// fn audit(notice: &ExpiryNotice) -> String {
///     match notice {
///         ExpiryNotice::Expired(id) => format!("session {} expired", id.short_hash()),
///         ExpiryNotice::Removed { count } => format!("{count} expired sessions removed"),
///         _ => "another kind of notice".into(),
///     }
/// }
/// # let _ = audit;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiryNotice {
    /// This session's record expired in the store. The id is dead — no store returns it any
    /// more — so it may be logged; the session's data is gone with it.
    Expired(SessionId),
    /// A cleanup run removed this many expired records.
    Removed {
        /// How many.
        count: u64,
    },
}
