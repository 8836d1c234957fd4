//! `revocation_write_concern`: every operation that ends sessions carries the write concern,
//! and no other does. The test server is a single node, so what a replica set does with
//! `w: majority` is not tested here; what coatcheck sends is, from the driver's own command
//! events.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coatcheck_conformance::harness;
use coatcheck_core::{Device, Record, SessionId, SessionLimit, SessionStore, Timestamp};
use coatcheck_mongo::MongoStore;
use mongodb::bson::Document;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};

/// `(command name, its writeConcern)` of every command the client started, but the
/// per-user lease of a limited create (a document of its own, released with a `delete`
/// whose filter names its token: no session ends there).
type Seen = Arc<Mutex<Vec<(String, Option<Document>)>>>;

fn is_lease_release(command: &Document) -> bool {
    command
        .get_array("deletes")
        .ok()
        .and_then(|d| d.first())
        .and_then(|d| d.as_document())
        .and_then(|d| d.get_document("q").ok())
        .is_some_and(|q| q.contains_key("token"))
}

/// A signed-in session with a device; its handle is `handle_of`.
fn record(user: &str) -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
    r.user_id = Some(user.to_owned());
    r.device = Some(Device::new());
    r
}

fn handle_of(r: &Record) -> String {
    r.device
        .as_ref()
        .map(|d| d.handle.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn revocations_carry_the_write_concern_and_nothing_else_does() {
    let Some(url) = common::url().await else {
        return;
    };
    let seen: Seen = Arc::default();
    let mut options = ClientOptions::parse(&url)
        .await
        .expect("MONGODB_URL parses");
    let log = seen.clone();
    options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        if let CommandEvent::Started(s) = ev {
            if is_lease_release(&s.command) {
                return;
            }
            let concern = s.command.get_document("writeConcern").ok().cloned();
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((s.command_name.clone(), concern));
        }
    }));
    let client = MongoStore::client_with_defaults(options).expect("client");
    let majority = WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .w_timeout(Duration::from_millis(500))
        .build();
    let store = MongoStore::builder(&client, common::DB)
        .collection(harness::unique_name("cc-wc"))
        .revocation_write_concern(majority)
        .build_with_indexes()
        .await
        .expect("build");

    let take = |seen: &Seen| std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    take(&seen);
    let mut a = record("ann");
    store.create(&a).await.expect("create");
    a.data.insert("k".into(), 1.into());
    a.version = store.save(&a).await.expect("save");
    store
        .touch(&a.id, a.expires_at + Duration::from_secs(60))
        .await
        .expect("touch");
    for (name, concern) in take(&seen) {
        assert!(
            concern.is_none(),
            "{name} is no revocation, yet carried {concern:?}"
        );
    }

    let b = record("ann");
    store.create(&b).await.expect("create");
    take(&seen);
    assert!(store
        .delete_device("ann", &handle_of(&b))
        .await
        .expect("delete_device"));
    assert!(store.delete(&a.id).await.expect("delete"));
    let c = record("ann");
    store.create(&c).await.expect("create");

    assert_eq!(
        store
            .delete_for_user("ann", None)
            .await
            .expect("log out everywhere"),
        1
    );
    let limit = SessionLimit::new(1, coatcheck_core::LimitPolicy::EvictLeastRecentlySeen);
    store
        .create_limited(&record("bo"), limit)
        .await
        .expect("first");
    store
        .create_limited(&record("bo"), limit)
        .await
        .expect("evicts the first");
    let deletes: Vec<_> = take(&seen)
        .into_iter()
        .filter(|(name, _)| name == "delete")
        .collect();
    assert!(
        deletes.len() >= 4,
        "every revocation is a delete: {deletes:?}"
    );
    for (_, concern) in deletes {
        let concern = concern.expect("a revocation carries the write concern");
        assert_eq!(concern.get_str("w").ok(), Some("majority"), "{concern:?}");
        assert_eq!(
            concern
                .get_i64("wtimeout")
                .ok()
                .or(concern.get_i32("wtimeout").ok().map(i64::from)),
            Some(500),
            "{concern:?}"
        );
    }
}
