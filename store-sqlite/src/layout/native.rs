//! The native layout's statements: coatcheck's own table (id, version, data, expiry, user,
//! device columns) with its two indexes.

use super::{quote, Statements};

impl Statements {
    pub(crate) fn native(table: &str) -> Self {
        let t = quote(table);
        let expires_idx = quote(&format!("{table}_expires_at_idx"));
        let user_idx = quote(&format!("{table}_user_id_idx"));
        let columns = "version, data, user_id, created_at, expires_at, device_handle, \
                       user_agent, ip, coalesce(last_seen, created_at)";
        Statements {
            migrate: vec![
                // STRICT: a value of the wrong type is an error, not silently stored. A
                // rowid table (not WITHOUT ROWID): session data is often kilobytes, which
                // WITHOUT ROWID tables store badly.
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     \n    id TEXT NOT NULL PRIMARY KEY,\
                     \n    version INTEGER NOT NULL,\
                     \n    data BLOB NOT NULL,\
                     \n    user_id TEXT,\
                     \n    created_at INTEGER NOT NULL,\
                     \n    expires_at INTEGER NOT NULL,\
                     \n    device_handle TEXT,\
                     \n    user_agent TEXT,\
                     \n    ip TEXT,\
                     \n    last_seen INTEGER\
                     \n) STRICT"
                ),
                format!("CREATE INDEX IF NOT EXISTS {expires_idx} ON {t} (expires_at)"),
                // Partial: anonymous sessions (most of them) cost the user index nothing;
                // `user_id = ?` implies `user_id IS NOT NULL`, so the planner uses it.
                format!(
                    "CREATE INDEX IF NOT EXISTS {user_idx} ON {t} (user_id, expires_at) \
                     WHERE user_id IS NOT NULL"
                ),
            ],
            shape_probe: format!(
                "SELECT id, version, data, user_id, created_at, expires_at, device_handle, \
                 user_agent, ip, last_seen FROM {t} WHERE 0"
            ),
            create: format!(
                "INSERT INTO {t} (id, version, data, user_id, created_at, expires_at, \
                 device_handle, user_agent, ip, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                 data = excluded.data, user_id = excluded.user_id, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at, \
                 device_handle = excluded.device_handle, user_agent = excluded.user_agent, \
                 ip = excluded.ip, last_seen = excluded.last_seen \
                 WHERE {t}.expires_at <= ?"
            ),
            load: format!("SELECT {columns} FROM {t} WHERE id = ? AND expires_at > ?"),
            save: format!(
                "UPDATE {t} SET data = ?, user_id = ?, expires_at = ?, device_handle = ?, \
                 user_agent = ?, ip = ?, last_seen = ?, version = version + 1 \
                 WHERE id = ? AND version = ? AND expires_at > ?"
            ),
            save_probe: format!("SELECT version FROM {t} WHERE id = ? AND expires_at > ?"),
            touch: format!(
                "UPDATE {t} SET expires_at = ?, last_seen = ? WHERE id = ? AND expires_at > ?"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ? AND expires_at > ?"),
            delete_version: format!(
                "DELETE FROM {t} WHERE id = ? AND version = ? AND expires_at > ?"
            ),
            list_for_user: format!(
                "SELECT id, created_at, expires_at, device_handle, user_agent, ip, \
                 coalesce(last_seen, created_at) FROM {t} WHERE user_id = ? AND expires_at > ?"
            ),
            delete_device: format!(
                "DELETE FROM {t} WHERE user_id = ? AND device_handle = ? AND expires_at > ?"
            ),
            limit_live: format!(
                "SELECT id FROM {t} WHERE user_id = ? AND expires_at > ? \
                 ORDER BY coalesce(last_seen, created_at), id"
            ),
            delete_for_user: format!(
                "DELETE FROM {t} WHERE user_id = ? AND expires_at > ? AND (? IS NULL OR id <> ?)"
            ),
            // SQLite has `DELETE … LIMIT` only when compiled with an option the bundled
            // library lacks: the batch is chosen along the expiry index in a subquery.
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE id IN \
                 (SELECT id FROM {t} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)"
            ),
            delete_ids_prefix: format!("DELETE FROM {t} WHERE id IN ("),
        }
    }
}
