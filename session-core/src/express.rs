//! express-session's session JSON, as connect-redis, connect-pg-simple and connect-mongo store it.
//!
//! A store in express-compatible mode keeps sessions exactly where and how the Node packages
//! keep them, so an Express app and a Rust app can share one store and one `connect.sid`
//! cookie. This module is the format both ways; the stores add the key / table / collection
//! layout (see `shared/EXPRESS-FORMAT.md` in the repository).
//!
//! What bends to Express:
//!
//! - **Expiry.** The store's TTL / `expire` column / `expires` field is the truth, because
//!   Express's `touch` does not rewrite the JSON. `cookie.expires` is read only when the store
//!   has no expiry of its own.
//! - **The `cookie` object** is always written (Express answers 500 without one), first, with
//!   `originalMaxAge` and `expires` consistent with the record's expiry. Express resets
//!   `expires = now + originalMaxAge` on every request it serves, so `originalMaxAge` must be
//!   the idle timeout, not the time left.
//! - **No creation time.** Express records none; sessions read from this format report
//!   `created_at` as the Unix epoch, and stores declare
//!   [`Capabilities::no_creation_time`](crate::Capabilities::no_creation_time) so the
//!   middleware refuses an absolute timeout it could not enforce.
//! - **The principal** lives in the session data under a key (default `userId`, as in the
//!   Express tutorials), so a login on either side is a login on both. A string or an integer
//!   there is the record's `user_id`; the key also stays in the data.
//! - **Reserved keys.** Express drops stored keys named after its own methods
//!   ([`EXPRESS_RESERVED_KEYS`]); writing one is an [`EncodeError`] rather than a silent loss.
//! - **No version.** Express keeps none; stores derive an opaque version from the stored text
//!   (a content hash), which keeps Rust-to-Rust saves compare-and-set. A Node write is
//!   last-write-wins, as it is between two Node processes.

use std::time::Duration;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::codec::check_depth;
use crate::{Data, DecodeError, EncodeError, Record, SessionId, Timestamp};

/// Keys express-session drops from a stored session (its own methods and properties), plus
/// `cookie`, which it owns. A session shared with Express must not use them.
pub const EXPRESS_RESERVED_KEYS: [&str; 9] = [
    "cookie",
    "id",
    "req",
    "save",
    "touch",
    "reload",
    "regenerate",
    "destroy",
    "resetMaxAge",
];

/// Whether express-session would drop or own this key ([`EXPRESS_RESERVED_KEYS`]).
///
/// ```
/// assert!(coatcheck::core::is_express_reserved("regenerate"));
/// assert!(!coatcheck::core::is_express_reserved("userId"));
/// ```
pub fn is_express_reserved(key: &str) -> bool {
    EXPRESS_RESERVED_KEYS.contains(&key)
}

/// What `cookie.originalMaxAge` says when a store writes a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpressMaxAge {
    /// The time from the write to `expires_at`, rounded to the second. Equals the idle timeout
    /// when the middleware writes (it sets `expires_at = now + idle`), so it never needs
    /// configuring twice. The default.
    Remaining,
    /// A fixed value: the Node app's `cookie.maxAge`.
    Fixed(Duration),
    /// A browser-session cookie: `"originalMaxAge": null, "expires": null`. The store's own
    /// expiry still ends the session on the server.
    BrowserSession,
}

