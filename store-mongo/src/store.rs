//! [`MongoStore`]: its constructors and the [`SessionStore`] implementation.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use coatcheck_core::{
    content_version, Capabilities, Clock, Codec, Record, SessionId, SessionInfo, SessionLimit,
    SessionStore, StoreError, Timestamp,
};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};

use crate::layout::express;
use crate::layout::{date, Layout, LayoutError, F_ID};
use crate::{
    BuildError, MongoStoreBuilder, DEFAULT_COLLECTION, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER_SELECTION_TIMEOUT,
};

/// A [`SessionStore`] on a MongoDB collection.
///
/// Cheap to clone: clones share the driver's connection pool. Build one per application
/// (not per request) with [`MongoStore::connect`] or [`MongoStore::builder`].
///
/// ```no_run
/// use coatcheck::core::{Record, SessionId, SessionStore, Timestamp};
/// use coatcheck::mongo::MongoStore;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MongoStore::connect("mongodb://127.0.0.1:27017", "myapp").await?;
/// let now = Timestamp::now();
/// let mut record = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
/// record.user_id = Some("alice".into());
/// store.create(&record).await?;
/// record.data.insert("views".into(), 1.into());
/// record.version = store.save(&record).await?; // 2
/// assert_eq!(store.list_for_user("alice").await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MongoStore {
    pub(crate) collection: Collection<Document>,
    /// The same collection, with the write concern of revocations
    /// ([`MongoStoreBuilder::revocation_write_concern`]) when one is set.
    pub(crate) revocations: Collection<Document>,
    pub(crate) layout: Arc<dyn Layout>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("namespace", &self.collection.namespace().to_string())
            .field("layout", &self.layout)
            .field("codec", &self.codec)
            .field("clock", &self.clock)
            .finish()
    }
}

/// Whether a driver error is a duplicate key error (E11000).
pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    const DUPLICATE_KEY: [i32; 2] = [11000, 11001];
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => DUPLICATE_KEY.contains(&w.code),
        ErrorKind::Command(c) => DUPLICATE_KEY.contains(&c.code),
        _ => false,
    }
}

pub(crate) fn backend(e: mongodb::error::Error) -> StoreError {
    StoreError::backend(e)
}

impl From<LayoutError> for StoreError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::Encode(e) => StoreError::Encode(e),
        }
    }
}

