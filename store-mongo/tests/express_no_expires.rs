//! connect-mongo reads a document without `expires` as live (its filter is
//! `$or: [{expires: {$exists: false}}, {expires: {$gt: now}}]`; such documents come from
//! older versions or other tools). The express layout does the same: it loads them, with the
//! cookie's expiry or connect-mongo's 14-day default, lists nothing wrong about them, and
//! its next write stores a real `expires`.

mod common;

use coatcheck_core::{ExpressFormat, SessionId, SessionStore, Timestamp};
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_without_expires_are_live_as_for_connect_mongo() {
    if common::url().await.is_none() {
        return;
    }
    let store = common::scratch_with(Some(ExpressFormat::new())).await;
    let collection = store.0.collection().clone();
    let now = Timestamp::now();
    let in_an_hour = now + std::time::Duration::from_secs(3600);
    let iso = time::OffsetDateTime::from_unix_timestamp(in_an_hour.as_millis() / 1000)
        .expect("a date")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("iso");
    let with_cookie = SessionId::generate();
    let bare = SessionId::generate();
    collection
        .insert_many([
            doc! {
                "_id": with_cookie.as_str(),
                "session": format!(r#"{{"cookie":{{"originalMaxAge":3600000,"expires":"{iso}","httpOnly":true,"path":"/"}},"n":1}}"#),
            },
            doc! {
                "_id": bare.as_str(),
                "session": r#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"n":2}"#,
            },
        ])
        .await
        .expect("insert as an older connect-mongo would");
    let r = store
        .load(&with_cookie)
        .await
        .expect("load")
        .expect("live, as for connect-mongo");
    assert!(r.expires_at.as_millis().abs_diff(in_an_hour.as_millis()) < 2_000);
    let b = store
        .load(&bare)
        .await
        .expect("load")
        .expect("live, as for connect-mongo");
    let fourteen_days = now + std::time::Duration::from_secs(14 * 86_400);
    assert!(b.expires_at.as_millis().abs_diff(fourteen_days.as_millis()) < 60_000);
    assert_eq!(store.delete_expired().await.expect("sweep"), 0);
    let mut r = r;
    r.data.insert("n".into(), 3.into());
    store.save(&r).await.expect("save");
    let stored = collection
        .find_one(doc! { "_id": with_cookie.as_str() })
        .await
        .expect("find")
        .expect("there");
    assert!(
        stored.get_datetime("expires").is_ok(),
        "the write stored `expires`"
    );
    assert!(store.delete(&bare).await.expect("delete"));
}