/// The express-session format: how a [`Record`] becomes express-session's JSON and back.
///
/// ```
/// use coatcheck::core::{ExpressFormat, Record, SessionId, Timestamp};
/// use std::time::Duration;
///
/// let format = ExpressFormat::new();
/// let now = Timestamp::from_millis(1_795_000_000_000);
/// let mut record = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
/// record.data.insert("counter".into(), 2.into());
/// record.user_id = Some("alice".into());
/// let json = format.encode(&record, now).unwrap();
/// assert!(json.starts_with(r#"{"cookie":{"originalMaxAge":3600000,"expires":"#));
/// assert!(json.ends_with(r#""counter":2,"userId":"alice"}"#));
///
/// let back = format.decode(json.as_bytes()).unwrap();
/// assert_eq!(back.user_id.as_deref(), Some("alice"));
/// assert_eq!(back.cookie_expires, Some(record.expires_at));
/// assert_eq!(back.data["counter"], 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpressFormat {
    /// `cookie.originalMaxAge` on write. Default [`ExpressMaxAge::Remaining`].
    pub max_age: ExpressMaxAge,
    /// `cookie.path`. Default `/`.
    pub path: String,
    /// `cookie.httpOnly`. Default `true`.
    pub http_only: bool,
    /// `cookie.secure`. Default `true`, coatcheck's secure default. Express re-sends the
    /// cookie with the attributes stored here, so this must match the deployment: with
    /// `false`, the Node app re-issues the cookie without `Secure`. Set `false` only for
    /// plain-HTTP development (express-session's own default).
    pub secure: bool,
    /// `cookie.sameSite`, e.g. `lax`; `None` leaves it out. Default `lax`.
    pub same_site: Option<String>,
    /// `cookie.domain`; `None` leaves it out. Default `None`.
    pub domain: Option<String>,
    /// The data key holding the principal. Default `userId`; `None`: no principal mapping.
    pub user_key: Option<String>,
}

impl Default for ExpressFormat {
    fn default() -> Self {
        ExpressFormat {
            max_age: ExpressMaxAge::Remaining,
            path: "/".into(),
            http_only: true,
            secure: true,
            same_site: Some("lax".into()),
            domain: None,
            user_key: Some("userId".into()),
        }
    }
}

/// One session as read from express-session's JSON.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExpressSession {
    /// Every key but `cookie`, in stored order (the principal's key included).
    pub data: Data,
    /// `cookie.expires`, when present and readable. Stores prefer their own expiry.
    pub cookie_expires: Option<Timestamp>,
    /// The principal found under [`ExpressFormat::user_key`].
    pub user_id: Option<String>,
}

impl ExpressSession {
    /// The [`Record`] for this session, given the store's expiry and version.
    /// `created_at` is the Unix epoch: Express records no creation time.
    pub fn into_record(self, id: SessionId, expires_at: Timestamp, version: u64) -> Record {
        let mut r = Record::new(id, Timestamp::from_millis(0), expires_at);
        r.data = self.data;
        r.user_id = self.user_id;
        r.version = version;
        r
    }
}

impl ExpressFormat {
    /// The defaults: max age from the record's expiry, path `/`, `httpOnly`, `secure`,
    /// `sameSite: lax`, the principal under `userId`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`ExpressFormat::max_age`].
    pub fn max_age(mut self, max_age: ExpressMaxAge) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets [`ExpressFormat::path`].
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets [`ExpressFormat::http_only`].
    pub fn http_only(mut self, yes: bool) -> Self {
        self.http_only = yes;
        self
    }

    /// Sets [`ExpressFormat::secure`].
    pub fn secure(mut self, yes: bool) -> Self {
        self.secure = yes;
        self
    }

    /// Sets [`ExpressFormat::same_site`].
    pub fn same_site(mut self, same_site: Option<&str>) -> Self {
        self.same_site = same_site.map(str::to_owned);
        self
    }

    /// Sets [`ExpressFormat::domain`].
    pub fn domain(mut self, domain: Option<&str>) -> Self {
        self.domain = domain.map(str::to_owned);
        self
    }

    /// Sets [`ExpressFormat::user_key`].
    pub fn user_key(mut self, key: Option<&str>) -> Self {
        self.user_key = key.map(str::to_owned);
        self
    }

