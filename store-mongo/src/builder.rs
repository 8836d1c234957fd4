//! [`MongoStoreBuilder`]: every option, the name checks and the terminals.

use std::sync::Arc;

use coatcheck_core::{Clock, Codec, ExpressFormat, StoreOptions};
use mongodb::bson::Document;
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::Client;

use crate::error::BuildError;
use crate::layout::express::ExpressLayout;
use crate::layout::NativeLayout;
use crate::MongoStore;
#[cfg(doc)]
use crate::DEFAULT_COLLECTION;
#[cfg(doc)]
use coatcheck_core::{NativeCodec, StoreError, SystemClock};

/// Builds a [`MongoStore`] on a client you already have. See [`MongoStore::builder`].
///
/// ```
/// use coatcheck::core::JsonCodec;
/// use coatcheck::mongo::MongoStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Creating a client does no I/O; neither does `build`.
/// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
/// let store = MongoStore::builder(&client, "myapp")
///     .collection("web_sessions")
///     .codec(JsonCodec)
///     .build()?;
/// assert_eq!(store.collection_name(), "web_sessions");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MongoStoreBuilder {
    pub(crate) client: Client,
    pub(crate) database: String,
    pub(crate) collection: String,
    pub(crate) options: StoreOptions,
    pub(crate) revocation_write_concern: Option<WriteConcern>,
}

impl MongoStoreBuilder {
    /// Every shared option at once ([`StoreOptions`]: codec, clock, express layout), as
    /// every coatcheck store builder takes them; replaces what `codec`, `clock` and
    /// `express` set before.
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Express-compatible mode: documents as connect-mongo (default options) writes them,
    /// `{_id, expires: Date, session: "<express-session JSON>"}`, with its TTL index on
    /// `expires`, so an Express app using connect-mongo on the same collection (its default
    /// is also `sessions`) shares them. No user index (the principal is inside a JSON
    /// string), no creation time; a Rust save is a compare-and-set on the stored string
    /// (two round trips), a Node write is last-write-wins. The codec setting is ignored.
    ///
    /// ```
    /// use coatcheck::core::{ExpressFormat, SessionStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "shared")
    ///     .express(ExpressFormat::new())
    ///     .build()?;
    /// assert!(!store.capabilities().user_index);
    /// # Ok(()) }
    /// ```
    pub fn express(mut self, format: ExpressFormat) -> Self {
        self.options.express = Some(format);
        self
    }

    /// The collection name (default [`DEFAULT_COLLECTION`], `sessions`).
    pub fn collection(mut self, name: impl Into<String>) -> Self {
        self.collection = name.into();
        self
    }

    /// The codec for the `data` field (default [`NativeCodec`]).
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.options.codec = Arc::new(codec);
        self
    }

    /// The clock "now" is read from when deciding liveness (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.options.clock = Arc::new(clock);
        self
    }

    /// The write concern of every operation that ends sessions (`delete`, so also
    /// `delete_version`; `delete_for_user`, `delete_device`, a limited create's eviction);
    /// other operations keep the client's. On a replica set, `WriteConcern::majority()`
    /// makes a logout wait until a majority of members hold it, so an election cannot roll
    /// it back and bring the session back; a write concern that cannot be met in its
    /// `w_timeout` fails the revocation (a `Backend` error, the request a 503) instead of
    /// reporting a logout that may be undone. Default: none (the client's, usually
    /// `w: 1`). **Not tested against a replica set here** (the test server has none); the
    /// option is passed to the driver as is.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mongodb::options::WriteConcern;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// let majority = WriteConcern::builder()
    ///     .w(mongodb::options::Acknowledgment::Majority)
    ///     .w_timeout(Duration::from_millis(500))
    ///     .build();
    /// let store = coatcheck::mongo::MongoStore::builder(&client, "myapp")
    ///     .revocation_write_concern(majority)
    ///     .build()?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn revocation_write_concern(mut self, concern: WriteConcern) -> Self {
        self.revocation_write_concern = Some(concern);
        self
    }

    /// Builds the store. No I/O: call [`MongoStore::ensure_indexes`] once at startup (or use
    /// [`build_with_indexes`](Self::build_with_indexes)).
    pub fn build(self) -> Result<MongoStore, BuildError> {
        check_database_name(&self.database)?;
        check_collection_name(&self.collection)?;
        self.options.validate().map_err(BuildError::from)?;
        let database = self.client.database(&self.database);
        let collection = database.collection::<Document>(&self.collection);
        let revocations = match self.revocation_write_concern {
            Some(concern) => database.collection_with_options::<Document>(
                &self.collection,
                CollectionOptions::builder().write_concern(concern).build(),
            ),
            None => collection.clone(),
        };
        Ok(MongoStore {
            collection,
            revocations,
            layout: match self.options.express {
                Some(format) => Arc::new(ExpressLayout {
                    format,
                    clock: self.options.clock.clone(),
                }),
                None => Arc::new(NativeLayout),
            },
            codec: self.options.codec,
            clock: self.options.clock,
        })
    }

    /// Builds the store and ensures its indexes (one `createIndexes` command).
    pub async fn build_with_indexes(self) -> Result<MongoStore, BuildError> {
        let store = self.build()?;
        store.ensure_indexes().await?;
        Ok(store)
    }
}

fn check_database_name(name: &str) -> Result<(), BuildError> {
    let bad = |why| {
        Err(BuildError::InvalidName {
            what: "database",
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() >= 64 {
        return bad("it must be shorter than 64 bytes");
    }
    if name
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
    {
        return bad("it contains one of / \\ . space \" $ or NUL");
    }
    Ok(())
}

fn check_collection_name(name: &str) -> Result<(), BuildError> {
    let bad = |why| {
        Err(BuildError::InvalidName {
            what: "collection",
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains('$') || name.contains('\0') {
        return bad("it contains `$` or NUL");
    }
    if name.starts_with("system.") {
        return bad("the `system.` prefix is reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(check_collection_name("sessions").is_ok());
        assert!(check_collection_name("").is_err());
        assert!(check_collection_name("a$b").is_err());
        assert!(check_collection_name("system.sessions").is_err());
        assert!(check_database_name("app").is_ok());
        assert!(check_database_name("a.b").is_err());
        assert!(check_database_name(&"d".repeat(64)).is_err());
    }
}
