//! Identifiers and every SQL statement of the store, built once at construction from
//! validated names.
//!
//! The statements are written for both MariaDB (10.5 and later) and MySQL 8: no
//! `RETURNING` (MySQL has none), no `INSERT … ON DUPLICATE KEY UPDATE` (its affected-rows
//! count cannot tell "inserted" from "left alone" once the client asks for found rows,
//! which sqlx does), identifiers quoted with backticks, every instant an integer number of
//! milliseconds since the Unix epoch (`BIGINT`: no 2038, no time zone, no
//! `TIMESTAMP`/`DATETIME` conversion through the connection's `time_zone`).

pub(crate) mod express;
pub(crate) mod native;

use crate::BuildError;

/// Longest identifier MySQL and MariaDB accept.
pub(crate) const MAX_IDENT_LEN: usize = 64;

/// Checks `name` against `^[A-Za-z_][A-Za-z0-9_]{0,63}$`.
pub(crate) fn validate_ident(what: &'static str, name: &str) -> Result<(), BuildError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok && rest_ok && name.len() <= MAX_IDENT_LEN {
        Ok(())
    } else {
        Err(BuildError::InvalidIdentifier {
            what,
            name: name.to_owned(),
        })
    }
}

/// A validated identifier in backticks (validation already excludes backticks; quoting
/// keeps reserved words working).
pub(crate) fn quote(ident: &str) -> String {
    format!("`{ident}`")
}

/// `database.table` quoted, or the table alone (the connection's database).
pub(crate) fn qualified(database: Option<&str>, table: &str) -> String {
    match database {
        Some(db) => format!("{}.{}", quote(db), quote(table)),
        None => quote(table),
    }
}

/// Every statement of a store, built once.
///
/// Parameters are bound in the order the field docs give; ids, users and device handles
/// travel as bytes compared bytewise (`VARBINARY`), instants as `BIGINT` milliseconds.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// What `migrate` sends, one statement after the other (each idempotent).
    pub migrate: Vec<String>,
    /// Selects every column the store reads and writes from no row: fails on a table of
    /// that name without them.
    pub shape_probe: String,
    /// `id, version, data, user_id, created_at, expires_at, device handle, user agent, ip,
    /// last_seen`: a plain insert; a duplicate key is the `IdTaken` path.
    pub create: String,
    /// `id, now`: removes the row of that id if it has expired (the id may be reused).
    pub clear_expired_id: String,
    /// `id, now` → `version, data, user_id, created_at, expires_at, device handle, user
    /// agent, ip, last_seen`.
    pub load: String,
    /// `data, user_id, expires_at, device handle, user agent, ip, last_seen, id, expected
    /// version, now`; affects one row when the compare-and-set matched (the version always
    /// changes, so found rows and changed rows agree).
    pub save: String,
    /// `id, now` → `version` of the live row: tells `Conflict` from `NotFound`.
    pub save_probe: String,
    /// `expires_at, now, id, now`; affects one row when live (found rows: a touch to the
    /// same expiry at the same instant still counts).
    pub touch: String,
    /// `id, now`; rows affected = 1 when a live session was removed. An expired row is left
    /// to the cleanup (it is invisible to every read).
    pub delete: String,
    /// `id, expected version, now`; affects one row when live at that version.
    pub delete_version: String,
    /// `user, now` → `id, created_at, expires_at, device handle, user agent, ip, last_seen`.
    pub list_for_user: String,
    /// `user, device handle, now`; rows affected = live sessions of that device removed.
    pub delete_device: String,
    /// `user`: takes the user's row lock in the lock table, held to the end of the
    /// transaction (every limited create of the user holds it from its count to its commit).
    pub limit_lock: String,
    /// `user, now` → `id` of the user's live sessions, least recently seen first.
    pub limit_live: String,
    /// `user, now, except id, except id`; rows affected = live sessions removed.
    pub delete_for_user: String,
    /// `now, batch size`; rows affected = expired rows removed in this batch.
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
            "a`b",
            "x`; DROP TABLE users; --",
            "a;b",
            "a'b",
            "é",
            "a.b",
            &"a".repeat(65),
        ] {
            assert!(validate_ident("table", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statements_quote_names() {
        let s = Statements::native(Some("app"), "Sess");
        assert!(s.load.contains("FROM `app`.`Sess` WHERE"));
        assert!(s.migrate[0].contains("CREATE TABLE IF NOT EXISTS `app`.`Sess`"));
        let s = Statements::native(None, "Sess");
        assert!(s.load.contains("FROM `Sess` WHERE"));
    }
}
