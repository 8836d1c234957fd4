//! The express layout's statements: connect-pg-simple's
//! `session(sid varchar, sess json, expire timestamp(6))`, with the user column coatcheck
//! adds when the format has a user key.

use super::{index_name, migrate_prelude, quote, Statements};

impl Statements {
    pub(super) fn express(schema: &str, table: &str, user_key: Option<&str>) -> Self {
        let qschema = quote(schema);
        let t = format!("{qschema}.{}", quote(table));
        // connect-pg-simple's own index name for its default table: `IDX_session_expire`.
        let expire_idx = quote(&index_name(&format!("IDX_{table}"), "expire"));
        let user_idx = quote(&index_name(&format!("IDX_{table}"), "user"));
        let hash = "('x' || substr(md5(sess::text), 1, 16))::bit(64)::int8";
        // connect-pg-simple's `to_timestamp(ceil(seconds))`; an expiry already past at write
        // time is kept exact, so rounding up never brings an expired session back to life.
        let secs = |p: &str, now: &str| {
            format!(
                "(CASE WHEN {p} <= {now} THEN {p}::timestamp \
                 ELSE to_timestamp(ceil(extract(epoch FROM {p})))::timestamp END)"
            )
        };
        // Without a principal key, no row matches a user (and capabilities say no index).
        let user = match user_key {
            Some(k) => format!("(sess ->> '{k}')"),
            None => "(NULL::text)".to_owned(),
        };
        let user_index = match user_key {
            Some(_) => format!("\nCREATE INDEX IF NOT EXISTS {user_idx} ON {t} ({user});"),
            None => String::new(),
        };
        Statements {
            retire: String::new(),
            migrate: format!(
                "{prelude}\
                 \nCREATE TABLE IF NOT EXISTS {t} (\
                 \n    \"sid\" varchar NOT NULL COLLATE \"default\" PRIMARY KEY,\
                 \n    \"sess\" json NOT NULL,\
                 \n    \"expire\" timestamp(6) NOT NULL\
                 \n);\
                 \nCREATE INDEX IF NOT EXISTS {expire_idx} ON {t} (expire);{user_index}",
                prelude = migrate_prelude(schema)
            ),
            // $2 version, $4 user and $5 created are bound but not stored (the principal is in
            // sess; Express keeps no version or creation time).
            create: format!(
                "INSERT INTO {t} AS s (sid, sess, expire) \
                 VALUES ($1, convert_from($3, 'UTF8')::json, {e}) \
                 ON CONFLICT (sid) DO UPDATE SET sess = EXCLUDED.sess, expire = EXCLUDED.expire \
                 WHERE s.expire <= $7::timestamp",
                e = secs("$6::timestamptz", "$7::timestamptz")
            ),
            // Filled in by `new`.
            create_durable: String::new(),
            load: format!(
                "SELECT {hash}, convert_to(sess::text, 'UTF8'), NULL::text, \
                 to_timestamp(0), expire::timestamptz, NULL::text, NULL::text, NULL::text, \
                 to_timestamp(0) FROM {t} \
                 WHERE sid = $1 AND expire > $2::timestamp"
            ),
            save: format!(
                "UPDATE {t} SET sess = convert_from($3, 'UTF8')::json, expire = {e} \
                 WHERE sid = $1 AND {hash} = $2 AND expire > $6::timestamp RETURNING {hash}",
                e = secs("$5::timestamptz", "$6::timestamptz")
            ),
            save_probe: format!(
                "SELECT 0::int8 FROM {t} WHERE sid = $1 AND expire > $2::timestamp"
            ),
            touch: format!(
                "UPDATE {t} SET expire = {e} WHERE sid = $1 AND expire > $3::timestamp",
                e = secs("$2::timestamptz", "$3::timestamptz")
            ),
            delete: format!("DELETE FROM {t} WHERE sid = $1 RETURNING expire > $2::timestamp"),
            delete_version: format!(
                "DELETE FROM {t} WHERE sid = $1 AND {hash} = $2 AND expire > $3::timestamp"
            ),
            list_for_user: format!(
                "SELECT sid::text, to_timestamp(0), expire::timestamptz, NULL::text, NULL::text, \
                 NULL::text, to_timestamp(0) FROM {t} \
                 WHERE {user} = $1 AND expire > $2::timestamp"
            ),
            delete_device: String::new(),
            limit_lock: String::new(),
            limit_live: String::new(),
            delete_ids: String::new(),
            delete_for_user: format!(
                "DELETE FROM {t} WHERE {user} = $1 AND expire > $2::timestamp \
                 AND sid IS DISTINCT FROM $3"
            ),
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE sid IN (SELECT sid FROM {t} WHERE expire <= $1::timestamp \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}