impl MongoStore {
    /// Connects to `url`, uses `database` and the `sessions` collection, and ensures the
    /// indexes.
    ///
    /// Unless the URL sets them (`serverSelectionTimeoutMS`, `connectTimeoutMS`), server
    /// selection and connecting are bounded by [`DEFAULT_SERVER_SELECTION_TIMEOUT`] and
    /// [`DEFAULT_CONNECT_TIMEOUT`], so an unreachable server turns into
    /// [`StoreError::Backend`] within seconds instead of hanging requests.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), coatcheck::mongo::BuildError> {
    /// let store = coatcheck::mongo::MongoStore::connect(
    ///     "mongodb://127.0.0.1:27017/?serverSelectionTimeoutMS=1000",
    ///     "myapp",
    /// )
    /// .await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, database: &str) -> Result<Self, BuildError> {
        let options = ClientOptions::parse(url)
            .await
            .map_err(BuildError::Options)?;
        Self::connect_with_options(options, database).await
    }

    /// Like [`connect`](Self::connect), with client options you built yourself (credentials,
    /// TLS, pool size, timeouts). Server selection and connect timeouts you left unset get the
    /// defaults above. Ensures the indexes.
    ///
    /// ```no_run
    /// use mongodb::options::ClientOptions;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut options = ClientOptions::parse("mongodb://db.internal:27017").await?;
    /// options.server_selection_timeout = Some(Duration::from_secs(2));
    /// options.max_pool_size = Some(50);
    /// let store = coatcheck::mongo::MongoStore::connect_with_options(options, "myapp").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_options(
        options: ClientOptions,
        database: &str,
    ) -> Result<Self, BuildError> {
        let client = Self::client_with_defaults(options)?;
        Self::builder(&client, database).build_with_indexes().await
    }

    /// A driver client from `options`, with [`DEFAULT_SERVER_SELECTION_TIMEOUT`] and
    /// [`DEFAULT_CONNECT_TIMEOUT`] filled in where unset. No I/O.
    ///
    /// ```
    /// use mongodb::options::ClientOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = ClientOptions::parse("mongodb://127.0.0.1:27017").await?;
    /// let client = coatcheck::mongo::MongoStore::client_with_defaults(options)?;
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "myapp").build()?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn client_with_defaults(mut options: ClientOptions) -> Result<Client, BuildError> {
        options
            .server_selection_timeout
            .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
        Client::with_options(options).map_err(BuildError::Options)
    }

    /// A builder on an existing client (cloned; clones share one connection pool), for
    /// choosing the collection, codec and clock. The client's own timeouts apply: set
    /// `server_selection_timeout` on it if you do not want the driver's 30 s default (or make
    /// it with [`client_with_defaults`](Self::client_with_defaults)).
    ///
    /// ```
    /// use coatcheck::core::ManualClock;
    /// use coatcheck::core::Timestamp;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "tests")
    ///     .collection("sessions_under_test")
    ///     .clock(ManualClock::new(Timestamp::from_millis(0)))
    ///     .build()?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &Client, database: &str) -> MongoStoreBuilder {
        MongoStoreBuilder {
            client: client.clone(),
            database: database.to_owned(),
            collection: DEFAULT_COLLECTION.to_owned(),
            options: coatcheck_core::StoreOptions::new(),
            revocation_write_concern: None,
        }
    }

    /// A store on `database.collection` of an existing client, with the default codec and
    /// clock. No I/O; call [`ensure_indexes`](Self::ensure_indexes) once at startup.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::from_client(&client, "myapp", "sessions")?;
    /// assert_eq!(store.collection_name(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn from_client(
        client: &Client,
        database: &str,
        collection: &str,
    ) -> Result<Self, BuildError> {
        Self::builder(client, database)
            .collection(collection)
            .build()
    }

    /// Creates the TTL index on `expires_at` (`expireAfterSeconds: 0`) and the sparse index on
    /// `user_id`, in one `createIndexes` command. Idempotent: an identical index is left as
    /// it is. Fails with [`BuildError::Indexes`] when the server is unreachable or an index
    /// on the same key exists with other options.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::from_client(&client, "myapp", "sessions")?;
    /// store.ensure_indexes().await?;
    /// store.ensure_indexes().await?; // again: nothing changes
    /// # Ok(()) }
    /// ```
    pub async fn ensure_indexes(&self) -> Result<(), BuildError> {
        self.collection
            .create_indexes(self.layout.indexes())
            .await
            .map_err(BuildError::Indexes)?;
        tracing::debug!(namespace = %self.collection.namespace(), "session indexes ensured");
        Ok(())
    }

    /// The collection the sessions live in, for inspection, backups or tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::from_client(&client, "myapp", "sessions")?;
    /// assert_eq!(store.collection().name(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// The collection's name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "myapp").build()?;
    /// assert_eq!(store.collection_name(), coatcheck::mongo::DEFAULT_COLLECTION);
    /// # Ok(()) }
    /// ```
    pub fn collection_name(&self) -> &str {
        self.collection.name()
    }

    /// The database the collection is in.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "myapp").build()?;
    /// assert_eq!(store.database().name(), "myapp");
    /// # Ok(()) }
    /// ```
    pub fn database(&self) -> Database {
        self.collection
            .client()
            .database(&self.collection.namespace().db)
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// `{expires_at: {$gt: now}}` merged into `filter`.
    pub(crate) fn live(&self, mut filter: Document, now: Timestamp) -> Document {
        let field = self.layout.expires_field();
        if self.layout.content_field().is_some() {
            // Express layout: a document without `expires` is live, as for connect-mongo.
            filter.insert(
                "$or",
                vec![
                    doc! { field: { "$exists": false } },
                    doc! { field: { "$gt": date(now) } },
                ],
            );
        } else {
            filter.insert(field, doc! { "$gt": date(now) });
        }
        filter
    }

    pub(crate) fn user_field(&self) -> Result<&'static str, StoreError> {
        self.layout.user_field().ok_or(StoreError::Unsupported(
            "connect-mongo's layout keeps the principal inside a JSON string: no user index",
        ))
    }

    /// The failure path of `save`: is a live record with this id there at all?
    /// Compare-and-set on the stored content (express layout): read the live document's
    /// content, compare its hash with the record's version, then update only if the content
    /// is still that same string.
    pub(crate) async fn save_on_content(
        &self,
        record: &Record,
        field: &'static str,
        update: Document,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let current = self
            .collection
            .find_one(self.live(doc! { F_ID: record.id.as_str() }, now))
            .projection(doc! { field: 1 })
            .await
            .map_err(backend)?;
        let Some(current) = current else {
            return Err(StoreError::NotFound);
        };
        let text = express::session_text(&current)?;
        if content_version(text.as_bytes()) != record.version {
            return Err(StoreError::Conflict);
        }
        let new_version = match update.get_document("$set").ok().and_then(|s| s.get(field)) {
            Some(Bson::String(new)) => content_version(new.as_bytes()),
            _ => return Err(StoreError::backend("express save update lacks its content")),
        };
        let filter = self.live(doc! { F_ID: record.id.as_str(), field: text }, now);
        let result = self
            .collection
            .update_one(filter, update)
            .await
            .map_err(backend)?;
        if result.matched_count == 1 {
            Ok(new_version)
        } else {
            Err(self.conflict_or_not_found(&record.id, now).await?)
        }
    }

    pub(crate) async fn conflict_or_not_found(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<StoreError, StoreError> {
        let found = self
            .collection
            .find_one(self.live(doc! { F_ID: id.as_str() }, now))
            .projection(doc! { F_ID: 1 })
            .await
            .map_err(backend)?;
        Ok(if found.is_some() {
            tracing::debug!(session = %id.short_hash(), "save: version conflict");
            StoreError::Conflict
        } else {
            tracing::debug!(session = %id.short_hash(), "save: no live session");
            StoreError::NotFound
        })
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let document = self.layout.to_document(record, &*self.codec)?;
        match self.collection.insert_one(&document).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                // Failure path only. The id may be held by an expired document the TTL monitor
                // has not removed yet, which counts as absent: replace it, but only if it is
                // still expired. `upsert` covers a document removed in between; a live one
                // makes the upsert's insert fail on `_id`, which means the id is taken.
                let now = self.now();
                let filter = doc! {
                    F_ID: record.id.as_str(),
                    self.layout.expires_field(): { "$lte": date(now) },
                };
                match self
                    .collection
                    .replace_one(filter, &document)
                    .upsert(true)
                    .await
                {
                    Ok(r) if r.matched_count == 1 || r.upserted_id.is_some() => {
                        tracing::debug!(session = %record.id.short_hash(), "create: replaced an expired document");
                        Ok(())
                    }
                    Ok(_) => Err(StoreError::IdTaken),
                    Err(e) if is_duplicate_key(&e) => {
                        tracing::debug!(session = %record.id.short_hash(), "create: id taken");
                        Err(StoreError::IdTaken)
                    }
                    Err(e) => Err(backend(e)),
                }
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let now = self.now();
        let found = self
            .collection
            .find_one(self.live(doc! { F_ID: id.as_str() }, now))
            .await
            .map_err(backend)?;
        match found {
            None => Ok(None),
            Some(d) => match self.layout.decode_document(&d, &*self.codec) {
                Ok(r) if r.id == *id => Ok(Some(r)),
                Ok(_) => Err(StoreError::Decode(coatcheck_core::DecodeError::new(
                    "stored `_id` differs from the requested id",
                ))),
                Err(e) => {
                    tracing::warn!(session = %id.short_hash(), error = %e, "stored session is unreadable");
                    Err(StoreError::Decode(e))
                }
            },
        }
    }

    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        let now = self.now();
        let update = self.layout.save_update(record, &*self.codec)?;
        if let Some(field) = self.layout.content_field() {
            return self.save_on_content(record, field, update, now).await;
        }
        let (Some(extra), Some(next)) = (
            self.layout.save_filter(record),
            record.version.checked_add(1),
        ) else {
            // A version no stored document can have: nothing matches.
            return Err(self.conflict_or_not_found(&record.id, now).await?);
        };
        let mut filter = doc! { F_ID: record.id.as_str() };
        filter.extend(extra);
        let result = self
            .collection
            .update_one(self.live(filter, now), update)
            .await
            .map_err(backend)?;
        if result.matched_count == 1 {
            Ok(next)
        } else {
            Err(self.conflict_or_not_found(&record.id, now).await?)
        }
    }

    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        let now = self.now();
        let result = self
            .collection
            .update_one(self.live(doc! { F_ID: id.as_str() }, now), {
                let mut set = doc! { self.layout.expires_field(): date(expires_at) };
                if let Some(seen) = self.layout.seen_field() {
                    set.insert(seen, date(now));
                }
                doc! { "$set": set }
            })
            .await
            .map_err(backend)?;
        Ok(result.matched_count == 1)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let now = self.now();
        let result = self
            .revocations
            .delete_one(self.live(doc! { F_ID: id.as_str() }, now))
            .await
            .map_err(backend)?;
        Ok(result.deleted_count == 1)
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let now = self.now();
        let field = self.user_field()?;
        let mut cursor = self
            .collection
            .find(self.live(doc! { field: user_id }, now))
            .projection(self.layout.info_projection())
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(backend)? {
            let d = cursor.deserialize_current().map_err(backend)?;
            out.push(self.layout.decode_info(&d)?);
        }
        Ok(out)
    }

    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let now = self.now();
        let field = self.user_field()?;
        let mut filter = doc! { field: user_id };
        if let Some(keep) = except {
            filter.insert(F_ID, doc! { "$ne": keep.as_str() });
        }
        // Until a look finds none left: `delete_many` does not see the whole collection at
        // one instant, so a rotation that replaced a session by a new id while it ran can
        // leave the new one behind (review finding; the history checker's revocation
        // invariant). The check is one more round trip per call.
        let filter = self.live(filter, now);
        let mut removed = 0;
        loop {
            let result = self
                .revocations
                .delete_many(filter.clone())
                .await
                .map_err(backend)?;
            removed += result.deleted_count;
            let left = self
                .collection
                .count_documents(filter.clone())
                .limit(1)
                .await
                .map_err(backend)?;
            if left == 0 {
                return Ok(removed);
            }
        }
    }

    async fn delete_expired(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let result = self
            .collection
            .delete_many(doc! { self.layout.expires_field(): { "$lte": date(now) } })
            .await
            .map_err(backend)?;
        Ok(result.deleted_count)
    }

    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        self.remove_device(user_id, handle).await
    }

    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.create_capped(record, limit).await
    }

    fn capabilities(&self) -> Capabilities {
        let express = self.layout.content_field().is_some();
        Capabilities::new()
            .with_db_system("mongodb")
            .with_user_index(self.layout.user_field().is_some())
            .with_devices(!express)
            .with_session_limit(!express)
            .with_native_expiry(true)
            .with_opaque_versions(express)
            .with_no_creation_time(express)
            .with_express_layout(express)
    }
}
