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

mod express;
mod native;

use crate::{BuildError, Durability};

/// In a statement, `''` that sets `synchronous_commit = off` for the statement's own
/// transaction when evaluated ([`Durability::RelaxedCommit`]).
pub(crate) const RELAX: &str = "left(set_config('synchronous_commit', 'off', true), 0)";

/// Longest identifier Postgres keeps (`NAMEDATALEN - 1`).
pub(crate) const MAX_IDENT_LEN: usize = 63;

/// Key of the transaction-scoped advisory lock every `migrate()` holds (ASCII "coatchk\0"),
/// shared by all coatcheck tables of a database so that concurrent migrations of tables in
/// one new schema serialise too.
pub(crate) const MIGRATE_LOCK_KEY: i64 = 0x636f_6174_6368_6b00;

/// Checks `name` against `^[A-Za-z_][A-Za-z0-9_]{0,62}$`.
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

/// A validated identifier, double-quoted (validation already excludes quotes; quoting keeps
/// reserved words and upper case working and literal).
pub(crate) fn quote(ident: &str) -> String {
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
pub(crate) fn migrate_prelude(schema: &str) -> String {
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
    /// What `finish_upgrade` sends: drops of what earlier builds needed and this one does
    /// not, each without blocking writes (`CONCURRENTLY`: one statement, no transaction).
    /// Empty: nothing to retire.
    pub retire: String,
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
        assert!(s.migrate.contains("\"Sess_expires_bucket_idx\""));
        assert!(!s.migrate.contains("Sess_expires_at_idx"));
        assert_eq!(
            s.retire,
            "DROP INDEX CONCURRENTLY IF EXISTS \"app\".\"Sess_expires_at_idx\""
        );
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