    /// Reads express-session's JSON. Any input gives a session or a [`DecodeError`]; a
    /// missing `cookie` is accepted (Express itself would answer 500), a `cookie` that is not
    /// an object is an error, an unreadable `cookie.expires` is ignored (the store's expiry
    /// is the truth).
    pub fn decode(&self, bytes: &[u8]) -> Result<ExpressSession, DecodeError> {
        let mut data: Data = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::with_source("invalid express-session JSON", e))?;
        let cookie_expires = match data.shift_remove("cookie") {
            None | Some(Value::Null) => None,
            Some(Value::Object(cookie)) => cookie
                .get("expires")
                .and_then(Value::as_str)
                .and_then(parse_iso),
            Some(_) => {
                return Err(DecodeError::new(
                    "express-session JSON: `cookie` is not an object",
                ))
            }
        };
        let user_id = self
            .user_key
            .as_deref()
            .and_then(|k| data.get(k))
            .and_then(principal);
        Ok(ExpressSession {
            data,
            cookie_expires,
            user_id,
        })
    }

    /// Writes express-session's JSON for `record` at `now`: the `cookie` object first, then the
    /// data in order, with the principal under [`ExpressFormat::user_key`].
    ///
    /// An [`EncodeError`] for a reserved key ([`EXPRESS_RESERVED_KEYS`]) in the data, for a
    /// principal that cannot be stored because the data already uses its key for something
    /// else, and for values nested deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    pub fn encode(&self, record: &Record, now: Timestamp) -> Result<String, EncodeError> {
        check_depth(&record.data)?;
        if let Some(k) = record.data.keys().find(|k| is_express_reserved(k)) {
            return Err(EncodeError(format!(
                "`{k}` is reserved by express-session and would be dropped by Express"
            )));
        }
        let principal = match self.user_key.as_deref() {
            None => Principal::Keep,
            Some(key) => match (&record.user_id, record.data.get(key)) {
                (None, None) => Principal::Keep,
                (Some(u), None) => Principal::Append(key, u),
                (user, Some(v)) => match (user, principal(v)) {
                    // The stored form (e.g. Node's integer id) is kept when it names the same user.
                    (Some(u), Some(p)) if *u == p => Principal::Keep,
                    (Some(u), Some(_)) => Principal::Replace(key, u),
                    (Some(_), None) => {
                        return Err(EncodeError(format!(
                            "session key `{key}` holds a non-principal value; it cannot also hold the user id"
                        )))
                    }
                    // Logged out: the principal goes.
                    (None, Some(_)) => Principal::Drop(key),
                    (None, None) => Principal::Keep,
                },
            },
        };
        let wire = Wire {
            cookie: self.cookie(record, now),
            data: &record.data,
            principal,
        };
        serde_json::to_string(&wire).map_err(|e| EncodeError(e.to_string()))
    }

    fn cookie(&self, record: &Record, now: Timestamp) -> Map<String, Value> {
        let mut c = Map::with_capacity(7);
        let (max_age, expires) = match self.max_age {
            ExpressMaxAge::BrowserSession => (Value::Null, Value::Null),
            ExpressMaxAge::Fixed(d) => (
                Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                iso(record.expires_at),
            ),
            ExpressMaxAge::Remaining => {
                let ms = record
                    .expires_at
                    .as_millis()
                    .saturating_sub(now.as_millis());
                let rounded = ms.saturating_add(500).div_euclid(1000).saturating_mul(1000);
                (Value::from(rounded.max(0)), iso(record.expires_at))
            }
        };
        c.insert("originalMaxAge".into(), max_age);
        c.insert("expires".into(), expires);
        c.insert("secure".into(), Value::Bool(self.secure));
        c.insert("httpOnly".into(), Value::Bool(self.http_only));
        if let Some(d) = &self.domain {
            c.insert("domain".into(), Value::String(d.clone()));
        }
        c.insert("path".into(), Value::String(self.path.clone()));
        if let Some(s) = &self.same_site {
            c.insert("sameSite".into(), Value::String(s.clone()));
        }
        c
    }
}

/// What `encode` does with the principal's key.
enum Principal<'a> {
    /// Write the data as it is.
    Keep,
    /// The key holds another user: write this one in its place.
    Replace(&'a str, &'a str),
    /// Logged out: leave the key out.
    Drop(&'a str),
    /// The key is absent: add it after the data.
    Append(&'a str, &'a str),
}

