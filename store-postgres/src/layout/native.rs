//! The native layout's statements: coatcheck's own table (id, version, data, expiry,
//! user, device columns) with its indexes.

use super::{index_name, migrate_prelude, quote, Statements};

/// The indexed expiry: `expires_at` rounded down to 5 minutes, a generated column.
///
/// Not `expires_at` itself: a rolling expiry moves on nearly every save, and an update that
/// changes an indexed column can never be a HOT update (heap-only tuple: the new row version
/// on the same page, no index entry written). With `expires_at` indexed, every save wrote a
/// new entry into every index of the table and left a dead one behind (the benchmark's
/// `POST /incr`: 12 HOT updates in 175,597, against 99.8 % for tower-sessions' unindexed
/// table; more server CPU per request and a worse p99 at concurrency 64). The bucket moves
/// once per 5 minutes of expiry, so nearly every save is HOT, and the cleanup still finds
/// expired rows through an index: an expired row's bucket is at or before `now`.
/// `date_bin` is immutable (PostgreSQL 14 and later).
const BUCKET: &str = "date_bin('5 minutes', expires_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')";

impl Statements {
    pub(super) fn native(schema: &str, table: &str) -> Self {
        let qschema = quote(schema);
        let t = format!("{qschema}.{}", quote(table));
        let expires_idx = quote(&index_name(table, "expires_at_idx"));
        let bucket_idx = quote(&index_name(table, "expires_bucket_idx"));
        let user_idx = quote(&index_name(table, "user_id_idx"));
        Statements {
            migrate: format!(
                "{prelude}\
                 \nCREATE TABLE IF NOT EXISTS {t} (\
                 \n    id text COLLATE \"C\" PRIMARY KEY,\
                 \n    version bigint NOT NULL,\
                 \n    data bytea NOT NULL,\
                 \n    user_id text COLLATE \"C\",\
                 \n    created_at timestamptz NOT NULL,\
                 \n    expires_at timestamptz NOT NULL\
                 \n);\
                 \nALTER TABLE {t} ADD COLUMN IF NOT EXISTS device_handle text COLLATE \"C\",\
                 \n    ADD COLUMN IF NOT EXISTS user_agent text,\
                 \n    ADD COLUMN IF NOT EXISTS ip text,\
                 \n    ADD COLUMN IF NOT EXISTS last_seen timestamptz;\
                 \nALTER TABLE {t} ADD COLUMN IF NOT EXISTS expires_bucket timestamptz\
                 \n    GENERATED ALWAYS AS ({BUCKET}) STORED;\
                 \nCREATE INDEX IF NOT EXISTS {bucket_idx} ON {t} (expires_bucket);\
                 \nCREATE INDEX IF NOT EXISTS {user_idx} ON {t} (user_id) WHERE user_id IS NOT NULL;",
                prelude = migrate_prelude(schema)
            ),
            // An earlier build's `expires_at` index is kept by `migrate` (an earlier build
            // restarting mid-deploy would otherwise rebuild it, blocking writes) and dropped
            // here, without blocking writes, once every instance runs this build.
            retire: format!("DROP INDEX CONCURRENTLY IF EXISTS {qschema}.{expires_idx}"),
            create: format!(
                "INSERT INTO {t} AS s (id, version, data, user_id, created_at, expires_at, \
                 device_handle, user_agent, ip, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, data = EXCLUDED.data, \
                 user_id = EXCLUDED.user_id, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at, device_handle = EXCLUDED.device_handle, \
                 user_agent = EXCLUDED.user_agent, ip = EXCLUDED.ip, \
                 last_seen = EXCLUDED.last_seen \
                 WHERE s.expires_at <= $7"
            ),
            // Filled in by `new`.
            create_durable: String::new(),
            load: format!(
                "SELECT version, data, user_id, created_at, expires_at, device_handle, \
                 user_agent, ip, coalesce(last_seen, created_at) FROM {t} \
                 WHERE id = $1 AND expires_at > $2"
            ),
            save: format!(
                "UPDATE {t} SET data = $3, user_id = $4, expires_at = $5, version = version + 1, \
                 device_handle = $7, user_agent = $8, ip = $9, last_seen = $10 \
                 WHERE id = $1 AND version = $2 AND expires_at > $6 RETURNING version"
            ),
            save_probe: format!("SELECT version FROM {t} WHERE id = $1 AND expires_at > $2"),
            touch: format!(
                "UPDATE {t} SET expires_at = $2, last_seen = $3 WHERE id = $1 AND expires_at > $3"
            ),
            delete: format!("DELETE FROM {t} WHERE id = $1 RETURNING expires_at > $2"),
            delete_version: format!(
                "DELETE FROM {t} WHERE id = $1 AND version = $2 AND expires_at > $3"
            ),
            list_for_user: format!(
                "SELECT id, created_at, expires_at, device_handle, user_agent, ip, \
                 coalesce(last_seen, created_at) FROM {t} \
                 WHERE user_id = $1 AND expires_at > $2"
            ),
            delete_device: format!(
                "DELETE FROM {t} WHERE user_id = $1 AND device_handle = $2 \
                 RETURNING expires_at > $3"
            ),
            // The key: a 64-bit hash of the table and the user, so that users (and tables)
            // do not wait for each other, except on a rare hash collision.
            limit_lock: format!(
                "SELECT pg_advisory_xact_lock(hashtextextended('{schema}.{table}:' || $1, 0))"
            ),
            limit_live: format!(
                "SELECT id FROM {t} WHERE user_id = $1 AND expires_at > $2 \
                 ORDER BY coalesce(last_seen, created_at), id"
            ),
            delete_ids: format!("DELETE FROM {t} WHERE id = ANY($1)"),
            delete_for_user: format!(
                "DELETE FROM {t} WHERE user_id = $1 AND expires_at > $2 \
                 AND id IS DISTINCT FROM $3"
            ),
            // Through the bucket's index: every expired row's bucket is at or before `now`.
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE expires_bucket <= $1 \
                 AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}
