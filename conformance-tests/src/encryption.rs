//! Running the suite with session data encrypted at rest: a codec with fixed test keys, so
//! a store's suite can be run a second time in its encrypted form.
//!
//! ```ignore
//! coatcheck_conformance::suite!(postgres_encrypted, requires = Backend::Postgres, async {
//!     my_store(PostgresStore::builder().codec(coatcheck_conformance::encryption::codec())).await
//! });
//! ```

use coatcheck_core::{DataKeys, EncryptedCodec};

/// The key the test codec encrypts with.
pub const TEST_KEY: [u8; 32] = [0x5e; 32];
/// An older key the test codec still decrypts.
pub const OLD_TEST_KEY: [u8; 32] = [0x0d; 32];

/// An [`EncryptedCodec`] under [`TEST_KEY`] (decrypting [`OLD_TEST_KEY`] too). Test keys
/// only: never use fixed keys outside tests.
pub fn codec() -> EncryptedCodec {
    EncryptedCodec::new(keys(&[TEST_KEY, OLD_TEST_KEY]))
}

/// A key ring of these keys, the first encrypting.
pub fn keys(keys: &[[u8; 32]]) -> DataKeys {
    DataKeys::new(keys.iter().copied()).expect("distinct test keys")
}
