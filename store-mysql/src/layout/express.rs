//! The express layout's statements: express-mysql-session's
//! `sessions(session_id varchar(128), expires int unsigned, data mediumtext)`, with what
//! coatcheck adds beside it: an index on `expires` (cleanup) and, when the format has a
//! principal key, a virtual column holding it with its index (log out everywhere). Express
//! keeps no version: the version is a hash of the stored JSON, the same
//! [`content_version`](coatcheck_core::content_version) computed by the server (`SHA2`)
//! for a compare-and-set. `expires` is whole seconds; live means `expires > ⌊now / 1 s⌋`.

use super::{qualified, quote, Statements};

/// The longest principal the virtual user column holds, in characters (`VARCHAR(760)`:
/// with `expires`, the index key stays inside InnoDB's 3,072 bytes at 4 bytes a character).
pub(crate) const MAX_EXPRESS_USER_LEN: usize = 760;

/// The name of the virtual user column coatcheck adds.
pub(crate) const USER_COLUMN: &str = "coatcheck_user";

/// The first 64 bits of SHA-256 of the stored JSON as an unsigned integer: what
/// `content_version` computes in Rust.
const HASH: &str = "CAST(CONV(LEFT(SHA2(data, 256), 16), 16, 10) AS UNSIGNED)";

/// What express mode adds to [`Statements`]: bringing a table Express created first up to
/// what coatcheck needs.
#[derive(Debug, Clone)]
pub(crate) struct ExpressStatements {
    /// `database or NULL, table` → how many indexes named `coatcheck_expires_idx` the
    /// table has (none: Express created it, and `add` runs).
    pub probe: String,
    /// `ALTER TABLE … ADD` of the user column and its index (when mapped) and of the expiry
    /// index.
    pub add: String,
}

impl Statements {
    pub(crate) fn express(
        database: Option<&str>,
        table: &str,
        user_key: Option<&str>,
    ) -> (Self, ExpressStatements) {
        let t = qualified(database, table);
        let expires_idx = quote("coatcheck_expires_idx");
        let user_idx = quote("coatcheck_user_idx");
        let user_column = user_key.map(|k| {
            (
                format!(
                    "{col} VARCHAR({MAX_EXPRESS_USER_LEN}) COLLATE utf8mb4_bin \
                     AS (JSON_UNQUOTE(JSON_EXTRACT(data, '$.{k}'))) VIRTUAL",
                    col = quote(USER_COLUMN)
                ),
                format!("KEY {user_idx} ({}, expires)", quote(USER_COLUMN)),
            )
        });
        let (user_def, user_key_def) = match &user_column {
            Some((c, i)) => (format!(",\n    {c}"), format!(",\n    {i}")),
            None => (String::new(), String::new()),
        };
        let add = match &user_column {
            Some((c, i)) => {
                format!("ALTER TABLE {t} ADD COLUMN {c}, ADD {i}, ADD KEY {expires_idx} (expires)")
            }
            None => format!("ALTER TABLE {t} ADD KEY {expires_idx} (expires)"),
        };
        let user = quote(USER_COLUMN);
        let statements = Statements {
            migrate: vec![format!(
                // express-mysql-session's schema.sql, column for column, and coatcheck's
                // additions (Express's INSERT names its three columns: it never sees them).
                "CREATE TABLE IF NOT EXISTS {t} (\
                 \n    session_id VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,\
                 \n    expires INT(11) UNSIGNED NOT NULL,\
                 \n    data MEDIUMTEXT COLLATE utf8mb4_bin{user_def},\
                 \n    PRIMARY KEY (session_id),\
                 \n    KEY {expires_idx} (expires){user_key_def}\
                 \n) ENGINE=InnoDB"
            )],
            // `id, expires (s), data`.
            create: format!("INSERT INTO {t} (session_id, expires, data) VALUES (?, ?, ?)"),
            clear_expired_id: format!("DELETE FROM {t} WHERE session_id = ? AND expires <= ?"),
            // `id, now (s)` → `data, expires (s)`.
            load: format!(
                "SELECT data, CAST(expires AS SIGNED) FROM {t} WHERE session_id = ? AND expires > ?"
            ),
            // `data, expires (s), id, expected version, now (s)`.
            save: format!(
                "UPDATE {t} SET data = ?, expires = ? \
                 WHERE session_id = ? AND {HASH} = ? AND expires > ?"
            ),
            save_probe: format!(
                "SELECT CAST(0 AS SIGNED) FROM {t} WHERE session_id = ? AND expires > ?"
            ),
            // `expires (s), id, now (s)`.
            touch: format!("UPDATE {t} SET expires = ? WHERE session_id = ? AND expires > ?"),
            delete: format!("DELETE FROM {t} WHERE session_id = ? AND expires > ?"),
            delete_version: format!(
                "DELETE FROM {t} WHERE session_id = ? AND {HASH} = ? AND expires > ?"
            ),
            // `user, now (s)` → `id, expires (s)`.
            list_for_user: format!(
                "SELECT session_id, CAST(expires AS SIGNED) FROM {t} \
                 WHERE {user} = ? AND expires > ?"
            ),
            delete_device: String::new(),
            limit_lock: String::new(),
            limit_live: String::new(),
            delete_for_user: format!(
                "DELETE FROM {t} WHERE {user} = ? AND expires > ? \
                 AND (? IS NULL OR session_id <> ?)"
            ),
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE expires <= ? ORDER BY expires LIMIT ?"
            ),
            delete_ids_prefix: String::new(),
        };
        let probe = "SELECT count(*) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = coalesce(?, DATABASE()) AND TABLE_NAME = ? \
             AND INDEX_NAME = 'coatcheck_expires_idx'"
            .to_owned();
        (statements, ExpressStatements { probe, add })
    }
}

/// Whole seconds of an expiry as express-mysql-session stores it: rounded up, so a session
/// never ends before its time; an expiry already past at `now` rounded down, so rounding
/// never brings an expired session back.
pub(crate) fn expires_secs(expires_ms: i64, now_ms: i64) -> i64 {
    if expires_ms <= now_ms {
        expires_ms.div_euclid(1000)
    } else {
        (expires_ms + 999).div_euclid(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_unless_already_past() {
        assert_eq!(expires_secs(5_001, 0), 6);
        assert_eq!(expires_secs(5_000, 0), 5);
        assert_eq!(expires_secs(5_999, 6_000), 5);
        assert_eq!(expires_secs(5_500, 5_500), 5);
    }

    #[test]
    fn the_user_column_reads_the_key() {
        let (s, x) = Statements::express(None, "sessions", Some("userId"));
        assert!(s.migrate[0].contains("JSON_EXTRACT(data, '$.userId')"));
        assert!(x.add.starts_with("ALTER TABLE `sessions` ADD COLUMN"));
        let (s, x) = Statements::express(None, "sessions", None);
        assert!(!s.migrate[0].contains("coatcheck_user"));
        assert!(!x.add.contains("coatcheck_user"));
    }
}
