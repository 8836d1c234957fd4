//! One set of shared store options ([`StoreOptions`]) given to every store builder: each
//! refuses the same conflict the same way, before any I/O.

use coatcheck::core::{DataKeys, EncryptedCodec, ExpressFormat, StoreOptions};

fn conflicting() -> StoreOptions {
    let keys = DataKeys::new([[7u8; 32]]).expect("one key");
    StoreOptions::new()
        .codec(EncryptedCodec::new(keys))
        .express(ExpressFormat::new())
}

#[tokio::test]
async fn every_store_refuses_an_encrypted_express_layout_given_as_options() {
    assert!(conflicting().validate().is_err());
    let redis = coatcheck::redis::RedisStore::builder()
        .options(conflicting())
        .connect_lazy("redis://127.0.0.1:1");
    assert!(matches!(
        redis,
        Err(coatcheck::redis::BuildError::EncryptedExpress)
    ));
    let postgres = coatcheck::postgres::PostgresStore::builder()
        .options(conflicting())
        .connect_lazy("postgres://postgres@127.0.0.1:1/x");
    assert!(matches!(
        postgres,
        Err(coatcheck::postgres::BuildError::EncryptedExpress)
    ));
    let client = coatcheck::mongo::mongodb::Client::with_uri_str("mongodb://127.0.0.1:1")
        .await
        .expect("a lazy client");
    let mongo = coatcheck::mongo::MongoStore::builder(&client, "app")
        .options(conflicting())
        .build();
    assert!(matches!(
        mongo,
        Err(coatcheck::mongo::BuildError::EncryptedExpress)
    ));
    // The same options without the conflict build everywhere.
    let fine = StoreOptions::new().express(ExpressFormat::new());
    assert!(coatcheck::redis::RedisStore::builder()
        .options(fine.clone())
        .connect_lazy("redis://127.0.0.1:1")
        .is_ok());
    assert!(coatcheck::mongo::MongoStore::builder(&client, "app")
        .options(fine)
        .build()
        .is_ok());
}
