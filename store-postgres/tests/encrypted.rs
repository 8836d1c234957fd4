//! Session data encrypted at rest, as the database holds it: no plaintext in the `data`
//! column, a row's bytes copied under another id or tampered with do not decrypt (a clear
//! `Decode` error, never an empty session), key rotation, the migration from plaintext, and
//! express mode refusing the combination.

mod common;

use std::time::Duration;

use coatcheck_conformance::encryption::{codec, keys, OLD_TEST_KEY, TEST_KEY};
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::{
    EncryptedCodec, ExpressFormat, Record, SessionId, SessionStore, StoreError, Timestamp,
    ENCRYPTED_FORMAT_V1,
};
use coatcheck_postgres::{BuildError, PostgresStore};

const SECRET: &str = "4111 1111 1111 1111";

fn record() -> Record {
    let now = Timestamp::now();
    let mut r = Record::new(
        SessionId::generate(),
        now,
        now.saturating_add(Duration::from_secs(3600)),
    );
    r.data.insert("card".into(), SECRET.into());
    r
}

async fn raw(store: &PostgresStore, id: &SessionId) -> Vec<u8> {
    let sql = format!(
        "SELECT data FROM {} WHERE id = $1",
        store.qualified_table_name()
    );
    sqlx::query_scalar(&sql)
        .bind(id.as_str())
        .fetch_one(store.pool())
        .await
        .expect("the row")
}

/// Another store on the same table with another codec.
fn same_table(store: &PostgresStore, codec: EncryptedCodec) -> PostgresStore {
    let (schema, table) = store
        .qualified_table_name()
        .split_once('.')
        .expect("schema.table");
    PostgresStore::builder()
        .schema(schema.trim_matches('"'))
        .table(table.trim_matches('"'))
        .codec(codec)
        .build(store.pool().clone())
        .expect("valid config")
}

fn is_decode(r: Result<Option<Record>, StoreError>) -> bool {
    matches!(r, Err(StoreError::Decode(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_database_holds_is_encrypted_and_bound_to_its_id() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let store = common::scoped_with(PostgresStore::builder().codec(codec())).await;
    let (a, b) = (record(), record());
    store.create(&a).await.expect("create a");
    store.create(&b).await.expect("create b");
    let bytes = raw(&store, &a.id).await;
    assert_eq!(bytes[0], ENCRYPTED_FORMAT_V1);
    assert!(
        !String::from_utf8_lossy(&bytes).contains("4111"),
        "no plaintext in the column"
    );
    assert_eq!(
        store.load(&a.id).await.expect("load").expect("live").data,
        a.data
    );

    // b's bytes copied onto a's row: not a's session.
    let copy = format!(
        "UPDATE {t} SET data = (SELECT data FROM {t} WHERE id = $2) WHERE id = $1",
        t = store.qualified_table_name()
    );
    sqlx::query(&copy)
        .bind(a.id.as_str())
        .bind(b.id.as_str())
        .execute(store.pool())
        .await
        .expect("copy");
    assert!(is_decode(store.load(&a.id).await), "moved bytes refused");

    // One flipped byte.
    let flip = format!(
        "UPDATE {} SET data = set_byte(data, length(data) - 1, get_byte(data, length(data) - 1) # 1) WHERE id = $1",
        store.qualified_table_name()
    );
    sqlx::query(&flip)
        .bind(b.id.as_str())
        .execute(store.pool())
        .await
        .expect("flip");
    assert!(is_decode(store.load(&b.id).await), "tampered bytes refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_plaintext_migrates() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    // Written in the clear, before encryption was turned on.
    let plain = common::scoped_store().await;
    let old = record();
    plain.create(&old).await.expect("create");

    let strict = same_table(&plain, EncryptedCodec::new(keys(&[OLD_TEST_KEY])));
    assert!(is_decode(strict.load(&old.id).await), "plaintext refused");
    let migrating = same_table(
        &plain,
        EncryptedCodec::new(keys(&[OLD_TEST_KEY])).read_plaintext(true),
    );
    let mut loaded = migrating.load(&old.id).await.expect("load").expect("live");
    // Read in the clear: marked for the middleware to write it again (never stored).
    assert_eq!(
        loaded.data.shift_remove(coatcheck_core::REWRITE_KEY),
        Some(serde_json::Value::Bool(true))
    );
    assert_eq!(loaded.data, old.data);
    loaded.version = migrating.save(&loaded).await.expect("save");
    assert_eq!(raw(&plain, &old.id).await[0], ENCRYPTED_FORMAT_V1, "moved");
    assert!(strict.load(&old.id).await.expect("load").is_some());

    // A new key first: the old key's records still read; a save re-encrypts under the new
    // key, which a ring without the old key reads; a ring without the new key does not.
    let rotated = same_table(&plain, codec());
    let mut again = rotated.load(&old.id).await.expect("load").expect("live");
    again.version = rotated.save(&again).await.expect("save");
    let only_new = same_table(&plain, EncryptedCodec::new(keys(&[TEST_KEY])));
    assert!(only_new.load(&old.id).await.expect("load").is_some());
    assert!(is_decode(strict.load(&old.id).await), "dropped key");
}

#[tokio::test]
async fn express_mode_refuses_an_encrypting_codec() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .expect("lazy pool");
    let refused = PostgresStore::builder()
        .express(ExpressFormat::new())
        .codec(codec())
        .build(pool);
    assert!(
        matches!(refused, Err(BuildError::EncryptedExpress)),
        "{refused:?}"
    );
}
