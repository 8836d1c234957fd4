//! Session data encrypted at rest: an AEAD codec wrapping another codec.

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::{Codec, Data, DecodeError, EncodeError, NativeCodec, SessionId};

/// The leading byte of an encrypted record, version 1: a 4-byte key id, a 24-byte nonce,
/// then the XChaCha20-Poly1305 ciphertext and tag.
pub const ENCRYPTED_FORMAT_V1: u8 = 0xE1;

/// The data key an [`EncryptedCodec`] adds to what it decodes when the stored bytes are not
/// under the ring's first key: plaintext read with
/// [`read_plaintext`](EncryptedCodec::read_plaintext), or a record under an older key.
/// The middleware takes it out at once and writes the session at the end of the request
/// (a save, where a touch would keep the stored bytes), so a session in use is moved to
/// the current key by its first request; the codec never stores it. A store or an
/// application reading records itself may see it.
pub const REWRITE_KEY: &str = "coatcheck.rewrite";

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const AAD_CONTEXT: &[u8] = b"coatcheck session data v1\0";

/// A data encryption key ring was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataKeyError {
    /// No key at all.
    #[error("a data key ring needs at least one key")]
    Empty,
    /// Two keys of the ring are the same key, or their 4-byte ids collide.
    #[error("two data keys share the key id {0:08x}; use another key")]
    DuplicateId(u32),
}

struct DataKey {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

/// The keys that encrypt session data: the first encrypts, every one decrypts, like the
/// cookie [`KeyRing`](crate::KeyRing). Each key is 32 random bytes (generate them with a
/// CSPRNG, e.g. `openssl rand -hex 32`, and keep them apart from the store's own
/// credentials). A record names its key by a 4-byte id derived from the key (a SHA-256
/// prefix), so the ring needs no numbering: rotate by putting a new key first, keep the
/// old one until the records it encrypted have been rewritten or have expired, then drop
/// it. With several instances, first deploy the new key last in the ring everywhere (every
/// instance can then read what any other writes), then first.
///
/// ```
/// use coatcheck::core::DataKeys;
///
/// let keys = DataKeys::new([[7u8; 32], [9u8; 32]]).unwrap();
/// assert_eq!(keys.len(), 2);
/// ```
#[derive(Clone)]
pub struct DataKeys {
    keys: Arc<[DataKey]>,
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The ids only: never key material.
        let ids: Vec<String> = self.keys.iter().map(|k| hex_id(k.id)).collect();
        f.debug_struct("DataKeys").field("ids", &ids).finish()
    }
}

fn hex_id(id: [u8; KEY_ID_LEN]) -> String {
    format!("{:08x}", u32::from_be_bytes(id))
}

impl DataKeys {
    /// A ring of 32-byte keys, the first one encrypting.
    pub fn new(keys: impl IntoIterator<Item = [u8; 32]>) -> Result<Self, DataKeyError> {
        let mut ring: Vec<DataKey> = Vec::new();
        for key in keys {
            let digest = Sha256::new()
                .chain_update(b"coatcheck data key id\0")
                .chain_update(key)
                .finalize();
            let mut id = [0u8; KEY_ID_LEN];
            id.copy_from_slice(&digest[..KEY_ID_LEN]);
            if ring.iter().any(|k| k.id == id) {
                return Err(DataKeyError::DuplicateId(u32::from_be_bytes(id)));
            }
            ring.push(DataKey {
                id,
                cipher: XChaCha20Poly1305::new(&key.into()),
            });
        }
        if ring.is_empty() {
            return Err(DataKeyError::Empty);
        }
        Ok(DataKeys { keys: ring.into() })
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a ring has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, id: &[u8]) -> Option<&DataKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Session data encrypted at rest with XChaCha20-Poly1305 (RustCrypto's
/// `chacha20poly1305`), around an inner codec ([`NativeCodec`] by default).
///
/// Each write draws a fresh 24-byte nonce from the OS. The record's session id is bound as
/// associated data, so the bytes of one session copied under another id do not decrypt;
/// a wrong key, a dropped key, a tampered or truncated record is a [`DecodeError`] (the
/// store reports it; the middleware fails the request), never a panic and never an empty
/// session. What is encrypted: the data, all of it. What is not: what the store needs for
/// its queries and expiry — the key (the session id, or its hash), `expires_at`,
/// `created_at`, `version`, the user id of the per-user index and the device details
/// (handle, user agent, IP, last seen), which stores keep beside the data.
///
/// Encryption needs the session id: stores call [`Codec::encode_for`] and
/// [`Codec::decode_for`]; the unbound [`Codec::encode`]/[`Codec::decode`] refuse. Records
/// written in the clear before encryption was turned on are refused too, unless
/// [`read_plaintext`](Self::read_plaintext) lets them through while migrating (each moves
/// to the encrypted form at its next write).
///
/// ```
/// use coatcheck::core::{Codec, Data, DataKeys, EncryptedCodec, SessionId};
///
/// let codec = EncryptedCodec::new(DataKeys::new([[7u8; 32]]).unwrap());
/// let id = SessionId::generate();
/// let mut data = Data::new();
/// data.insert("cart".into(), 3.into());
/// let bytes = codec.encode_for(&id, &data).unwrap();
/// assert_eq!(codec.decode_for(&id, &bytes).unwrap(), data);
/// // The same bytes under another session id do not decrypt.
/// assert!(codec.decode_for(&SessionId::generate(), &bytes).is_err());
/// ```
#[derive(Clone)]
pub struct EncryptedCodec {
    keys: DataKeys,
    inner: Arc<dyn Codec>,
    read_plaintext: bool,
}

impl fmt::Debug for EncryptedCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedCodec")
            .field("keys", &self.keys)
            .field("inner", &self.inner)
            .field("read_plaintext", &self.read_plaintext)
            .finish()
    }
}

