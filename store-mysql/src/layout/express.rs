//! The express layout's statements: express-mysql-session's
//! `sessions(session_id varchar(128), expires int unsigned, data mediumtext)`, with what
//! coatcheck adds beside it: an index on `expires` (cleanup) and, when the format has a
//! principal key, a virtual column holding it with its index (log out everywhere). Express
//! keeps no version: the version is a hash of the stored JSON, the same
//! [`content_version`](coatcheck_core::content_version) computed by the server (`SHA2`)
//! for a compare-and-set. `expires` is whole seconds; live means `expires > ⌊now / 1 s⌋`.

use super::{qualified, quote, Statements};

/// The longest principal the virtual user column holds, in bytes (`VARBINARY(3040)`: with
/// `expires`, the index key stays inside InnoDB's 3,072 bytes).
pub(crate) const MAX_EXPRESS_USER_LEN: usize = 3040;

/// The name of the virtual user column coatcheck adds.
pub(crate) const USER_COLUMN: &str = "coatcheck_user";

/// The first 64 bits of SHA-256 of the stored JSON as an unsigned integer: what
/// `content_version` computes in Rust.
const HASH: &str = "CAST(CONV(LEFT(SHA2(data, 256), 16), 16, 10) AS UNSIGNED)";

/// What express mode adds to [`Statements`]: bringing a table Express created first up to
/// what coatcheck needs, one addition at a time.
#[derive(Debug, Clone)]
pub(crate) struct ExpressStatements {
    /// `database or NULL, table` → the principal column's generation expression and its
    /// column type (`varbinary(3040)`), if the column is there.
    pub user_column: String,
    /// `ALTER TABLE … ADD` of the principal column and its index (empty: none mapped).
    pub add_user: String,
    /// `ALTER TABLE …` replacing an earlier build's principal column and its index.
    pub rebuild_user: String,
    /// The JSON path the principal column must read (`$.userId`); empty: none mapped.
    pub user_path: String,
    /// `database or NULL, table` → how many index columns named `coatcheck_expires_idx`.
    pub expires_index: String,
    /// `ALTER TABLE … ADD` of the expiry index.
    pub add_expires: String,
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
        // Bytes (`VARBINARY`: compared byte for byte, trailing spaces count, as the native
        // layout's `user_id`); only a string or an integer is a principal (as in
        // `ExpressFormat`), so `true` or `null` never match a user "true" or "null".
        let user_column = user_key.map(|k| {
            (
                format!("{} {}", quote(USER_COLUMN), user_generation(k)),
                format!("KEY {user_idx} ({}, expires)", quote(USER_COLUMN)),
            )
        });
        let (user_def, user_key_def) = match &user_column {
            Some((c, i)) => (format!(",\n    {c}"), format!(",\n    {i}")),
            None => (String::new(), String::new()),
        };
        let add_user = match &user_column {
            Some((c, i)) => format!("ALTER TABLE {t} ADD COLUMN {c}, ADD {i}"),
            None => String::new(),
        };
        // An earlier build's column (a `VARCHAR`, or an expression that fails on JSON the
        // server cannot parse) replaced by this one, index and all, in one statement.
        let rebuild_user = match &user_column {
            Some((c, i)) => format!(
                "ALTER TABLE {t} DROP KEY {user_idx}, DROP COLUMN {}, ADD COLUMN {c}, ADD {i}",
                quote(USER_COLUMN)
            ),
            None => String::new(),
        };
        let add_expires = format!("ALTER TABLE {t} ADD KEY {expires_idx} (expires)");
        let user = quote(USER_COLUMN);
        let statements = Statements {
            shape_probe: format!("SELECT session_id, expires, data FROM {t} WHERE 1 = 0"),
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
            // `id, now (s)` → `data, expires (s), principal column (NULL without one)`.
            load: format!(
                "SELECT data, CAST(expires AS SIGNED), {principal} FROM {t} \
                 WHERE session_id = ? AND expires > ?",
                principal = if user_key.is_some() {
                    quote(USER_COLUMN)
                } else {
                    "NULL".to_owned()
                }
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
        let extras = ExpressStatements {
            user_column:
                "SELECT GENERATION_EXPRESSION, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = coalesce(?, DATABASE()) AND TABLE_NAME = ? \
                 AND COLUMN_NAME = 'coatcheck_user'"
                    .to_owned(),
            add_user,
            rebuild_user,
            user_path: user_key.map(|k| format!("$.{k}")).unwrap_or_default(),
            expires_index: "SELECT count(*) FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = coalesce(?, DATABASE()) AND TABLE_NAME = ? \
                 AND INDEX_NAME = 'coatcheck_expires_idx'"
                .to_owned(),
            add_expires,
        };
        (statements, extras)
    }
}

/// The deepest nesting the server's JSON functions read (MariaDB stops at 32 levels, the
/// outermost object counted as the first: a document nesting 32 deep is not valid JSON to
/// them; MySQL 8 stops at 100). A signed-in session nesting deeper could not be indexed.
pub(crate) const MAX_INDEXED_DEPTH: usize = 31;

/// The principal column's definition after its name: the principal under `key` when the
/// server can read the document and the principal is a string or an integer that fits the
/// column; `NULL` otherwise. It never fails: a document MariaDB cannot parse (nested past
/// its limit, or holding a lone surrogate escape such as `"\ud800"`, which Node's
/// `JSON.stringify` writes) and an over-long principal leave the column `NULL` instead of
/// failing the write, so express-mysql-session's own writes never see the column.
/// (`JSON_VALID` reports an unparsable document as a note, never an error, in strict mode
/// too.) The store's `load` compares the column with the principal it decodes, so a
/// session the column cannot name is never reported as its user's.
fn user_generation(key: &str) -> String {
    let value = format!("JSON_EXTRACT(data, '$.{key}')");
    let bytes = format!("CAST(JSON_UNQUOTE({value}) AS BINARY)");
    format!(
        "VARBINARY({MAX_EXPRESS_USER_LEN}) AS (CASE WHEN JSON_VALID(data) THEN CASE \
         WHEN JSON_TYPE({value}) IN ('STRING', 'INTEGER', 'UNSIGNED INTEGER') \
         AND LENGTH({bytes}) <= {MAX_EXPRESS_USER_LEN} THEN {bytes} END END) VIRTUAL"
    )
}

/// Whether a principal column found in a table is this build's: a `varbinary` whose
/// expression guards with `JSON_VALID` and reads `key` (the server normalises the text, so
/// the check looks for the parts, the key with its quotes: `'$.user'` is not `'$.userId'`).
pub(crate) fn is_current_user_column(expr: &str, column_type: &str, key_path: &str) -> bool {
    let lower = expr.to_ascii_lowercase();
    reads_key(expr, key_path)
        && lower.contains("json_valid")
        && lower.contains(&format!("<= {MAX_EXPRESS_USER_LEN}"))
        && column_type.eq_ignore_ascii_case(&format!("varbinary({MAX_EXPRESS_USER_LEN})"))
}

/// Whether a principal column's expression reads the key at `key_path` (`$.userId`) and
/// no other.
pub(crate) fn reads_key(expr: &str, key_path: &str) -> bool {
    expr.contains(&format!("'{key_path}'"))
}

/// How deep `json` nests, the outermost object or array counted as 1 (brackets inside
/// strings skipped), as the server's JSON parser counts.
pub(crate) fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whole seconds of an expiry as express-mysql-session stores it: rounded up, so a session
/// never ends before its time; an expiry already past at `now` rounded down, so rounding
/// never brings an expired session back.
///
/// Clamped to the column's range (`INT UNSIGNED`: 0 to 2106-02-07): a session meant to
/// outlive 2106 ends then.
pub(crate) fn expires_secs(expires_ms: i64, now_ms: i64) -> i64 {
    let secs = if expires_ms <= now_ms {
        expires_ms.div_euclid(1000)
    } else {
        expires_ms.saturating_add(999).div_euclid(1000)
    };
    secs.clamp(0, i64::from(u32::MAX))
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
        assert_eq!(expires_secs(i64::MAX, 0), i64::from(u32::MAX));
        assert_eq!(expires_secs(-5_000, 0), 0);
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("{}"), 1);
        assert_eq!(json_depth(r#"{"a":[[1],{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"{"a":"[[[{{\"[["}"#), 1);
        assert_eq!(json_depth("12"), 0);
    }

    #[test]
    fn an_earlier_builds_column_is_not_current() {
        let path = "$.userId";
        let now = user_generation("userId");
        assert!(is_current_user_column(&now, "varbinary(3040)", path));
        assert!(!is_current_user_column(&now, "varchar(3040)", path));
        assert!(!is_current_user_column(
            "CASE WHEN json_type(json_extract(`data`,'$.userId')) in ('STRING') END",
            "varbinary(3040)",
            path
        ));
        assert!(!reads_key(&now, "$.user"));
        assert!(reads_key(&now, "$.userId"));
    }

    #[test]
    fn the_user_column_reads_the_key() {
        let (s, x) = Statements::express(None, "sessions", Some("userId"));
        assert!(s.migrate[0].contains("JSON_EXTRACT(data, '$.userId')"));
        assert!(x.add_user.starts_with("ALTER TABLE `sessions` ADD COLUMN"));
        assert_eq!(x.user_path, "$.userId");
        assert!(x.rebuild_user.contains("DROP KEY `coatcheck_user_idx`"));
        let (s, x) = Statements::express(None, "sessions", None);
        assert!(!s.migrate[0].contains("coatcheck_user"));
        assert!(x.add_user.is_empty());
    }
}
