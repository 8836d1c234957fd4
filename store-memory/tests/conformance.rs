//! The whole conformance suite against the memory store, with the default sharding and
//! with only two shards (more contention on each lock).
coatcheck_conformance::suite!(memory, async { coatcheck_memory::MemoryStore::new() });

coatcheck_conformance::suite!(memory_two_shards, async {
    coatcheck_memory::MemoryStore::builder().shards(2).build()
});
