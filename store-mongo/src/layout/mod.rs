//! How a [`Record`] maps to a MongoDB document.
//!
//! The store talks to the collection only through a [`Layout`]: which field holds the expiry
//! (the TTL index key and the `$gt: now` filter), which holds the user, how a record becomes a
//! document and back, and what a `save` writes: [`NativeLayout`], and connect-mongo's
//! `{_id, expires, session: <JSON string>}` in `express`.

pub(crate) mod express;
mod native;

pub(crate) use native::NativeLayout;

use std::fmt;
use std::time::Duration;

use coatcheck_core::{
    Codec, DecodeError, Device, DeviceHandle, EncodeError, Record, SessionId, SessionInfo,
    Timestamp,
};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

/// Largest encoded session data accepted, leaving room under MongoDB's 16 MiB document limit
/// for the other fields.
pub(crate) const MAX_DATA_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

/// What one document layout must provide. Internal seam; see the module docs.
pub(crate) trait Layout: Send + Sync + fmt::Debug + 'static {
    /// The field holding `expires_at` as a BSON date (TTL index key, liveness filter).
    fn expires_field(&self) -> &'static str;

    /// The field holding the user id, if the layout keeps one (enables the user index).
    fn user_field(&self) -> Option<&'static str>;

    /// The whole document for `create`.
    fn to_document(&self, record: &Record, codec: &dyn Codec) -> Result<Document, LayoutError>;

    /// A stored document back to a record.
    fn decode_document(&self, doc: &Document, codec: &dyn Codec) -> Result<Record, DecodeError>;

    /// Extra filter terms for a compare-and-set `save` (beyond `_id` and liveness), or
    /// `None` when the record's version cannot be stored at all (then nothing can match).
    fn save_filter(&self, record: &Record) -> Option<Document>;

    /// The update document for `save`.
    fn save_update(&self, record: &Record, codec: &dyn Codec) -> Result<Document, LayoutError>;

    /// The projection `list_for_user` reads.
    fn info_projection(&self) -> Document;

    /// One projected document to a [`SessionInfo`].
    fn decode_info(&self, doc: &Document) -> Result<SessionInfo, DecodeError>;

    /// The indexes this layout needs.
    fn indexes(&self) -> Vec<IndexModel>;

    /// The field whose whole content the version is a hash of (express layout), or `None`
    /// when the layout stores a version counter.
    /// The field `touch` moves to now, where devices are kept.
    fn seen_field(&self) -> Option<&'static str> {
        None
    }

    fn content_field(&self) -> Option<&'static str> {
        None
    }
}

/// Turning a record into a document failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayoutError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

pub(crate) const F_ID: &str = "_id";
pub(crate) const F_VERSION: &str = "version";
pub(crate) const F_DATA: &str = "data";
pub(crate) const F_USER: &str = "user_id";
pub(crate) const F_CREATED: &str = "created_at";
pub(crate) const F_EXPIRES: &str = "expires_at";
pub(crate) const F_HANDLE: &str = "device_handle";
pub(crate) const F_AGENT: &str = "user_agent";
pub(crate) const F_IP: &str = "ip";
pub(crate) const F_SEEN: &str = "last_seen";

pub(crate) fn date(t: Timestamp) -> DateTime {
    DateTime::from_millis(t.as_millis())
}

fn encode_data(record: &Record, codec: &dyn Codec) -> Result<Binary, LayoutError> {
    let bytes = codec.encode_for(&record.id, &record.data)?;
    if bytes.len() > MAX_DATA_BYTES {
        return Err(EncodeError(format!(
            "encoded session data is {} bytes; MongoDB documents are limited to 16 MiB",
            bytes.len()
        ))
        .into());
    }
    Ok(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

fn type_name(b: &Bson) -> String {
    format!("{:?}", b.element_type())
}

fn field<'d>(doc: &'d Document, name: &str) -> Result<&'d Bson, DecodeError> {
    doc.get(name)
        .ok_or_else(|| DecodeError::new(format!("stored session has no `{name}` field")))
}

fn wrong_type(name: &str, got: &Bson, expected: &str) -> DecodeError {
    DecodeError::new(format!(
        "stored session field `{name}` is a BSON {}, expected {expected}",
        type_name(got)
    ))
}

/// The device fields and `last_seen` of a record (the device's only when it has one).
fn device_fields(record: &Record) -> Document {
    let mut d = doc! { F_SEEN: date(record.last_seen) };
    if let Some(device) = &record.device {
        d.insert(F_HANDLE, device.handle.as_str());
        if let Some(ua) = &device.user_agent {
            d.insert(F_AGENT, ua.as_str());
        }
        if let Some(ip) = &device.ip {
            d.insert(F_IP, ip.as_str());
        }
    }
    d
}

