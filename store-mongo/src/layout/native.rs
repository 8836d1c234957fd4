//! coatcheck's own document layout: one document per session with typed fields (id,
//! version, encoded data, user, creation and expiry dates, device details).

use super::*;

/// The native layout:
///
/// ```text
/// { _id: <id string>, version: <i64>, data: <Binary, generic subtype>,
///   user_id: <string, absent when none>, created_at: <date>, expires_at: <date> }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NativeLayout;

impl Layout for NativeLayout {
    fn expires_field(&self) -> &'static str {
        F_EXPIRES
    }

    fn user_field(&self) -> Option<&'static str> {
        Some(F_USER)
    }

    fn to_document(&self, record: &Record, codec: &dyn Codec) -> Result<Document, LayoutError> {
        let version = i64::try_from(record.version).map_err(|_| {
            EncodeError(format!(
                "version {} does not fit MongoDB's int64",
                record.version
            ))
        })?;
        let mut d = doc! {
            F_ID: record.id.as_str(),
            F_VERSION: version,
            F_DATA: encode_data(record, codec)?,
        };
        if let Some(user) = &record.user_id {
            d.insert(F_USER, user.as_str());
        }
        d.insert(F_CREATED, date(record.created_at));
        d.insert(F_EXPIRES, date(record.expires_at));
        d.extend(device_fields(record));
        Ok(d)
    }

    fn decode_document(&self, doc: &Document, codec: &dyn Codec) -> Result<Record, DecodeError> {
        let id = read_id(doc)?;
        let version = read_version(doc)?;
        let created_at = read_date(doc, F_CREATED)?;
        let expires_at = read_date(doc, F_EXPIRES)?;
        let user_id = read_user(doc)?;
        let data = codec.decode_for(&id, read_data(doc)?)?;
        let mut record = Record::new(id, created_at, expires_at);
        record.version = version;
        record.user_id = user_id;
        record.data = data;
        (record.device, record.last_seen) = read_device(doc, created_at)?;
        Ok(record)
    }

    fn save_filter(&self, record: &Record) -> Option<Document> {
        let version = i64::try_from(record.version).ok()?;
        Some(doc! { F_VERSION: version })
    }

    fn save_update(&self, record: &Record, codec: &dyn Codec) -> Result<Document, LayoutError> {
        let mut set = doc! {
            F_DATA: encode_data(record, codec)?,
            F_EXPIRES: date(record.expires_at),
        };
        set.extend(device_fields(record));
        let mut update = Document::new();
        let mut unset = Document::new();
        match &record.user_id {
            Some(user) => {
                set.insert(F_USER, user.as_str());
            }
            // Absent rather than null, so that the sparse user index skips the document.
            None => {
                unset.insert(F_USER, "");
            }
        }
        if record.device.is_none() {
            for f in [F_HANDLE, F_AGENT, F_IP] {
                unset.insert(f, "");
            }
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        update.insert("$set", set);
        update.insert("$inc", doc! { F_VERSION: 1_i64 });
        Ok(update)
    }

    fn info_projection(&self) -> Document {
        doc! { F_ID: 1, F_CREATED: 1, F_EXPIRES: 1, F_HANDLE: 1, F_AGENT: 1, F_IP: 1, F_SEEN: 1 }
    }

    fn decode_info(&self, doc: &Document) -> Result<SessionInfo, DecodeError> {
        let created = read_date(doc, F_CREATED)?;
        let (device, seen) = read_device(doc, created)?;
        Ok(
            SessionInfo::new(read_id(doc)?, created, read_date(doc, F_EXPIRES)?)
                .with_device(device, seen),
        )
    }

    fn seen_field(&self) -> Option<&'static str> {
        Some(F_SEEN)
    }

    fn indexes(&self) -> Vec<IndexModel> {
        vec![
            IndexModel::builder()
                .keys(doc! { F_EXPIRES: 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(0))
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! { F_USER: 1 })
                .options(IndexOptions::builder().sparse(true).build())
                .build(),
        ]
    }
}
