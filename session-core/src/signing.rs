//! Signed cookie values in express-session's format, with a key ring for rotation.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use crate::SessionId;

/// The shortest secret [`KeyRing::new`] accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// What JavaScript's `encodeURIComponent` leaves alone: `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Why a [`KeyRing`] could not be built. Its `Debug` is its message, so `main` returning
/// the error (`Error: …`) says what to do rather than `TooShort { index: 0, len: 5 }`.
///
/// ```
/// let err = coatcheck::core::KeyRing::new(["short"]).unwrap_err();
/// assert!(format!("{err:?}").contains("at least 32 are required"));
/// ```
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// No secret was given.
    #[error("a key ring needs at least one secret")]
    Empty,
    /// A secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "secret #{index} is {len} bytes; at least {MIN_SECRET_LEN} are required — generate one \
         with `openssl rand -base64 48` (use KeyRing::new_allowing_weak only to share an \
         existing Express secret)"
    )]
    TooShort {
        /// Position of the secret in the list.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
}

impl std::fmt::Debug for KeyRingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A cookie value that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The session id it carries.
    pub id: SessionId,
    /// Which secret verified it (0 = the current signing secret).
    pub key_index: usize,
}

impl Verified {
    /// Whether it was signed by an older secret and should be re-signed with the current one.
    pub fn needs_resign(&self) -> bool {
        self.key_index != 0
    }
}

/// HMAC-SHA256 secrets for cookie values: the first secret signs, every secret verifies.
///
/// The value format is express-session's: `s:` + id + `.` + the unpadded standard-base64
/// HMAC-SHA256 of the id, percent-encoded as `encodeURIComponent` does. Verification
/// percent-decodes, requires the `s:` prefix, splits at the last `.`, and compares the
/// signature in constant time against each secret in turn. So one secret list can serve a
/// Node app and a Rust app side by side, and rotation is "put the new secret first, keep the
/// old ones until their cookies have expired".
///
/// ```
/// use coatcheck::core::{KeyRing, SessionId};
///
/// let old = KeyRing::new(["old secret, thirty-two bytes long!!"]).unwrap();
/// let rotated = KeyRing::new(["new secret, thirty-two bytes long!!", "old secret, thirty-two bytes long!!"]).unwrap();
/// let id = SessionId::generate();
/// let verified = rotated.verify_cookie_value(&old.sign_cookie_value(&id)).unwrap();
/// assert_eq!(verified.id, id);
/// assert!(verified.needs_resign());
/// assert!(KeyRing::new(["short"]).is_err());
/// ```
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Hmac<Sha256>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} secrets, redacted)", self.keys.len())
    }
}

impl KeyRing {
    /// A key ring from secrets of at least [`MIN_SECRET_LEN`] bytes each; the first signs.
    pub fn new<I, S>(secrets: I) -> Result<Self, KeyRingError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Self::build(secrets, MIN_SECRET_LEN)
    }

    /// Like [`KeyRing::new`] but accepts shorter secrets (at least one byte).
    ///
    /// Only for sharing sessions with an existing Express app whose secret cannot be changed
    /// yet; a short secret can be brute-forced from a single cookie.
    pub fn new_allowing_weak<I, S>(secrets: I) -> Result<Self, KeyRingError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Self::build(secrets, 1)
    }

    fn build<I, S>(secrets: I, min: usize) -> Result<Self, KeyRingError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut keys = Vec::new();
        for (index, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < min {
                return Err(KeyRingError::TooShort {
                    index,
                    len: secret.len(),
                });
            }
            // HMAC accepts keys of any length; this cannot fail.
            let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| KeyRingError::Empty)?;
            keys.push(mac);
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// How many secrets the ring holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring has at least one secret.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn signature(key: &Hmac<Sha256>, id: &str) -> String {
        let mut mac = key.clone();
        mac.update(id.as_bytes());
        STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// `s:<id>.<signature>`, not yet percent-encoded.
    pub fn sign(&self, id: &SessionId) -> String {
        let sig = Self::signature(&self.keys[0], id.as_str());
        format!("s:{}.{}", id.as_str(), sig)
    }

    /// The cookie value as it goes on the wire: [`KeyRing::sign`], percent-encoded.
    pub fn sign_cookie_value(&self, id: &SessionId) -> String {
        utf8_percent_encode(&self.sign(id), URI_COMPONENT).to_string()
    }

    /// Verifies a cookie value as it came off the wire (percent-encoded or not).
    ///
    /// `None` for anything that is not a well-signed, well-formed id: missing `s:` prefix,
    /// bad signature under every secret, an id [`SessionId::parse`] refuses, invalid
    /// percent-encoding. Never an error, never a panic.
    ///
    /// The id's alphabet never needs escaping, so only the prefix (`s%3A`) and the signature
    /// (`%2B`, `%2F`) are decoded; an id with escapes in it is refused. The signature is
    /// compared as bytes, in constant time, without allocating.
    pub fn verify_cookie_value(&self, value: &str) -> Option<Verified> {
        let signed = value
            .strip_prefix("s:")
            .or_else(|| value.strip_prefix("s%3A"))
            .or_else(|| value.strip_prefix("s%3a"))?;
        let (id, sig) = signed.rsplit_once('.')?;
        let id = SessionId::parse(id).ok()?;
        let mac = decode_signature(sig)?;
        let key_index = self.keys.iter().position(|key| {
            let mut expected = key.clone();
            expected.update(id.as_str().as_bytes());
            expected.verify_slice(&mac).is_ok()
        })?;
        Some(Verified { id, key_index })
    }
}