/// The device (`None` without a handle) and `last_seen` (`created` when absent: written
/// before devices were kept).
fn read_device(
    doc: &Document,
    created: Timestamp,
) -> Result<(Option<Device>, Timestamp), DecodeError> {
    let text = |name: &str| -> Result<Option<&str>, DecodeError> {
        match doc.get(name) {
            None | Some(Bson::Null) => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(wrong_type(name, other, "string")),
        }
    };
    let seen = match doc.get(F_SEEN) {
        None | Some(Bson::Null) => created,
        Some(_) => read_date(doc, F_SEEN)?,
    };
    let device = match text(F_HANDLE)? {
        None => None,
        Some(h) => {
            let handle = DeviceHandle::parse(h)
                .ok_or_else(|| DecodeError::new(format!("`{F_HANDLE}` is not a device handle")))?;
            Some(
                Device::new()
                    .with_handle(handle)
                    .with_user_agent(text(F_AGENT)?)
                    .with_ip(text(F_IP)?),
            )
        }
    };
    Ok((device, seen))
}

pub(crate) fn read_id(doc: &Document) -> Result<SessionId, DecodeError> {
    match field(doc, F_ID)? {
        Bson::String(s) => SessionId::parse(s)
            .map_err(|e| DecodeError::with_source("stored `_id` is not a valid session id", e)),
        other => Err(wrong_type(F_ID, other, "a string")),
    }
}

pub(crate) fn read_date(doc: &Document, name: &str) -> Result<Timestamp, DecodeError> {
    match field(doc, name)? {
        Bson::DateTime(d) => Ok(Timestamp::from_millis(d.timestamp_millis())),
        other => Err(wrong_type(name, other, "a date")),
    }
}

fn read_version(doc: &Document) -> Result<u64, DecodeError> {
    let v = match field(doc, F_VERSION)? {
        Bson::Int64(v) => *v,
        Bson::Int32(v) => i64::from(*v),
        other => return Err(wrong_type(F_VERSION, other, "an integer")),
    };
    match u64::try_from(v) {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(DecodeError::new(format!(
            "stored session version {v} is not a positive integer"
        ))),
    }
}

fn read_user(doc: &Document) -> Result<Option<String>, DecodeError> {
    match doc.get(F_USER) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(F_USER, other, "a string or null")),
    }
}

fn read_data(doc: &Document) -> Result<&[u8], DecodeError> {
    match field(doc, F_DATA)? {
        Bson::Binary(b) => Ok(&b.bytes),
        other => Err(wrong_type(F_DATA, other, "binary data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coatcheck_core::NativeCodec;
    use std::time::Duration;

    fn record() -> Record {
        let now = Timestamp::now();
        let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(60));
        r.data.insert("views".into(), 3.into());
        r.user_id = Some("alice".into());
        r.version = 7;
        r
    }

    #[test]
    fn document_round_trips() {
        let r = record();
        let d = NativeLayout.to_document(&r, &NativeCodec).unwrap();
        assert_eq!(d.get_i64(F_VERSION).unwrap(), 7);
        assert_eq!(NativeLayout.decode_document(&d, &NativeCodec).unwrap(), r);
        let mut anon = r.clone();
        anon.user_id = None;
        let d = NativeLayout.to_document(&anon, &NativeCodec).unwrap();
        assert!(!d.contains_key(F_USER));
        assert_eq!(
            NativeLayout.decode_document(&d, &NativeCodec).unwrap(),
            anon
        );
    }

    #[test]
    fn wrong_shapes_are_decode_errors() {
        let good = NativeLayout.to_document(&record(), &NativeCodec).unwrap();
        let mut cases: Vec<Document> = Vec::new();
        for f in [F_ID, F_VERSION, F_DATA, F_CREATED, F_EXPIRES] {
            let mut d = good.clone();
            d.remove(f);
            cases.push(d);
            let mut d = good.clone();
            d.insert(f, Bson::Double(1.5));
            cases.push(d);
        }
        let mut d = good.clone();
        d.insert(F_USER, 5_i32);
        cases.push(d);
        let mut d = good.clone();
        d.insert(F_VERSION, 0_i64);
        cases.push(d);
        let mut d = good.clone();
        d.insert(F_VERSION, -3_i32);
        cases.push(d);
        let mut d = good.clone();
        d.insert(F_ID, "short");
        cases.push(d);
        let mut d = good.clone();
        d.insert(
            F_DATA,
            Binary {
                subtype: BinarySubtype::Generic,
                bytes: b"\xffgarbage".to_vec(),
            },
        );
        cases.push(d);
        for d in cases {
            assert!(
                NativeLayout.decode_document(&d, &NativeCodec).is_err(),
                "{d}"
            );
        }
    }

    #[test]
    fn save_update_unsets_a_removed_user() {
        let mut r = record();
        r.user_id = None;
        let u = NativeLayout.save_update(&r, &NativeCodec).unwrap();
        assert!(u.get_document("$unset").unwrap().contains_key(F_USER));
        assert_eq!(
            u.get_document("$inc").unwrap().get_i64(F_VERSION).unwrap(),
            1
        );
        r.version = u64::MAX;
        assert!(NativeLayout.save_filter(&r).is_none());
    }
}
