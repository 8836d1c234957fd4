//! The whole coatcheck conformance suite against real Postgres, each test in its own schema.

mod common;

coatcheck_conformance::suite!(
    postgres,
    requires = coatcheck_conformance::Backend::Postgres,
    async { common::scoped_store().await },
    unreachable = async { common::unreachable_store().await }
);
