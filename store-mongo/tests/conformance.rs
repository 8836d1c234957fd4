//! The whole coatcheck conformance suite against MongoDB (`MONGODB_URL`, or a `mongo:7`
//! container when Docker answers), each test on a collection of its own.

mod common;

use coatcheck_conformance::Backend;

coatcheck_conformance::suite!(
    mongo,
    requires = Backend::Mongo,
    async { crate::common::scratch().await },
    unreachable = async { crate::common::unreachable().await },
);

// Express-compatible mode: connect-mongo's documents.
coatcheck_conformance::express_suite!(
    mongo_express,
    requires = Backend::Mongo,
    async { crate::common::scratch_with(Some(coatcheck_core::ExpressFormat::new())).await },
    unreachable = async { crate::common::unreachable().await },
);

#[tokio::test]
async fn express_mode_refuses_an_encrypting_codec() {
    let options = coatcheck_mongo::mongodb::options::ClientOptions::parse("mongodb://127.0.0.1:1")
        .await
        .expect("parses");
    let client = coatcheck_mongo::mongodb::Client::with_options(options).expect("client");
    let refused = coatcheck_mongo::MongoStore::builder(&client, "coatcheck_test")
        .express(coatcheck_core::ExpressFormat::new())
        .codec(coatcheck_conformance::encryption::codec())
        .build();
    assert!(
        matches!(refused, Err(coatcheck_mongo::BuildError::EncryptedExpress)),
        "{:?}",
        refused.err()
    );
}
