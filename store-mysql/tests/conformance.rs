//! The whole coatcheck conformance suite against a real MySQL / MariaDB, each test on its
//! own table.

mod common;

coatcheck_conformance::suite!(
    mysql,
    requires = coatcheck_conformance::Backend::Mysql,
    async { common::scoped_store().await },
    unreachable = async { common::unreachable_store().await }
);

// Session data encrypted at rest: the same contract.
coatcheck_conformance::suite!(
    mysql_encrypted,
    requires = coatcheck_conformance::Backend::Mysql,
    async {
        common::scoped_with(
            coatcheck_mysql::MySqlStore::builder()
                .codec(coatcheck_conformance::encryption::codec()),
        )
        .await
    }
);

// Ids hashed at rest: the same contract.
coatcheck_conformance::suite!(
    mysql_hashed,
    requires = coatcheck_conformance::Backend::Mysql,
    async { coatcheck_core::HashedIds::new(common::scoped_store().await).expect("native store") }
);

// Express-compatible mode: express-mysql-session's table, with the principal's virtual
// column and its index.
coatcheck_conformance::express_suite!(
    mysql_express,
    requires = coatcheck_conformance::Backend::Mysql,
    async {
        common::scoped_with(
            coatcheck_mysql::MySqlStore::builder().express(coatcheck_core::ExpressFormat::new()),
        )
        .await
    },
    unreachable = async {
        coatcheck_mysql::MySqlStore::builder()
            .express(coatcheck_core::ExpressFormat::new())
            .acquire_timeout(std::time::Duration::from_millis(1500))
            .connect_lazy("mysql://root@127.0.0.1:1/x")
            .expect("valid config")
    }
);

// Without a principal key there is no user index: listing and revoking say so.
#[tokio::test]
async fn express_without_user_key_says_unsupported() {
    if !coatcheck_conformance::harness::require(Some(coatcheck_conformance::Backend::Mysql)).await {
        return;
    }
    let store = common::scoped_with(
        coatcheck_mysql::MySqlStore::builder()
            .express(coatcheck_core::ExpressFormat::new().user_key(None)),
    )
    .await;
    coatcheck_conformance::express::express_without_user_index_says_unsupported(store).await;
}
