//! Device details of a signed-in session, and the per-user session limit.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Random bytes in a device handle (128 bits).
const HANDLE_BYTES: usize = 16;
/// Longest handle accepted from outside (a URL, a form).
const MAX_HANDLE_LEN: usize = 64;
/// Longest user agent a store keeps, in bytes; longer headers are cut (at a character
/// boundary).
pub const MAX_USER_AGENT_LEN: usize = 256;

/// A stable, public name for one signed-in session: safe to show and to put in a URL.
///
/// It is random (16 bytes from the OS CSPRNG, base64url, 22 characters), not derived from
/// the session id, so it tells nothing about the id; and it survives
/// [`Session::login`](https://docs.rs/coatcheck) and `regenerate` (the id changes, the handle
/// does not), so a "your devices" page can name a session across rotations.
///
/// ```
/// use coatcheck::core::DeviceHandle;
///
/// let h = DeviceHandle::generate();
/// assert_eq!(h.as_str().len(), 22);
/// assert_eq!(DeviceHandle::parse(h.as_str()), Some(h));
/// assert_eq!(DeviceHandle::parse("not a handle!"), None);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeviceHandle(String);

impl DeviceHandle {
    /// A fresh random handle.
    ///
    /// # Panics
    ///
    /// Only if the operating system cannot provide randomness at all (as
    /// [`SessionId::generate`](crate::SessionId::generate)).
    pub fn generate() -> Self {
        let mut bytes = [0u8; HANDLE_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        DeviceHandle(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A handle from outside (a URL path, a stored record): 1 to 64 characters of the
    /// base64url alphabet, else `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_HANDLE_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| DeviceHandle(s.to_owned()))
    }

    /// The handle as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public by design: unlike a session id, it may be printed.
        write!(f, "DeviceHandle({})", self.0)
    }
}

impl fmt::Display for DeviceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a session remembers about the device that signed in: set by the middleware at
/// login, kept across rotations, removed with the session.
///
/// ```
/// use coatcheck::core::Device;
///
/// let d = Device::new()
///     .with_user_agent(Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"))
///     .with_ip(Some("203.0.113.7"));
/// assert_eq!(d.ip.as_deref(), Some("203.0.113.7"));
/// assert_eq!(d.handle.as_str().len(), 22);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// The session's stable public name.
    pub handle: DeviceHandle,
    /// The `User-Agent` header at login, at most [`MAX_USER_AGENT_LEN`] bytes.
    pub user_agent: Option<String>,
    /// The client's address at login, as configured (full, truncated or not kept).
    pub ip: Option<String>,
}

impl Device {
    /// A device with a fresh handle and no details.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Device {
            handle: DeviceHandle::generate(),
            user_agent: None,
            ip: None,
        }
    }

    /// The same device under `handle` (for stores reading one back).
    pub fn with_handle(mut self, handle: DeviceHandle) -> Self {
        self.handle = handle;
        self
    }

    /// Sets the user agent, cut to [`MAX_USER_AGENT_LEN`] bytes and stripped of control
    /// characters (a header cannot hold them; a stored value read back might).
    pub fn with_user_agent(mut self, ua: Option<&str>) -> Self {
        self.user_agent = ua.map(clean_user_agent).filter(|s| !s.is_empty());
        self
    }

    /// Sets the client address as text.
    pub fn with_ip(mut self, ip: Option<&str>) -> Self {
        self.ip = ip.map(str::to_owned).filter(|s| !s.is_empty());
        self
    }
}

fn clean_user_agent(ua: &str) -> String {
    let mut out = String::with_capacity(ua.len().min(MAX_USER_AGENT_LEN));
    for c in ua.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_USER_AGENT_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// What a capped store does when a user at the limit signs in once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitPolicy {
    /// Revoke the user's least recently seen sessions to make room.
    EvictLeastRecentlySeen,
    /// Refuse the new login ([`StoreError::LimitReached`](crate::StoreError::LimitReached)).
    Refuse,
}

/// At most `max` live sessions per user, enforced by
/// [`SessionStore::create_limited`](crate::SessionStore::create_limited).
///
/// ```
/// use coatcheck::core::{LimitPolicy, SessionLimit};
///
/// let limit = SessionLimit::new(3, LimitPolicy::Refuse);
/// assert_eq!(limit.max, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionLimit {
    /// The most live sessions one user may have (at least 1).
    pub max: u32,
    /// What happens at the limit.
    pub policy: LimitPolicy,
}

impl SessionLimit {
    /// A limit of `max` (raised to 1 if 0) with `policy`.
    pub fn new(max: u32, policy: LimitPolicy) -> Self {
        SessionLimit {
            max: max.max(1),
            policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_is_bounded_and_clean() {
        let long = "é".repeat(400);
        let d = Device::new().with_user_agent(Some(&long));
        let ua = d.user_agent.unwrap();
        assert!(ua.len() <= MAX_USER_AGENT_LEN && ua.len() >= MAX_USER_AGENT_LEN - 1);
        let d = Device::new().with_user_agent(Some("a\nb\tc"));
        assert_eq!(d.user_agent.as_deref(), Some("abc"));
        assert_eq!(Device::new().with_user_agent(Some("")).user_agent, None);
    }

    #[test]
    fn handles_are_random_and_parse_strictly() {
        assert_ne!(DeviceHandle::generate(), DeviceHandle::generate());
        assert!(DeviceHandle::parse(&"a".repeat(65)).is_none());
        assert!(DeviceHandle::parse("").is_none());
        assert!(DeviceHandle::parse("abc/def").is_none());
    }
}
