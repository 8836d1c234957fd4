//! The whole conformance suite against the memory store, with the default sharding and
//! with only two shards (more contention on each lock).
coatcheck_conformance::suite!(memory, async { coatcheck_memory::MemoryStore::new() });

coatcheck_conformance::suite!(memory_two_shards, async {
    coatcheck_memory::MemoryStore::builder().shards(2).build()
});

// Ids hashed at rest: the same contract (list_for_user answers the hashed ids), without and
// with the fallback to raw ids of a store being migrated.
coatcheck_conformance::suite!(memory_hashed, async {
    coatcheck_core::HashedIds::new(coatcheck_memory::MemoryStore::new()).expect("native store")
});

coatcheck_conformance::suite!(memory_hashed_fallback, async {
    coatcheck_core::HashedIds::new(coatcheck_memory::MemoryStore::new())
        .expect("native store")
        .raw_fallback(true)
});