/// The session as express-session's JSON, serialized straight from the record's data (no
/// copy of the values): `cookie` first, then the data in order, the principal applied.
struct Wire<'a> {
    cookie: Map<String, Value>,
    data: &'a Data,
    principal: Principal<'a>,
}

impl serde::Serialize for Wire<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("cookie", &self.cookie)?;
        for (k, v) in self.data {
            match self.principal {
                Principal::Replace(key, user) if key == k => m.serialize_entry(k, user)?,
                Principal::Drop(key) if key == k => {}
                _ => m.serialize_entry(k, v)?,
            }
        }
        if let Principal::Append(key, user) = self.principal {
            m.serialize_entry(key, user)?;
        }
        m.end()
    }
}

/// A principal as Express apps store it: a string, or an integer id.
/// The principal a value under the principal key names: a string, or an integer (Node's
/// numeric ids) in decimal; anything else names none.
///
/// ```
/// use serde_json::json;
/// assert_eq!(coatcheck::core::express_principal(&json!(42)).as_deref(), Some("42"));
/// assert_eq!(coatcheck::core::express_principal(&json!("ann")).as_deref(), Some("ann"));
/// assert_eq!(coatcheck::core::express_principal(&json!({"id": 1})), None);
/// ```
pub fn express_principal(v: &Value) -> Option<String> {
    principal(v)
}

fn principal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `Date.prototype.toISOString`: `2026-11-22T07:25:15.940Z`.
fn iso(t: Timestamp) -> Value {
    let nanos = i128::from(t.as_millis()) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(dt) => {
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            dt.format(&fmt).map(Value::String).unwrap_or(Value::Null)
        }
        Err(_) => Value::Null,
    }
}

fn parse_iso(s: &str) -> Option<Timestamp> {
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1_000_000))
        .ok()
        .map(Timestamp::from_millis)
}

