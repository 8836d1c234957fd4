//! Identifiers, table layouts and every SQL statement of the store, built once at
//! construction from validated names.
//!
//! A [`Layout`] produces a [`Statements`] whose parameters and result columns have the same
//! order and types whatever the table looks like (see the field docs). The express layout
//! (connect-pg-simple's `session(sid varchar, sess json, expire timestamp(6))`) maps its
//! columns onto these shapes: the data travels as the UTF-8 bytes of the JSON
//! (`convert_from`/`convert_to`), the version is the first 64 bits of `md5(sess::text)`
//! (a content hash, since Express keeps no version), `expire` is written as
//! connect-pg-simple writes it (`to_timestamp` of whole seconds, rounded up, into a
//! `timestamp` without time zone, i.e. in the connection's `TimeZone`) and compared in that
//! same domain, so both apps must use the same `TimeZone`.

use crate::{ConfigError, Durability};

/// In a statement, `''` that sets `synchronous_commit = off` for the statement's own
/// transaction when evaluated ([`Durability::RelaxedCommit`]).
const RELAX: &str = "left(set_config('synchronous_commit', 'off', true), 0)";

/// Longest identifier Postgres keeps (`NAMEDATALEN - 1`).
pub(crate) const MAX_IDENT_LEN: usize = 63;

/// Key of the transaction-scoped advisory lock every `migrate()` holds (ASCII "coatchk\0"),
/// shared by all coatcheck tables of a database so that concurrent migrations of tables in
/// one new schema serialise too.
pub(crate) const MIGRATE_LOCK_KEY: i64 = 0x636f_6174_6368_6b00;

/// Checks `name` against `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
pub(crate) fn validate_ident(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if first_ok && rest_ok && name.len() <= MAX_IDENT_LEN {
        Ok(())
    } else {
        Err(ConfigError::InvalidIdentifier {
            what,
            name: name.to_owned(),
        })
    }
}

/// A validated identifier, double-quoted (validation already excludes quotes; quoting keeps
/// reserved words and upper case working and literal).
fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

/// FNV-1a, 32 bits: a stable short tag for shortened index names.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `{table}_{suffix}`, or, when that exceeds 63 bytes (Postgres would truncate it and two
/// long table names could collide), a prefix of the table name, a hash of the whole name and
/// the suffix.
pub(crate) fn index_name(table: &str, suffix: &str) -> String {
    let full = format!("{table}_{suffix}");
    if full.len() <= MAX_IDENT_LEN {
        return full;
    }
    let keep = MAX_IDENT_LEN - suffix.len() - 10; // "_" + 8 hex + "_"
    let prefix = table.get(..keep).unwrap_or(table);
    format!("{prefix}_{:08x}_{suffix}", fnv1a(table))
}

/// The start of every `migrate`: the advisory lock, then the schema if absent (a role
/// without CREATE on the database can still migrate into an existing schema).
fn migrate_prelude(schema: &str) -> String {
    let qschema = quote(schema);
    format!(
        "SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY});\
         \nDO $coatcheck$ BEGIN\
         \n    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}') THEN\
         \n        CREATE SCHEMA {qschema};\
         \n    END IF;\
         \nEND $coatcheck$;"
    )
}

/// How sessions are laid out in the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub(crate) enum Layout {
    /// The native layout: `id text primary key, version bigint, data bytea, user_id text,
    /// created_at timestamptz, expires_at timestamptz`, indexes on `expires_at` and
    /// (partial) on `user_id`.
    #[default]
    Native,
    /// connect-pg-simple's table; the principal, when mapped, is `sess ->> user_key`
    /// (validated as an identifier, so it can be a literal in the SQL and its index).
    Express { user_key: Option<String> },
}

/// Every statement of a store, built once.
///
/// Parameter and result shapes are fixed whatever the layout (timestamps are
/// `timestamptz`, ids and users `text`, data `bytea`, versions `int8`).
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// What `migrate` sends: one simple-protocol query string, which Postgres runs as one
    /// implicit transaction (all or nothing) holding a transaction-scoped advisory lock.
    pub migrate: String,
    /// `$1 id, $2 version, $3 data, $4 user_id, $5 created_at, $6 expires_at, $7 now,
    /// $8 device handle, $9 user agent, $10 ip, $11 last_seen`; affects one row when
    /// inserted (or an expired row replaced), none when the id is live. (The express layout
    /// keeps no device: `$8`–`$11` are bound and unused.)
    pub create: String,
    /// `create` as it is under [`Durability::Full`], never relaxed: the insert of a limited
    /// create that evicts, whose transaction also commits revocations (same parameters).
    pub create_durable: String,
    /// `$1 id, $2 now` → `version, data, user_id, created_at, expires_at, device handle,
    /// user agent, ip, last_seen`.
    pub load: String,
    /// `$1 id, $2 expected version, $3 data, $4 user_id, $5 expires_at, $6 now,
    /// $7 device handle, $8 user agent, $9 ip, $10 last_seen` → `version` (the new one), no
    /// row when the compare-and-set failed.
    pub save: String,
    /// `$1 id, $2 now` → `version` of the live row: tells `Conflict` from `NotFound`.
    pub save_probe: String,
    /// `$1 id, $2 expires_at, $3 now`; affects one row when live; moves `last_seen` to now.
    pub touch: String,
    /// `$1 id, $2 now` → `live bool` of the removed row, no row when absent.
    pub delete: String,
    /// `$1 id, $2 expected version, $3 now`; affects one row when live at that version.
    pub delete_version: String,
    /// `$1 user, $2 now` → `id, created_at, expires_at, device handle, user agent, ip,
    /// last_seen`.
    pub list_for_user: String,
    /// `$1 user, $2 device handle, $3 now` → `live bool` per removed row (native only).
    pub delete_device: String,
    /// `$1 user`: takes the transaction-scoped advisory lock of this table and user, which
    /// every limited create holds from its count to its commit (native only).
    pub limit_lock: String,
    /// `$1 user, $2 now` → `id` of the user's live sessions, least recently seen first
    /// (native only).
    pub limit_live: String,
    /// `$1 ids (text[])`: removes those rows (native only).
    pub delete_ids: String,
    /// `$1 user, $2 now, $3 except id (nullable)`; rows affected = live sessions removed.
    pub delete_for_user: String,
    /// `$1 now, $2 batch size`; rows affected = expired rows removed in this batch.
    pub delete_expired_batch: String,
}

