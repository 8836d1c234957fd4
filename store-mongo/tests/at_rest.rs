//! Data protection at rest on MongoDB, as the collection holds it: with `EncryptedCodec` the
//! `data` field is ciphertext and a document's data moved under another `_id` does not
//! decrypt; with `HashedIds` no document is keyed by a session id. (The whole conformance
//! suite runs in both forms on the other stores; the MongoDB-wire test server is too slow
//! for two more full suites here.)

mod common;

use std::time::Duration;

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{
    hashed_key, HashedIds, Record, SessionId, SessionStore, StoreError, Timestamp,
    ENCRYPTED_FORMAT_V1,
};
use mongodb::bson::{doc, Bson};

fn record(user: &str) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(
        SessionId::generate(),
        now,
        now.saturating_add(Duration::from_secs(3600)),
    );
    r.user_id = Some(user.into());
    r.data.insert("card".into(), "4111 1111 1111 1111".into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_data_and_hashed_ids_as_the_collection_holds_them() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    // Encrypted data.
    let scratch = common::scratch_encrypted().await;
    let store = &scratch.0;
    let (a, b) = (record("ada"), record("ada"));
    store.create(&a).await.expect("create a");
    store.create(&b).await.expect("create b");
    let doc = store
        .collection()
        .find_one(doc! {"_id": a.id.as_str()})
        .await
        .expect("find")
        .expect("the document");
    let Some(Bson::Binary(bin)) = doc.get("data") else {
        panic!("data is binary: {doc:?}");
    };
    assert_eq!(bin.bytes[0], ENCRYPTED_FORMAT_V1);
    assert!(!String::from_utf8_lossy(&bin.bytes).contains("4111"));
    assert_eq!(
        store.load(&a.id).await.expect("load").expect("live").data,
        a.data
    );
    // a's data under b's id.
    store
        .collection()
        .update_one(
            doc! {"_id": b.id.as_str()},
            doc! {"$set": {"data": Bson::Binary(bin.clone())}},
        )
        .await
        .expect("copy");
    assert!(matches!(
        store.load(&b.id).await,
        Err(StoreError::Decode(_))
    ));

    // Hashed ids: the documents are keyed by the hash; the store answers by the id.
    let hashed = HashedIds::new(common::scratch().await).expect("native store");
    let c = record("bob");
    hashed.create(&c).await.expect("create");
    let coll = hashed.inner().0.collection();
    assert!(coll
        .find_one(doc! {"_id": c.id.as_str()})
        .await
        .expect("find")
        .is_none());
    assert!(coll
        .find_one(doc! {"_id": hashed_key(&c.id).as_str()})
        .await
        .expect("find")
        .is_some());
    assert_eq!(hashed.load(&c.id).await.expect("load").expect("live"), c);
    let listed = hashed.list_for_user("bob").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, hashed.stored_id(&c.id));
    assert_eq!(
        hashed.delete_for_user("bob", None).await.expect("revoke"),
        1
    );
}
