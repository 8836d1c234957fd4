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

// Express-compatible mode: better-sqlite3-session-store's table, with the principal index.
coatcheck_conformance::express_suite!(
    sqlite_express,
    async {
        common::scoped_with(
            coatcheck_sqlite::SqliteStore::builder().express(coatcheck_core::ExpressFormat::new()),
        )
        .await
    },
    unreachable = async {
        coatcheck_sqlite::SqliteStore::builder()
            .express(coatcheck_core::ExpressFormat::new())
            .acquire_timeout(std::time::Duration::from_millis(1500))
            .connect_lazy("sqlite:///nonexistent-coatcheck-dir/sessions.db?mode=rwc")
            .expect("valid config")
    }
);

// Without a principal key there is no user index: listing and revoking say so.
#[tokio::test]
async fn express_without_user_key_says_unsupported() {
    let store = common::scoped_with(
        coatcheck_sqlite::SqliteStore::builder()
            .express(coatcheck_core::ExpressFormat::new().user_key(None)),
    )
    .await;
    coatcheck_conformance::express::express_without_user_index_says_unsupported(store).await;
}