impl Statements {
    pub(crate) fn new(layout: Layout, schema: &str, table: &str, durability: Durability) -> Self {
        let mut s = match layout {
            Layout::Native => Self::native(schema, table),
            Layout::Express { user_key } => Self::express(schema, table, user_key.as_deref()),
        };
        s.create_durable = s.create.clone();
        if durability == Durability::RelaxedCommit {
            s.relax();
        }
        s
    }

    /// The insert of a limited create: relaxed like `create` unless its transaction also
    /// removes sessions (`evicting`), which must commit durably (revocations are never
    /// relaxed: a crash must not bring an evicted session back).
    pub(crate) fn limited_create(&self, evicting: bool) -> &str {
        if evicting {
            &self.create_durable
        } else {
            &self.create
        }
    }

    /// `create`, `save` and `touch` evaluate [`RELAX`] once (`create_durable` never does): in
    /// the inserted id (an expression of `$1` only, so the row is the same), and in a one-row
    /// subquery joined by the updates (their `WHERE` on the key still uses the primary key
    /// index; when no row matches, nothing is written and nothing needs the setting).
    fn relax(&mut self) {
        self.create = self
            .create
            .replacen("VALUES ($1,", &format!("VALUES ($1 || {RELAX},"), 1);
        for stmt in [&mut self.save, &mut self.touch] {
            *stmt = stmt.replacen(
                " WHERE ",
                &format!(" FROM (SELECT {RELAX}) AS relaxed WHERE "),
                1,
            );
        }
    }

    fn express(schema: &str, table: &str, user_key: Option<&str>) -> Self {
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

    fn native(schema: &str, table: &str) -> Self {
        let qschema = quote(schema);
        let t = format!("{qschema}.{}", quote(table));
        let expires_idx = quote(&index_name(table, "expires_at_idx"));
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
                 \nCREATE INDEX IF NOT EXISTS {expires_idx} ON {t} (expires_at);\
                 \nCREATE INDEX IF NOT EXISTS {user_idx} ON {t} (user_id) WHERE user_id IS NOT NULL;",
                prelude = migrate_prelude(schema)
            ),
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
            delete_expired_batch: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE expires_at <= $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "_", "sessions", "Sessions_2", "_x9", &"a".repeat(63)] {
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
            &"a".repeat(64),
        ] {
            assert!(validate_ident("table", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_names_fit_and_differ() {
        assert_eq!(
            index_name("sessions", "user_id_idx"),
            "sessions_user_id_idx"
        );
        let a = "a".repeat(60) + "xyz";
        let b = "a".repeat(60) + "xyw";
        let ia = index_name(&a, "expires_at_idx");
        let ib = index_name(&b, "expires_at_idx");
        assert!(ia.len() <= MAX_IDENT_LEN && ib.len() <= MAX_IDENT_LEN);
        assert_ne!(ia, ib);
        assert!(validate_ident("index", &ia).is_ok());
    }

    #[test]
    fn statements_quote_names() {
        let s = Statements::new(Layout::Native, "app", "Sess", Durability::Full);
        assert!(s.load.contains("FROM \"app\".\"Sess\" WHERE"));
        assert!(s.migrate.contains("\"Sess_expires_at_idx\""));
        assert!(s.migrate.contains("nspname = 'app'"));
        assert!(!s.save.contains("synchronous_commit"));
    }

    #[test]
    fn relaxed_statements_set_synchronous_commit_for_writes_only() {
        for layout in [
            Layout::Native,
            Layout::Express {
                user_key: Some("userId".into()),
            },
        ] {
            let s = Statements::new(layout, "app", "s", Durability::RelaxedCommit);
            for w in [&s.create, &s.save, &s.touch] {
                assert_eq!(w.matches("synchronous_commit").count(), 1, "{w}");
            }
            for r in [
                &s.delete,
                &s.delete_for_user,
                &s.delete_expired_batch,
                &s.load,
                &s.create_durable,
            ] {
                assert!(!r.contains("synchronous_commit"), "{r}");
            }
        }
    }

    /// Issue 25, item 4: the eviction of a limited create shares the insert's transaction,
    /// so an evicting limited create must not relax its commit; one that evicts nothing may.
    #[test]
    fn an_evicting_limited_create_is_never_relaxed() {
        let full = Statements::new(Layout::Native, "app", "s", Durability::Full);
        let relaxed = Statements::new(Layout::Native, "app", "s", Durability::RelaxedCommit);
        for s in [&full, &relaxed] {
            assert!(!s.limited_create(true).contains("synchronous_commit"));
            assert!(!s.delete_ids.contains("synchronous_commit"));
            assert_eq!(s.limited_create(true), full.create);
        }
        assert_eq!(relaxed.limited_create(false), relaxed.create);
        assert!(relaxed.limited_create(false).contains("synchronous_commit"));
        assert!(!full.limited_create(false).contains("synchronous_commit"));
    }
}