/// The 32 MAC bytes of a signature: unpadded standard base64, possibly percent-encoded.
/// Non-canonical base64 (stray trailing bits) is refused, so each MAC has one spelling.
fn decode_signature(sig: &str) -> Option<[u8; 32]> {
    // 43 base64 characters; percent-encoding at most triples that.
    let mut text = [0u8; 43];
    let mut len = 0;
    for b in percent_decode_str(sig) {
        *text.get_mut(len)? = b;
        len += 1;
    }
    let mut mac = [0u8; 48];
    match STANDARD_NO_PAD.decode_slice(&text[..len], &mut mac) {
        Ok(32) => mac[..32].try_into().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_ID: &str = "hk_Tvp_af4vfm-vuRFUKIKmCIEhHXSaz";
    const REAL_SIG: &str = "hAm0T4Fem0EZVV6VWsJEwLc7SPPPRnW8N6pqxUyB8vE";

    #[test]
    fn signs_like_express_session() {
        let ring = KeyRing::new_allowing_weak(["interop-secret"]).unwrap();
        let id = SessionId::parse(REAL_ID).unwrap();
        assert_eq!(ring.sign(&id), format!("s:{REAL_ID}.{REAL_SIG}"));
        assert_eq!(
            ring.sign_cookie_value(&id),
            format!("s%3A{REAL_ID}.{REAL_SIG}")
        );
    }

    #[test]
    fn verifies_the_real_express_cookie() {
        let ring = KeyRing::new_allowing_weak(["interop-secret"]).unwrap();
        let v = ring
            .verify_cookie_value(&format!("s%3A{REAL_ID}.{REAL_SIG}"))
            .unwrap();
        assert_eq!(v.id.as_str(), REAL_ID);
        assert!(!v.needs_resign());
        // also undecoded
        assert!(ring
            .verify_cookie_value(&format!("s:{REAL_ID}.{REAL_SIG}"))
            .is_some());
    }

    #[test]
    fn weak_secrets_are_refused_unless_opted_in() {
        assert_eq!(
            KeyRing::new(["interop-secret"]).unwrap_err(),
            KeyRingError::TooShort { index: 0, len: 14 }
        );
        assert_eq!(
            KeyRing::new(Vec::<&str>::new()).unwrap_err(),
            KeyRingError::Empty
        );
        assert!(KeyRing::new_allowing_weak([""]).is_err());
        assert!(KeyRing::new(["x".repeat(32)]).is_ok());
    }

    #[test]
    fn rejects_tampering() {
        let ring = KeyRing::new(["k".repeat(32)]).unwrap();
        let id = SessionId::generate();
        let good = ring.sign(&id);
        assert!(ring.verify_cookie_value(&good).is_some());
        for i in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(bytes) {
                assert!(
                    ring.verify_cookie_value(&s).is_none(),
                    "byte {i} changed: {s}"
                );
            }
        }
        assert!(ring.verify_cookie_value(id.as_str()).is_none(), "unsigned");
        assert!(
            ring.verify_cookie_value(&good[..good.len() - 1]).is_none(),
            "truncated"
        );
        assert!(ring.verify_cookie_value("s:").is_none());
        assert!(ring.verify_cookie_value("%ZZ").is_none());
        assert!(ring.verify_cookie_value("%FF%FE").is_none());
    }

    #[test]
    fn rotation() {
        let a = KeyRing::new(["a".repeat(32)]).unwrap();
        let ab = KeyRing::new(["b".repeat(32), "a".repeat(32)]).unwrap();
        let id = SessionId::generate();
        let v = ab.verify_cookie_value(&a.sign_cookie_value(&id)).unwrap();
        assert_eq!(v.key_index, 1);
        assert!(v.needs_resign());
        assert_eq!(
            ab.verify_cookie_value(&ab.sign_cookie_value(&id))
                .unwrap()
                .key_index,
            0
        );
        assert!(a.verify_cookie_value(&ab.sign_cookie_value(&id)).is_none());
    }

    #[test]
    fn encodes_plus_and_slash() {
        // Find an id whose signature has '+' or '/', check they are percent-encoded.
        let ring = KeyRing::new(["s".repeat(32)]).unwrap();
        for _ in 0..200 {
            let id = SessionId::generate();
            let wire = ring.sign_cookie_value(&id);
            assert!(!wire.contains('+') && !wire.contains('/') && !wire.contains(':'));
            assert_eq!(ring.verify_cookie_value(&wire).unwrap().id, id);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let ring = KeyRing::new(["topsecret-topsecret-topsecret-top"]).unwrap();
        assert!(!format!("{ring:?}").contains("topsecret"));
    }
}
