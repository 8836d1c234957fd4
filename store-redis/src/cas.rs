//! The compare-and-set path for servers with `SET key value IFEQ comparison-value`
//! (Valkey ≥ 8.1, Redis ≥ 8.4).
//!
//! `IFEQ` compares the whole stored value, so a save must send the exact bytes it expects to
//! replace. A request loads a session and saves it a few milliseconds later in the same
//! process, so the store remembers the bytes of each session it last read or wrote
//! ([`Seen`], keyed by id, with the version they hold). A save whose record version matches
//! the remembered bytes sends one `SET … IFEQ <those bytes>`; when the server's value is
//! still those bytes, nobody wrote in between (every write changes the version inside the
//! value), and the save is done without Lua. When the bytes are not remembered, or the
//! server's value differs (another process wrote; a touch elsewhere), the store runs its Lua
//! script, which decides exactly as before: the fast path only ever succeeds where the
//! script would have, with the same effect.
//!
//! The memory is bounded: [`Seen::SHARDS`] shards of at most [`Seen::SHARD_ENTRIES`]
//! entries; a full shard is emptied (the next save of those sessions takes the script once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use coatcheck_core::SessionId;

/// Bytes a session last had, as this store read or wrote them.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The version the record held (native: inside the bytes; express: the hash of them).
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
}

type Shard = Mutex<HashMap<SessionId, Arc<Entry>>>;

/// The remembered bytes per session id.
#[derive(Debug)]
pub(crate) struct Seen {
    shards: Box<[Shard]>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl Seen {
    /// Shards (ids are random, so their last byte spreads them).
    pub(crate) const SHARDS: usize = 16;
    /// Entries per shard: 16 × 1,024 sessions at most are remembered.
    pub(crate) const SHARD_ENTRIES: usize = 1024;

    fn shard(&self, id: &SessionId) -> &Shard {
        let last = id.as_str().as_bytes().last().copied().unwrap_or(0);
        &self.shards[usize::from(last) % Self::SHARDS]
    }

    /// The remembered bytes of `id`.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Entry>> {
        let shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(id).cloned()
    }

    /// Values longer than this are not remembered (their saves take the script): the memory
    /// held is at most `SHARDS × SHARD_ENTRIES × MAX_BYTES` (1 GiB in theory, a few MB for
    /// sessions of a few hundred bytes).
    pub(crate) const MAX_BYTES: usize = 64 * 1024;

    /// Remembers that `id` now holds `bytes` at `version`.
    pub(crate) fn put(&self, id: &SessionId, version: u64, bytes: Vec<u8>) {
        if bytes.len() > Self::MAX_BYTES {
            self.forget(id);
            return;
        }
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= Self::SHARD_ENTRIES && !shard.contains_key(id) {
            shard.clear();
        }
        shard.insert(id.clone(), Arc::new(Entry { version, bytes }));
    }

    /// Forgets `id` (deleted, or its state is unknown after a failed write).
    pub(crate) fn forget(&self, id: &SessionId) {
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        shard.remove(id);
    }
}

/// Whether the server has `SET … IFEQ`, learnt from a probe on first use.
#[derive(Debug)]
pub(crate) struct Support(AtomicU8);

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

impl Support {
    /// `enabled: false` never probes and always uses the scripts.
    pub(crate) fn new(enabled: bool) -> Self {
        Support(AtomicU8::new(if enabled { UNKNOWN } else { NO }))
    }

    /// `Some(answer)` once known.
    pub(crate) fn known(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            YES => Some(true),
            NO => Some(false),
            _ => None,
        }
    }

    pub(crate) fn set(&self, yes: bool) {
        self.0.store(if yes { YES } else { NO }, Ordering::Relaxed);
    }
}

/// Whether an error reply means "this server does not know `IFEQ`" (Redis before 8.4
/// answers `ERR syntax error`).
pub(crate) fn is_unsupported(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("syntax error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_replaces_forgets_and_stays_bounded() {
        let seen = Seen::default();
        let id = SessionId::generate();
        assert!(seen.get(&id).is_none());
        seen.put(&id, 1, b"a".to_vec());
        seen.put(&id, 2, b"b".to_vec());
        let e = seen.get(&id).unwrap();
        assert_eq!((e.version, e.bytes.as_slice()), (2, &b"b"[..]));
        seen.forget(&id);
        assert!(seen.get(&id).is_none());
        seen.put(&id, 3, b"c".to_vec());
        seen.put(&id, 4, vec![0; Seen::MAX_BYTES + 1]);
        assert!(
            seen.get(&id).is_none(),
            "too big: forgotten, not kept stale"
        );
        for _ in 0..(Seen::SHARDS * Seen::SHARD_ENTRIES * 3) {
            seen.put(&SessionId::generate(), 1, Vec::new());
        }
        let total: usize = seen.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= Seen::SHARDS * Seen::SHARD_ENTRIES, "{total}");
    }
}
