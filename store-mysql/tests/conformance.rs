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
