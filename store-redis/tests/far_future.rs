//! A far-future expiry (a "remember me" of `Timestamp::MAX`-like size) is stored, in both
//! layouts, instead of failing with a server error: express mode's `EX` used to overflow
//! Redis's clock and answer 500.

use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{ExpressFormat, Record, SessionId, SessionStore, Timestamp};
use coatcheck_redis::RedisStore;

async fn check(store: RedisStore) {
    let now = Timestamp::now();
    let far = Timestamp::from_millis(i64::MAX);
    let mut r = Record::new(SessionId::generate(), now, far);
    store
        .create(&r)
        .await
        .expect("create with a far-future expiry");
    let loaded = store.load(&r.id).await.expect("load").expect("live");
    r.version = loaded.version;
    r.data.insert("k".into(), 1.into());
    store.save(&r).await.expect("save with a far-future expiry");
    assert!(store
        .touch(&r.id, far)
        .await
        .expect("touch with a far-future expiry"));
    assert!(store.load(&r.id).await.expect("load").is_some());
}

#[tokio::test]
async fn far_future_expiry_is_stored_in_both_layouts() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    let mut urls = vec![harness::url(Backend::Redis).await.expect("checked")];
    // Valkey 8.1: the same through `SET … IFEQ … PXAT`.
    if harness::require(Some(Backend::Valkey)).await {
        urls.push(harness::url(Backend::Valkey).await.expect("checked"));
    }
    for (url, express) in urls.iter().flat_map(|u| [(u, false), (u, true)]) {
        let mut b = RedisStore::builder().prefix(format!("{}:", harness::unique_name("cc-far")));
        if express {
            b = b.express(ExpressFormat::new());
        }
        check(b.connect(url).await.expect("connect")).await;
    }
}
