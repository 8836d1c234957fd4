//! Shared helpers of the store's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use coatcheck_conformance::kit::{StoreWrapper, Wrapped};
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::SessionStore;
use coatcheck_mongo::MongoStore;
use mongodb::options::ClientOptions;
use mongodb::Client;

/// The database every test collection lives in.
pub const DB: &str = "coatcheck_test";

/// A closed port: nothing listens on 1.
pub const UNREACHABLE_URL: &str = "mongodb://127.0.0.1:1/?directConnection=true";

/// The server's URL (env or testcontainers); `None` when the test should be skipped.
pub async fn url() -> Option<String> {
    if harness::require(Some(Backend::Mongo)).await {
        harness::url(Backend::Mongo).await
    } else {
        None
    }
}

/// A client on the test server with the store's default timeouts.
pub async fn client(url: &str) -> Client {
    let options = ClientOptions::parse(url).await.expect("MONGODB_URL parses");
    MongoStore::client_with_defaults(options).expect("client")
}

/// A store on a fresh collection of its own, indexes ensured; the collection is dropped
/// when the store is.
pub async fn scratch() -> Wrapped<Scratch> {
    scratch_with(None).await
}

/// Like [`scratch`], in express-compatible mode when a format is given.
pub async fn scratch_with(express: Option<coatcheck_core::ExpressFormat>) -> Wrapped<Scratch> {
    scratch_built(express, None).await
}

/// Like [`scratch`], with session data encrypted by the conformance test codec.
pub async fn scratch_encrypted() -> Wrapped<Scratch> {
    scratch_built(None, Some(coatcheck_conformance::encryption::codec())).await
}

async fn scratch_built(
    express: Option<coatcheck_core::ExpressFormat>,
    codec: Option<coatcheck_core::EncryptedCodec>,
) -> Wrapped<Scratch> {
    let url = harness::url(Backend::Mongo)
        .await
        .expect("checked by `requires`");
    let client = client(&url).await;
    let mut builder = MongoStore::builder(&client, DB).collection(harness::unique_name("cc"));
    if let Some(format) = express {
        builder = builder.express(format);
    }
    if let Some(codec) = codec {
        builder = builder.codec(codec);
    }
    let store = builder
        .build_with_indexes()
        .await
        .expect("store with indexes");
    Wrapped(Scratch(store))
}

/// A store pointed at a closed port, with a 2 s server selection timeout. No I/O here.
pub async fn unreachable() -> MongoStore {
    let mut options = ClientOptions::parse(UNREACHABLE_URL).await.expect("parses");
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::with_options(options).expect("client");
    MongoStore::from_client(&client, DB, "unreachable").expect("store")
}

/// A [`MongoStore`] on a throwaway collection, dropped (best effort) with the store.
#[derive(Debug)]
pub struct Scratch(pub MongoStore);

impl Drop for Scratch {
    fn drop(&mut self) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let collection = self.0.collection().clone();
        if let Ok(handle) = Handle::try_current() {
            if handle.runtime_flavor() == RuntimeFlavor::MultiThread {
                tokio::task::block_in_place(|| {
                    let _ = handle.block_on(tokio::time::timeout(
                        Duration::from_secs(5),
                        collection.drop(),
                    ));
                });
            }
        }
    }
}

impl StoreWrapper for Scratch {
    fn inner(&self) -> &dyn SessionStore {
        &self.0
    }
}

impl std::ops::Deref for Scratch {
    type Target = MongoStore;
    fn deref(&self) -> &MongoStore {
        &self.0
    }
}
