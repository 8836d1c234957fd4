//! The whole coatcheck conformance suite against real Postgres, each test in its own schema.

mod common;

coatcheck_conformance::suite!(
    postgres,
    requires = coatcheck_conformance::Backend::Postgres,
    async { common::scoped_store().await },
    unreachable = async { common::unreachable_store().await }
);

// Relaxed durability: the same contract (only a database crash can tell the difference;
// tests/durability.rs measures that).
coatcheck_conformance::suite!(
    postgres_relaxed,
    requires = coatcheck_conformance::Backend::Postgres,
    async {
        common::scoped_with(
            coatcheck_postgres::PostgresStore::builder()
                .durability(coatcheck_postgres::Durability::RelaxedCommit),
        )
        .await
    }
);

// Session data encrypted at rest: the same contract.
coatcheck_conformance::suite!(
    postgres_encrypted,
    requires = coatcheck_conformance::Backend::Postgres,
    async {
        common::scoped_with(
            coatcheck_postgres::PostgresStore::builder()
                .codec(coatcheck_conformance::encryption::codec()),
        )
        .await
    }
);

// Ids hashed at rest: the same contract.
coatcheck_conformance::suite!(
    postgres_hashed,
    requires = coatcheck_conformance::Backend::Postgres,
    async { coatcheck_core::HashedIds::new(common::scoped_store().await).expect("native store") }
);

// Express-compatible mode: connect-pg-simple's table, with the principal index.
coatcheck_conformance::express_suite!(
    postgres_express,
    requires = coatcheck_conformance::Backend::Postgres,
    async {
        common::scoped_with(
            coatcheck_postgres::PostgresStore::builder()
                .express(coatcheck_core::ExpressFormat::new()),
        )
        .await
    },
    unreachable = async {
        coatcheck_postgres::PostgresStore::builder()
            .express(coatcheck_core::ExpressFormat::new())
            .acquire_timeout(std::time::Duration::from_millis(1500))
            .connect_lazy("postgres://postgres@127.0.0.1:1/x")
            .expect("valid config")
    }
);

// Without a principal key there is no user index: listing and revoking say so.
#[tokio::test]
async fn express_without_user_key_says_unsupported() {
    if !coatcheck_conformance::harness::require(Some(coatcheck_conformance::Backend::Postgres))
        .await
    {
        return;
    }
    let store = common::scoped_with(
        coatcheck_postgres::PostgresStore::builder()
            .express(coatcheck_core::ExpressFormat::new().user_key(None)),
    )
    .await;
    coatcheck_conformance::express::express_without_user_index_says_unsupported(store).await;
}
