//! The native layout's statements: coatcheck's own table (id, version, data, expiry, user,
//! device columns) with its indexes, and the lock table of the per-user session limit.

use super::{qualified, Statements, MAX_IDENT_LEN};

/// The longest user id the table holds, in bytes (`user_id VARBINARY(1024)`, indexed).
pub(crate) const MAX_USER_ID_LEN: usize = 1024;

/// FNV-1a, 32 bits: a stable short tag for shortened names.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `{table}_{suffix}`, or, past 64 bytes, a prefix of the table name, a hash of the whole
/// name and the suffix (two long table names never share a lock table).
pub(crate) fn companion_name(table: &str, suffix: &str) -> String {
    let full = format!("{table}_{suffix}");
    if full.len() <= MAX_IDENT_LEN {
        return full;
    }
    let keep = MAX_IDENT_LEN - suffix.len() - 10; // "_" + 8 hex + "_"
    let prefix = table.get(..keep).unwrap_or(table);
    format!("{prefix}_{:08x}_{suffix}", fnv1a(table))
}

impl Statements {
    pub(crate) fn native(database: Option<&str>, table: &str) -> Self {
        let t = qualified(database, table);
        let locks = qualified(database, &companion_name(table, "locks"));
        Statements {
            migrate: vec![
                // Everything in one CREATE: MySQL and MariaDB create the table and its
                // indexes atomically, and `IF NOT EXISTS` makes concurrent migrations of a
                // fresh table a no-op for all but one (a note, not an error).
                format!(
                    "CREATE TABLE IF NOT EXISTS {t} (\
                     \n    id VARBINARY(128) NOT NULL PRIMARY KEY,\
                     \n    version BIGINT NOT NULL,\
                     \n    data MEDIUMBLOB NOT NULL,\
                     \n    user_id VARBINARY({MAX_USER_ID_LEN}) NULL,\
                     \n    created_at BIGINT NOT NULL,\
                     \n    expires_at BIGINT NOT NULL,\
                     \n    device_handle VARBINARY(64) NULL,\
                     \n    user_agent BLOB NULL,\
                     \n    ip BLOB NULL,\
                     \n    last_seen BIGINT NULL,\
                     \n    KEY expires_at_idx (expires_at),\
                     \n    KEY user_id_idx (user_id, expires_at)\
                     \n) ENGINE=InnoDB"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {locks} (\
                     \n    user_id VARBINARY({MAX_USER_ID_LEN}) NOT NULL PRIMARY KEY\
                     \n) ENGINE=InnoDB"
                ),
            ],
            shape_probe: format!(
                "SELECT id, version, data, user_id, created_at, expires_at, device_handle, \
                 user_agent, ip, last_seen FROM {t} WHERE 1 = 0"
            ),
            create: format!(
                "INSERT INTO {t} (id, version, data, user_id, created_at, expires_at, \
                 device_handle, user_agent, ip, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            clear_expired_id: format!("DELETE FROM {t} WHERE id = ? AND expires_at <= ?"),
            load: format!(
                "SELECT version, data, user_id, created_at, expires_at, device_handle, \
                 user_agent, ip, coalesce(last_seen, created_at) FROM {t} \
                 WHERE id = ? AND expires_at > ?"
            ),
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
            // Inserting the user's row, or finding it there, locks it exclusively until the
            // transaction ends: a transaction-scoped per-user lock (what Postgres' advisory
            // lock is) that no error path can leak, unlike `GET_LOCK`, which belongs to the
            // connection and outlives a transaction that forgot to release it.
            limit_lock: format!(
                "INSERT INTO {locks} (user_id) VALUES (?) ON DUPLICATE KEY UPDATE user_id = user_id"
            ),
            limit_live: format!(
                "SELECT id FROM {t} WHERE user_id = ? AND expires_at > ? \
                 ORDER BY coalesce(last_seen, created_at), id"
            ),
            delete_for_user: format!(
                "DELETE FROM {t} WHERE user_id = ? AND expires_at > ? AND (? IS NULL OR id <> ?)"
            ),
            // Oldest first along the expiry index, a bounded batch per statement, run under
            // READ COMMITTED (see `Inner::delete_expired`): row locks only, no gap locks, so
            // a batch never blocks an insert of a live session.
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
            ),
            delete_ids_prefix: format!("DELETE FROM {t} WHERE id IN ("),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companion_names_fit_and_differ() {
        assert_eq!(companion_name("sessions", "locks"), "sessions_locks");
        let a = "a".repeat(62) + "xy";
        let b = "a".repeat(62) + "xw";
        let (la, lb) = (companion_name(&a, "locks"), companion_name(&b, "locks"));
        assert!(la.len() <= MAX_IDENT_LEN && lb.len() <= MAX_IDENT_LEN);
        assert_ne!(la, lb);
        assert!(super::super::validate_ident("lock table", &la).is_ok());
    }
}
