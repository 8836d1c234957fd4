//! Identifiers and every SQL statement of the store, built once at construction from a
//! validated table name.
//!
//! Written for the SQLite sqlx compiles in (3.46): `STRICT` tables, upserts with a `WHERE`,
//! identifiers in double quotes, every instant an integer number of milliseconds since the
//! Unix epoch. Ids, users and handles are `TEXT` compared with SQLite's default `BINARY`
//! collation: byte for byte (`Alice` ≠ `alice`).

pub(crate) mod express;
pub(crate) mod native;

use crate::BuildError;

/// Longest table name accepted (index names add a suffix to it).
pub(crate) const MAX_IDENT_LEN: usize = 64;

/// Checks `name` against `^[A-Za-z_][A-Za-z0-9_]{0,63}$` and refuses SQLite's reserved
/// `sqlite_` prefix.
pub(crate) fn validate_ident(what: &'static str, name: &str) -> Result<(), BuildError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let reserved = name
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"));
    if first_ok && rest_ok && !reserved && name.len() <= MAX_IDENT_LEN {
        Ok(())
    } else {
        Err(BuildError::InvalidIdentifier {
            what,
            name: name.to_owned(),
        })
    }
}

/// A validated identifier in double quotes (validation already excludes quotes; quoting
/// keeps keywords working).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

/// Every statement of a store, built once. Parameters are bound in the order the field docs
/// give.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// What `migrate` runs in one `BEGIN IMMEDIATE` transaction (each idempotent): the
    /// table first, then its indexes.
    pub migrate: Vec<String>,
    /// Selects every column the store reads and writes from no row: fails on a table of
    /// that name without them.
    pub shape_probe: String,
    /// `id, version, data, user_id, created_at, expires_at, device handle, user agent, ip,
    /// last_seen, now`: inserts, or replaces the row of that id when it has expired; no row
    /// changed: the id is a live session's (`IdTaken`).
    pub create: String,
    /// `id, now` → `version, data, user_id, created_at, expires_at, device handle, user
    /// agent, ip, last_seen`.
    pub load: String,
    /// `data, user_id, expires_at, device handle, user agent, ip, last_seen, id, expected
    /// version, now`; changes one row when the compare-and-set matched.
    pub save: String,
    /// `id, now` → `version` of the live row: tells `Conflict` from `NotFound`.
    pub save_probe: String,
    /// `expires_at, now, id, now`; changes one row when live.
    pub touch: String,
    /// `id, now`; one row changed when a live session was removed. An expired row is left
    /// to the cleanup (it is invisible to every read).
    pub delete: String,
    /// `id, expected version, now`; one row changed when live at that version.
    pub delete_version: String,
    /// `user, now` → `id, created_at, expires_at, device handle, user agent, ip, last_seen`.
    pub list_for_user: String,
    /// `user, device handle, now`; rows changed = live sessions of that device removed.
    pub delete_device: String,
    /// `user, now` → `id` of the user's live sessions, least recently seen first.
    pub limit_live: String,
    /// `user, now, except id, except id`; rows changed = live sessions removed.
    pub delete_for_user: String,
    /// `now, batch size`; rows changed = expired rows removed in this batch.
    pub delete_expired_batch: String,
    /// `DELETE … WHERE id IN (` — the caller appends one `?` per id and `)`.
    pub delete_ids_prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "_", "sessions", "Sessions_2", "_x9", &"a".repeat(64)] {
            assert!(validate_ident("table", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "9a",
            "a-b",
            "a b",
            "a\"b",
            "x\"; DROP TABLE users; --",
            "a;b",
            "a'b",
            "é",
            "a.b",
            "sqlite_master",
            "SQLITE_x",
            &"a".repeat(65),
        ] {
            assert!(validate_ident("table", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statements_quote_names() {
        let s = Statements::native("Sess");
        assert!(s.load.contains("FROM \"Sess\" WHERE"));
        assert!(s.migrate[0].contains("CREATE TABLE IF NOT EXISTS \"Sess\""));
        assert!(s.migrate[1].contains("\"Sess_expires_at_idx\" ON \"Sess\""));
    }
}