/// An opaque version for stored text: the first 8 bytes of its SHA-256. For stores that
/// derive versions in Rust rather than on the server.
///
/// ```
/// use coatcheck::core::content_version;
/// assert_eq!(content_version(b"a"), content_version(b"a"));
/// assert_ne!(content_version(b"a"), content_version(b"b"));
/// ```
pub fn content_version(bytes: &[u8]) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REAL: &str = r#"{"cookie":{"originalMaxAge":3600000,"expires":"2026-11-22T07:25:15.940Z","secure":false,"httpOnly":true,"path":"/","sameSite":"lax"},"userId":"alice","counter":2}"#;

    fn id() -> SessionId {
        SessionId::parse("hk_Tvp_af4vfm-vuRFUKIKmCIEhHXSaz").unwrap()
    }

    #[test]
    fn reads_and_writes_the_observed_session_byte_for_byte() {
        let f = ExpressFormat::new().secure(false);
        let s = f.decode(REAL.as_bytes()).unwrap();
        let expires = parse_iso("2026-11-22T07:25:15.940Z").unwrap();
        assert_eq!(s.cookie_expires, Some(expires));
        assert_eq!(s.user_id.as_deref(), Some("alice"));
        assert_eq!(
            s.data.keys().collect::<Vec<_>>(),
            ["userId", "counter"].iter().collect::<Vec<_>>()
        );
        let r = s.into_record(id(), expires, 7);
        let now = Timestamp::from_millis(expires.as_millis() - 3_600_000);
        assert_eq!(f.encode(&r, now).unwrap(), REAL);
    }

    #[test]
    fn iso_matches_javascript() {
        assert_eq!(
            iso(Timestamp::from_millis(0)),
            json!("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            iso(Timestamp::from_millis(1_795_332_315_940)),
            json!("2026-11-22T07:25:15.940Z")
        );
        assert_eq!(
            parse_iso("2026-11-22T07:25:15.940Z"),
            Some(Timestamp::from_millis(1_795_332_315_940))
        );
        assert_eq!(iso(Timestamp::from_millis(i64::MAX)), Value::Null);
    }

    #[test]
    fn principal_mapping_keeps_node_integers_and_follows_login_and_logout() {
        let f = ExpressFormat::new();
        let s = f.decode(br#"{"cookie":{},"userId":42,"a":1}"#).unwrap();
        assert_eq!(s.user_id.as_deref(), Some("42"));
        let now = Timestamp::from_millis(1_000_000);
        let mut r = s.into_record(id(), now + Duration::from_secs(60), 1);
        let out: Value = serde_json::from_str(&f.encode(&r, now).unwrap()).unwrap();
        assert_eq!(out["userId"], json!(42), "same user keeps Node's integer");
        r.user_id = Some("bob".into());
        let out: Value = serde_json::from_str(&f.encode(&r, now).unwrap()).unwrap();
        assert_eq!(out["userId"], json!("bob"));
        r.user_id = None;
        let out: Value = serde_json::from_str(&f.encode(&r, now).unwrap()).unwrap();
        assert!(out.get("userId").is_none(), "logout removes the principal");
        assert_eq!(out["a"], json!(1));
        // a non-principal value under the key is data, kept as is
        let s = f.decode(br#"{"cookie":{},"userId":{"x":1}}"#).unwrap();
        assert_eq!(s.user_id, None);
        let r = s.into_record(id(), now + Duration::from_secs(60), 1);
        let out: Value = serde_json::from_str(&f.encode(&r, now).unwrap()).unwrap();
        assert_eq!(out["userId"], json!({"x": 1}));
        let mut r = r;
        r.user_id = Some("carol".into());
        assert!(f.encode(&r, now).is_err());
        // no mapping
        let f = ExpressFormat::new().user_key(None);
        assert_eq!(f.decode(REAL.as_bytes()).unwrap().user_id, None);
    }

    #[test]
    fn cookie_object_follows_the_max_age_setting() {
        let now = Timestamp::from_millis(1_795_332_315_940);
        let mut r = Record::new(id(), now, now + Duration::from_millis(1_799_700));
        r.data.insert("k".into(), json!("v"));
        let get = |f: ExpressFormat| -> Value {
            serde_json::from_str::<Value>(&f.encode(&r, now).unwrap()).unwrap()["cookie"].clone()
        };
        assert_eq!(
            get(ExpressFormat::new())["originalMaxAge"],
            json!(1_800_000)
        );
        let c = get(ExpressFormat::new().max_age(ExpressMaxAge::Fixed(Duration::from_secs(60))));
        assert_eq!(c["originalMaxAge"], json!(60_000));
        let c = get(ExpressFormat::new()
            .max_age(ExpressMaxAge::BrowserSession)
            .secure(true)
            .domain(Some("example.com"))
            .same_site(None));
        assert_eq!(
            c,
            json!({"originalMaxAge": null, "expires": null, "secure": true, "httpOnly": true,
                   "domain": "example.com", "path": "/"})
        );
    }

    #[test]
    fn reserved_keys_are_refused_and_bad_input_is_a_decode_error() {
        let f = ExpressFormat::new();
        let now = Timestamp::from_millis(0);
        for k in EXPRESS_RESERVED_KEYS {
            let mut r = Record::new(id(), now, now + Duration::from_secs(1));
            r.data.insert(k.into(), json!(1));
            assert!(f.encode(&r, now).is_err(), "{k}");
        }
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"{",
            b"{\"cookie\":1}",
            b"{\"cookie\":\"x\"}",
            b"\xff",
        ] {
            assert!(f.decode(bad).is_err(), "{bad:?}");
        }
        // unreadable expiry is ignored, not an error
        let s = f
            .decode(br#"{"cookie":{"expires":"yesterday"},"a":1}"#)
            .unwrap();
        assert_eq!(s.cookie_expires, None);
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(f.decode(deep.as_bytes()).is_err());
    }
}
