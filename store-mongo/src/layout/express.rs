//! The express-compatible layout: connect-mongo's documents, so an Express app and a Rust
//! app share sessions.
//!
//! ```text
//! { _id: <id string>, expires: <date>, session: <express-session's JSON, a string> }
//! ```
//!
//! This is connect-mongo's default (`stringify: true`); the TTL index `{expires: 1}` with
//! `expireAfterSeconds: 0` is the one connect-mongo creates (`autoRemove: 'native'`), so
//! either app may create it first. `expires` is the truth for expiry (Express's touch does
//! not rewrite the JSON). Express keeps no version: the version is a hash of the `session`
//! string, and a Rust `save` is a compare-and-set on that string (read it, compare, then
//! update only if it is still the same string); a Node write is last-write-wins. No user
//! index: the principal sits inside a JSON string, which cannot be indexed.

use std::sync::Arc;
use std::time::Duration;

use coatcheck_core::{
    content_version, Clock, Codec, DecodeError, EncodeError, ExpressFormat, Record, SessionInfo,
};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::{date, read_date, read_id, Layout, LayoutError, F_ID, MAX_DATA_BYTES};

pub(crate) const F_EXPIRES: &str = "expires";

/// connect-mongo's default `ttl`: the expiry of a document stored without `expires`.
const NO_EXPIRES_TTL: Duration = Duration::from_secs(14 * 86_400);
pub(crate) const F_SESSION: &str = "session";

/// connect-mongo's layout.
#[derive(Debug, Clone)]
pub(crate) struct ExpressLayout {
    pub(crate) format: ExpressFormat,
    /// For `cookie.originalMaxAge` (the time left at the write).
    pub(crate) clock: Arc<dyn Clock>,
}

impl ExpressLayout {
    fn json(&self, record: &Record) -> Result<String, LayoutError> {
        let json = self.format.encode(record, self.clock.now())?;
        if json.len() > MAX_DATA_BYTES {
            return Err(EncodeError(format!(
                "the session JSON is {} bytes; MongoDB documents are limited to 16 MiB",
                json.len()
            ))
            .into());
        }
        Ok(json)
    }
}

/// The `session` string of a stored document.
pub(crate) fn session_text(doc: &Document) -> Result<&str, DecodeError> {
    match doc.get(F_SESSION) {
        Some(Bson::String(s)) => Ok(s),
        Some(Bson::Document(_)) => Err(DecodeError::new(
            "stored `session` is an object (connect-mongo `stringify: false`); \
             express-compatible mode reads connect-mongo's default, a JSON string",
        )),
        Some(other) => Err(DecodeError::new(format!(
            "stored `session` is a BSON {:?}, expected a string",
            other.element_type()
        ))),
        None => Err(DecodeError::new("stored session has no `session` field")),
    }
}

impl Layout for ExpressLayout {
    fn expires_field(&self) -> &'static str {
        F_EXPIRES
    }

    fn user_field(&self) -> Option<&'static str> {
        None
    }

    fn content_field(&self) -> Option<&'static str> {
        Some(F_SESSION)
    }

    fn to_document(&self, record: &Record, _codec: &dyn Codec) -> Result<Document, LayoutError> {
        Ok(doc! {
            F_ID: record.id.as_str(),
            F_EXPIRES: date(record.expires_at),
            F_SESSION: self.json(record)?,
        })
    }

    fn decode_document(&self, doc: &Document, _codec: &dyn Codec) -> Result<Record, DecodeError> {
        let id = read_id(doc)?;
        let text = session_text(doc)?;
        let version = content_version(text.as_bytes());
        let session = self.format.decode(text.as_bytes())?;
        // connect-mongo reads a document without `expires` as live (its read filter is
        // `$or: [{expires: {$exists: false}}, {expires: {$gt: now}}]`): so does this store,
        // with the expiry the cookie states, else connect-mongo's default of 14 days from
        // now. The next write stores a real `expires`.
        let expires_at = if doc.contains_key(F_EXPIRES) {
            read_date(doc, F_EXPIRES)?
        } else {
            session
                .cookie_expires
                .unwrap_or_else(|| self.clock.now() + NO_EXPIRES_TTL)
        };
        Ok(session.into_record(id, expires_at, version))
    }

    /// Not used: a save compares the `session` string itself (see `content_field`).
    fn save_filter(&self, _record: &Record) -> Option<Document> {
        None
    }

    fn save_update(&self, record: &Record, _codec: &dyn Codec) -> Result<Document, LayoutError> {
        Ok(doc! { "$set": {
            F_EXPIRES: date(record.expires_at),
            F_SESSION: self.json(record)?,
        } })
    }

    fn info_projection(&self) -> Document {
        doc! { F_ID: 1, F_EXPIRES: 1 }
    }

    fn decode_info(&self, doc: &Document) -> Result<SessionInfo, DecodeError> {
        Ok(SessionInfo::new(
            read_id(doc)?,
            coatcheck_core::Timestamp::from_millis(0),
            read_date(doc, F_EXPIRES)?,
        ))
    }

    /// Exactly connect-mongo's `createIndex({expires: 1}, {background: true,
    /// expireAfterSeconds: 0})`: a server that compares index options (an older mongod, the
    /// MongoDB-wire test server) refuses a second spec for the same name that differs only
    /// in `background`, whichever app starts first. (The driver deprecates the option because
    /// current servers ignore it; it is here for the spec to be identical.)
    #[allow(deprecated)]
    fn indexes(&self) -> Vec<IndexModel> {
        vec![IndexModel::builder()
            .keys(doc! { F_EXPIRES: 1 })
            .options(
                IndexOptions::builder()
                    .background(true)
                    .expire_after(Duration::from_secs(0))
                    .build(),
            )
            .build()]
    }
}
