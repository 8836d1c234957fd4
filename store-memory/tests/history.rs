//! The history checker over the in-process store: one store every instance shares
//! (`coatcheck_conformance::history`, the entry point published for store authors: the
//! workload, the invariants and the environment variables are documented there). Each
//! history runs several app instances (`COATCHECK_HISTORY_INSTANCES`, default 3), as behind
//! a load balancer, each with its own store client; the `*_faults` tests run against a
//! private server of their own while a nemesis kills its connections, pauses it past the
//! layer's `store_timeout` and restarts it, keeping its data.

use coatcheck_conformance::history::{Config, Deployment};

coatcheck_conformance::history!(
    memory,
    config = Config::new("memory").seeds(60),
    |_| async { Deployment::shared(coatcheck_memory::MemoryStore::new()) }
);

// Ids hashed at rest, with the fallback to raw ids on (its extra paths: a miss under the
// hashed key retried under the raw one).
coatcheck_conformance::history!(memory_hashed, |_| async {
    let store = coatcheck_core::HashedIds::new(coatcheck_memory::MemoryStore::new())
        .expect("native store")
        .raw_fallback(true);
    Deployment::shared(store)
});
