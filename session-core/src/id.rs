//! Session identifiers.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Number of random bytes in a freshly generated id (192 bits).
const ID_BYTES: usize = 24;
/// Shortest id accepted from outside.
const MIN_LEN: usize = 16;
/// Longest id accepted from outside.
const MAX_LEN: usize = 128;

/// A session id: the key under which a store keeps a [`Record`](crate::Record).
///
/// New ids come from [`SessionId::generate`]: 24 bytes from the operating system's CSPRNG,
/// base64url without padding (32 characters, 192 bits). Ids that arrive from outside (a
/// cookie, a store listing) go through [`SessionId::parse`], which accepts only 16 to 128
/// characters of the base64url alphabet (`A-Z a-z 0-9 - _`). Such an id is only ever "a key
/// to look up", never trusted further.
///
/// `Debug` prints a short hash, never the id itself, so that an id does not end up in logs
/// by accident; use [`SessionId::as_str`] where the raw value is really needed (a store key).
///
/// ```
/// use coatcheck::core::SessionId;
///
/// let id = SessionId::generate();
/// assert_eq!(id.as_str().len(), 32);
/// assert!(SessionId::parse("too-short").is_err());
/// assert!(SessionId::parse("has a space in it, refused").is_err());
/// assert_eq!(SessionId::parse(id.as_str()).unwrap(), id);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a string was not accepted as a [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSessionId {
    /// Shorter than 16 or longer than 128 characters.
    #[error("a session id must be 16 to 128 characters long, got {0}")]
    Length(usize),
    /// A character outside the base64url alphabet.
    #[error("a session id may only contain A-Z, a-z, 0-9, '-' and '_'")]
    Alphabet,
}

impl SessionId {
    /// A fresh id: 24 bytes from the OS CSPRNG, base64url without padding.
    ///
    /// # Panics
    ///
    /// Only if the operating system cannot provide randomness at all, in which case no
    /// secure session can be created and continuing would be worse.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        SessionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts an id from outside: 16 to 128 characters of the base64url alphabet.
    pub fn parse(s: &str) -> Result<Self, InvalidSessionId> {
        if !(MIN_LEN..=MAX_LEN).contains(&s.len()) {
            return Err(InvalidSessionId::Length(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InvalidSessionId::Alphabet);
        }
        Ok(SessionId(s.to_owned()))
    }

    /// The id as a string, for building store keys and cookies. Do not log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible tag for logs: the first 12 hex digits of SHA-256(id).
    ///
    /// ```
    /// let id = coatcheck::core::SessionId::generate();
    /// assert_eq!(id.short_hash().len(), 12);
    /// assert!(!id.as_str().contains(&id.short_hash()));
    /// ```
    pub fn short_hash(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(#{})", self.short_hash())
    }
}

impl std::str::FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_32_chars_of_base64url_and_parse_back() {
        for _ in 0..1000 {
            let id = SessionId::generate();
            assert_eq!(id.as_str().len(), 32);
            assert_eq!(SessionId::parse(id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn generated_ids_are_distinct() {
        // ASVS: 10^6 fresh ids, all distinct.
        let set: HashSet<_> = (0..1_000_000).map(|_| SessionId::generate()).collect();
        assert_eq!(set.len(), 1_000_000);
    }

    #[test]
    fn parse_edges() {
        assert!(SessionId::parse(&"a".repeat(15)).is_err());
        assert!(SessionId::parse(&"a".repeat(16)).is_ok());
        assert!(SessionId::parse(&"-_".repeat(64)).is_ok());
        assert!(SessionId::parse(&"a".repeat(129)).is_err());
        for bad in [
            "aaaaaaaaaaaaaaa=",
            "aaaaaaaaaaaaaaa+",
            "aaaaaaaaaaaaaaa/",
            "aaaaaaaaaaaaaaa.",
            "aaaaaaaaaaaaaaaé",
            "aaaaaaa aaaaaaaa",
            "aaaaaaa*aaaaaaaa",
        ] {
            assert!(SessionId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SessionId::parse(""), Err(InvalidSessionId::Length(0)));
    }

    #[test]
    fn debug_does_not_leak_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(id.as_str()));
    }
}
