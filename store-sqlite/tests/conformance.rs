//! The whole coatcheck conformance suite against SQLite, each test on a file of its own.

mod common;

coatcheck_conformance::suite!(
    sqlite,
    async { common::scoped_store().await },
    unreachable = async { common::unreachable_store().await }
);

// Session data encrypted at rest: the same contract.
coatcheck_conformance::suite!(sqlite_encrypted, async {
    common::scoped_with(
        coatcheck_sqlite::SqliteStore::builder().codec(coatcheck_conformance::encryption::codec()),
    )
    .await
});

// Ids hashed at rest: the same contract.
coatcheck_conformance::suite!(sqlite_hashed, async {
    coatcheck_core::HashedIds::new(common::scoped_store().await).expect("native store")
});
