//! The express layout's statements: better-sqlite3-session-store's
//! `sessions(sid TEXT PRIMARY KEY, sess JSON, expire TEXT)`, where `expire` is an ISO-8601
//! instant as JavaScript's `toISOString()` writes it (`2026-12-07T04:46:00.123Z`), with the
//! indexes coatcheck adds beside it (on `expire`, and on the principal for log out
//! everywhere). Instants travel as milliseconds and are converted by SQLite itself
//! (`strftime('%Y-%m-%dT%H:%M:%fZ', …)` and `unixepoch(…, 'subsec')`) and compared as
//! strings of one fixed format, to the millisecond. The Node store compares whole seconds
//! (`datetime('now') < datetime(expire)`): in a session's last second Node already treats
//! it as expired while coatcheck still serves it.

use super::{quote, Statements};

/// Milliseconds (a parameter) as `toISOString()` writes them.
fn iso(param: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', {param} / 1000.0, 'unixepoch')")
}

/// An ISO-8601 column as milliseconds.
const EXPIRE_MS: &str = "CAST(round(unixepoch(expire, 'subsec') * 1000) AS INTEGER)";

impl Statements {
    pub(crate) fn express(table: &str, user_key: Option<&str>) -> Self {
        let t = quote(table);
        let expire_idx = quote(&format!("{table}_coatcheck_expire_idx"));
        // An earlier build's index read an integer principal through `json_extract`, as a
        // REAL past `i64::MAX`; this one has its own name, so `migrate()` drops the other.
        let earlier_user_idx = quote(&format!("{table}_coatcheck_user_idx"));
        let user_idx = quote(&format!("{table}_coatcheck_principal_idx"));
        // The principal as text (a Node integer `42` matches the user "42"); without a
        // principal key no row matches a user (and capabilities say there is no index).
        // Only a string or an integer is a principal (as in `ExpressFormat`), so `true`
        // never matches a user "1". An integer is its JSON text (`->`), digit for digit:
        // `json_extract` would turn one past `i64::MAX` into a REAL
        // (`9.22337203685478e+18`), which names no user.
        let user = match user_key {
            Some(k) => format!(
                "(CASE json_type(sess, '$.{k}') WHEN 'text' THEN json_extract(sess, '$.{k}') \
                 WHEN 'integer' THEN sess -> '$.{k}' END)"
            ),
            None => "NULL".to_owned(),
        };
        let now = iso("?2");
        let mut migrate = vec![
            // better-sqlite3-session-store's own schema, to the letter.
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 \n    sid TEXT NOT NULL PRIMARY KEY,\
                 \n    sess JSON NOT NULL,\
                 \n    expire TEXT NOT NULL\
                 \n)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {expire_idx} ON {t} (expire)"),
        ];
        migrate.push(format!("DROP INDEX IF EXISTS {earlier_user_idx}"));
        if user_key.is_some() {
            migrate.push(format!(
                "CREATE INDEX IF NOT EXISTS {user_idx} ON {t} ({user}, expire)"
            ));
        }
        Statements {
            migrate,
            shape_probe: format!("SELECT sid, sess, expire FROM {t} WHERE 0"),
            // `id, json, expires (ms), now (ms)`.
            create: format!(
                "INSERT INTO {t} (sid, sess, expire) VALUES (?1, ?2, {e}) \
                 ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expire = excluded.expire \
                 WHERE {t}.expire <= {n}",
                e = iso("?3"),
                n = iso("?4")
            ),
            // `id, now` → `sess, expire (ms)`.
            load: format!("SELECT sess, {EXPIRE_MS} FROM {t} WHERE sid = ?1 AND expire > {now}"),
            // In a `BEGIN IMMEDIATE` transaction, after `save_probe` read the live JSON and
            // its hash matched: `json, expires (ms), id`.
            save: format!(
                "UPDATE {t} SET sess = ?1, expire = {} WHERE sid = ?3",
                iso("?2")
            ),
            // `id, now` → the live JSON (its hash is the version).
            save_probe: format!("SELECT sess FROM {t} WHERE sid = ?1 AND expire > {now}"),
            // `expires (ms), id, now`.
            touch: format!(
                "UPDATE {t} SET expire = {} WHERE sid = ?2 AND expire > {}",
                iso("?1"),
                iso("?3")
            ),
            delete: format!("DELETE FROM {t} WHERE sid = ?1 AND expire > {now}"),
            // In the same transaction as `save_probe`: `id`.
            delete_version: format!("DELETE FROM {t} WHERE sid = ?1"),
            // `user, now` → `id, expire (ms)`.
            list_for_user: format!(
                "SELECT sid, {EXPIRE_MS} FROM {t} WHERE {user} = ?1 AND expire > {now}"
            ),
            delete_device: String::new(),
            limit_live: String::new(),
            // `user, now, except, except`.
            delete_for_user: format!(
                "DELETE FROM {t} WHERE {user} = ?1 AND expire > {now} \
                 AND (?3 IS NULL OR sid <> ?4)"
            ),
            // `now, batch size`.
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE sid IN \
                 (SELECT sid FROM {t} WHERE expire <= {} ORDER BY expire LIMIT ?2)",
                iso("?1")
            ),
            delete_ids_prefix: String::new(),
        }
    }
}