impl EncryptedCodec {
    /// Encrypts [`NativeCodec`]'s bytes under `keys`.
    pub fn new(keys: DataKeys) -> Self {
        EncryptedCodec {
            keys,
            inner: Arc::new(NativeCodec),
            read_plaintext: false,
        }
    }

    /// Encrypts another codec's bytes.
    pub fn wrapping(mut self, inner: impl Codec) -> Self {
        self.inner = Arc::new(inner);
        self
    }

    /// Whether records stored in the clear (by the inner codec, before encryption was
    /// turned on) are still read (default `false`). Turn it on while migrating an existing
    /// store, and off again once every live session has been written since: a plaintext
    /// record in the store is otherwise refused like a tampered one. The middleware writes
    /// a session read in the clear (or under an older key) at the end of that request
    /// ([`REWRITE_KEY`]), so that moment comes one idle timeout after the switch — the
    /// longest one, `remember_me`'s if it is set: a session unused that long has expired,
    /// and one used since has been rewritten. The same window applies to dropping an old
    /// key from the ring. Not for a session given a longer life with `set_expiry` (or one
    /// under an absolute timeout only): it may outlive the window unused and then fail to
    /// read. With several instances, deploy a new key as a decrypting one (last in the
    /// ring) everywhere before any instance puts it first.
    pub fn read_plaintext(mut self, yes: bool) -> Self {
        self.read_plaintext = yes;
        self
    }

    fn aad(key_id: &[u8], id: &SessionId) -> Vec<u8> {
        let id = id.as_str().as_bytes();
        let mut aad = Vec::with_capacity(1 + KEY_ID_LEN + AAD_CONTEXT.len() + id.len());
        aad.push(ENCRYPTED_FORMAT_V1);
        aad.extend_from_slice(key_id);
        aad.extend_from_slice(AAD_CONTEXT);
        aad.extend_from_slice(id);
        aad
    }
}

impl Codec for EncryptedCodec {
    /// Refused: encryption binds the session id ([`Codec::encode_for`]).
    fn encode(&self, _data: &Data) -> Result<Vec<u8>, EncodeError> {
        Err(EncodeError(
            "EncryptedCodec needs the session id: the store must call encode_for".into(),
        ))
    }

    /// Refused: decryption checks the session id ([`Codec::decode_for`]).
    fn decode(&self, _bytes: &[u8]) -> Result<Data, DecodeError> {
        Err(DecodeError::new(
            "EncryptedCodec needs the session id: the store must call decode_for",
        ))
    }

