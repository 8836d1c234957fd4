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