    fn encode_for(&self, id: &SessionId, data: &Data) -> Result<Vec<u8>, EncodeError> {
        let plain = if data.contains_key(REWRITE_KEY) {
            let mut clean = data.clone();
            clean.shift_remove(REWRITE_KEY);
            self.inner.encode_for(id, &clean)?
        } else {
            self.inner.encode_for(id, data)?
        };
        let key = &self.keys.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| EncodeError(format!("the OS random number generator failed: {e}")))?;
        let aad = Self::aad(&key.id, id);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| EncodeError("session data could not be encrypted".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(ENCRYPTED_FORMAT_V1);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decode_for(&self, id: &SessionId, bytes: &[u8]) -> Result<Data, DecodeError> {
        match bytes.first() {
            Some(&ENCRYPTED_FORMAT_V1) => {}
            Some(_) if self.read_plaintext => {
                let mut data = self.inner.decode_for(id, bytes)?;
                data.insert(REWRITE_KEY.to_owned(), serde_json::Value::Bool(true));
                return Ok(data);
            }
            Some(_) => {
                return Err(DecodeError::new(
                    "session data is not encrypted (EncryptedCodec::read_plaintext is off)",
                ))
            }
            None => return Err(DecodeError::new("empty session data")),
        }
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::new("encrypted session data is truncated"));
        }
        let key_id = &bytes[1..1 + KEY_ID_LEN];
        let nonce = &bytes[1 + KEY_ID_LEN..HEADER_LEN];
        let Some(key) = self.keys.find(key_id) else {
            let mut id_bytes = [0u8; KEY_ID_LEN];
            id_bytes.copy_from_slice(key_id);
            return Err(DecodeError::new(format!(
                "session data is encrypted under key {}, which is not in the ring",
                hex_id(id_bytes)
            )));
        };
        let aad = Self::aad(key_id, id);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| {
                DecodeError::new(
                    "session data does not decrypt: tampered, truncated, or stored under another id",
                )
            })?;
        let mut data = self.inner.decode_for(id, &plain)?;
        if key.id != self.keys.keys[0].id {
            data.insert(REWRITE_KEY.to_owned(), serde_json::Value::Bool(true));
        }
        Ok(data)
    }

    fn encrypts(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JsonCodec;

    fn data() -> Data {
        let mut d = Data::new();
        d.insert("user".into(), "ada".into());
        d.insert("cart".into(), serde_json::json!([1, 2, 3]));
        d
    }

    fn codec(keys: &[[u8; 32]]) -> EncryptedCodec {
        EncryptedCodec::new(DataKeys::new(keys.iter().copied()).unwrap())
    }

    #[test]
    fn round_trips_with_a_fresh_nonce_each_time() {
        let c = codec(&[[1; 32]]);
        let id = SessionId::generate();
        let a = c.encode_for(&id, &data()).unwrap();
        let b = c.encode_for(&id, &data()).unwrap();
        assert_ne!(a, b, "a fresh nonce per write");
        assert_eq!(a[0], ENCRYPTED_FORMAT_V1);
        assert_eq!(c.decode_for(&id, &a).unwrap(), data());
        assert!(
            !String::from_utf8_lossy(&a).contains("ada"),
            "nothing in the clear"
        );
    }

    fn marked(mut d: Data) -> Data {
        d.insert(REWRITE_KEY.to_owned(), serde_json::Value::Bool(true));
        d
    }

    #[test]
    fn rotation_new_key_encrypts_old_keys_decrypt_dropped_keys_do_not() {
        let id = SessionId::generate();
        let old = codec(&[[1; 32]]);
        let written_old = old.encode_for(&id, &data()).unwrap();
        let rotated = codec(&[[2; 32], [1; 32]]);
        // Read under the old key: marked to be written again (under the new one).
        assert_eq!(
            rotated.decode_for(&id, &written_old).unwrap(),
            marked(data())
        );
        let written_new = rotated.encode_for(&id, &marked(data())).unwrap();
        assert_eq!(
            rotated.decode_for(&id, &written_new).unwrap(),
            data(),
            "the mark is never stored"
        );
        assert_ne!(written_new[1..5], written_old[1..5], "the new key's id");
        let dropped = codec(&[[2; 32]]);
        assert_eq!(dropped.decode_for(&id, &written_new).unwrap(), data());
        let err = dropped.decode_for(&id, &written_old).unwrap_err();
        assert!(err.message().contains("not in the ring"), "{err}");
    }

    #[test]
    fn tampering_moving_truncating_and_plaintext_are_decode_errors() {
        let c = codec(&[[1; 32]]);
        let id = SessionId::generate();
        let bytes = c.encode_for(&id, &data()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(c.decode_for(&id, &bad).is_err(), "flipped byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(c.decode_for(&id, &bytes[..n]).is_err(), "truncated to {n}");
        }
        assert!(c.decode_for(&SessionId::generate(), &bytes).is_err());
        let plain = NativeCodec.encode(&data()).unwrap();
        assert!(c.decode_for(&id, &plain).is_err(), "plaintext refused");
        let migrating = c.clone().read_plaintext(true);
        assert_eq!(migrating.decode_for(&id, &plain).unwrap(), marked(data()));
        assert!(
            c.encode(&data()).is_err() && c.decode(&bytes).is_err(),
            "unbound refused"
        );
    }

    #[test]
    fn wraps_another_codec_and_keeps_keys_out_of_debug() {
        let c = codec(&[[0xAB; 32]]).wrapping(JsonCodec);
        let id = SessionId::generate();
        let bytes = c.encode_for(&id, &data()).unwrap();
        assert_eq!(c.decode_for(&id, &bytes).unwrap(), data());
        let shown = format!("{c:?}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    }

    #[test]
    fn a_ring_is_never_empty_or_ambiguous() {
        assert_eq!(
            DataKeys::new(Vec::<[u8; 32]>::new()).unwrap_err(),
            DataKeyError::Empty
        );
        assert!(matches!(
            DataKeys::new([[3; 32], [3; 32]]),
            Err(DataKeyError::DuplicateId(_))
        ));
    }
}
