//! The native session value: one string holding a short text header and the codec bytes.
//!
//! ```text
//! C1 {version} {created ms} {expires ms} {user length or -}:{user}{codec bytes}
//! C2 {version} {created ms} {expires ms} {last seen ms} {device handle}
//!    {user length or -}:{user}{device length}:{user agent}\n{ip}{codec bytes}
//! ```
//!
//! (`C2` is one line; it is written for a record with a device — a signed-in session —
//! and `C1`, unchanged, for the others.)
//!
//! One string instead of a hash, so that a load is one `GET` (a third of `HGETALL`'s server
//! time) and a save on a server with `SET … IFEQ` is one ordinary command comparing the
//! whole stored value. The version is part of the value, so two writes never leave the same
//! bytes behind: comparing the bytes is comparing the version. The Lua scripts parse the
//! same header (`scripts.rs`, `parse`).

/// The device part of a `C2` value, borrowing from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDevice<'a> {
    pub(crate) handle: &'a [u8],
    /// `{user agent}\n{ip}`, either part possibly empty.
    pub(crate) block: &'a [u8],
}

impl<'a> RawDevice<'a> {
    /// The user agent and the ip (`None` when empty).
    pub(crate) fn details(&self) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        let (ua, ip) = match self.block.iter().position(|&b| b == b'\n') {
            Some(at) => (&self.block[..at], &self.block[at + 1..]),
            None => (self.block, &b""[..]),
        };
        (
            Some(ua).filter(|s| !s.is_empty()),
            Some(ip).filter(|s| !s.is_empty()),
        )
    }
}

/// A parsed native value, borrowing from the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) version: u64,
    pub(crate) created: i64,
    pub(crate) expires: i64,
    /// `C2` only.
    pub(crate) seen: Option<i64>,
    pub(crate) user: Option<&'a [u8]>,
    /// `C2` only.
    pub(crate) device: Option<RawDevice<'a>>,
    pub(crate) data: &'a [u8],
}

/// The device block of a value: `{user agent}\n{ip}` (neither holds a newline: the user
/// agent is stripped of control characters, an ip has none).
pub(crate) fn device_block(ua: Option<&str>, ip: Option<&str>) -> Vec<u8> {
    let clean =
        |s: Option<&str>| -> Vec<u8> { s.unwrap_or("").bytes().filter(|&b| b != b'\n').collect() };
    let mut out = clean(ua);
    out.push(b'\n');
    out.extend(clean(ip));
    out
}

/// The value for a record with these fields (`C2` when `device` is given, else `C1`).
pub(crate) fn encode(
    version: u64,
    created: i64,
    expires: i64,
    seen: i64,
    user: Option<&[u8]>,
    device: Option<RawDevice<'_>>,
    data: &[u8],
) -> Vec<u8> {
    use std::io::Write as _;
    let extra = device.map_or(0, |d| 40 + d.block.len());
    let mut out = Vec::with_capacity(48 + extra + user.map_or(0, <[u8]>::len) + data.len());
    // Writing into a Vec cannot fail.
    match device {
        Some(d) => {
            let _ = write!(out, "C2 {version} {created} {expires} {seen} ");
            out.extend_from_slice(d.handle);
            out.push(b' ');
        }
        None => {
            let _ = write!(out, "C1 {version} {created} {expires} ");
        }
    }
    match user {
        Some(u) => {
            let _ = write!(out, "{}:", u.len());
            out.extend_from_slice(u);
        }
        None => out.extend_from_slice(b"-:"),
    }
    if let Some(d) = device {
        let _ = write!(out, "{}:", d.block.len());
        out.extend_from_slice(d.block);
    }
    out.extend_from_slice(data);
    out
}

/// The same value with another expiry, seen now (what `touch` writes).
pub(crate) fn with_expiry(p: &Parsed<'_>, expires: i64, now: i64) -> Vec<u8> {
    encode(p.version, p.created, expires, now, p.user, p.device, p.data)
}

fn field<'a>(rest: &mut &'a [u8], end: u8) -> Option<&'a [u8]> {
    let at = rest.iter().position(|&b| b == end)?;
    let (head, tail) = rest.split_at(at);
    *rest = &tail[1..];
    Some(head)
}

fn number<T: std::str::FromStr>(raw: &[u8]) -> Option<T> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// `{n}:` then n bytes; `-:` is `None` when `dash` allows it.
fn counted<'a>(rest: &mut &'a [u8], dash: bool) -> Option<Option<&'a [u8]>> {
    let len = field(rest, b':')?;
    if dash && len == b"-" {
        return Some(None);
    }
    if len.is_empty() || !len.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = number(len)?;
    if n > rest.len() {
        return None;
    }
    let (v, tail) = rest.split_at(n);
    *rest = tail;
    Some(Some(v))
}

/// Parses a native value; `None` when the bytes are not one.
pub(crate) fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    let (c2, mut rest) = match bytes.strip_prefix(b"C1 ") {
        Some(rest) => (false, rest),
        None => (true, bytes.strip_prefix(b"C2 ")?),
    };
    let version = field(&mut rest, b' ')?;
    if version.is_empty() || !version.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let version = number(version)?;
    let created = number(field(&mut rest, b' ')?)?;
    let expires = number(field(&mut rest, b' ')?)?;
    let (seen, handle) = if c2 {
        let seen = number(field(&mut rest, b' ')?)?;
        let handle = field(&mut rest, b' ')?;
        let ok = !handle.is_empty()
            && handle
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if !ok {
            return None;
        }
        (Some(seen), Some(handle))
    } else {
        (None, None)
    };
    let user = counted(&mut rest, true)?;
    let device = match handle {
        Some(handle) => Some(RawDevice {
            handle,
            block: counted(&mut rest, false)??,
        }),
        None => None,
    };
    Some(Parsed {
        version,
        created,
        expires,
        seen,
        user,
        device,
        data: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_user() {
        let v = encode(7, 1, 2, 0, Some(b"al ice:1"), None, b"\x81\xa1a\x01");
        assert_eq!(&v[..20], b"C1 7 1 2 8:al ice:1\x81");
        let p = parse(&v).unwrap();
        assert_eq!(
            p,
            Parsed {
                version: 7,
                created: 1,
                expires: 2,
                seen: None,
                user: Some(b"al ice:1"),
                device: None,
                data: b"\x81\xa1a\x01"
            }
        );
        let v = encode(u64::MAX, -5, i64::MAX, 0, None, None, b"");
        let p = parse(&v).unwrap();
        assert_eq!((p.version, p.created, p.expires), (u64::MAX, -5, i64::MAX));
        assert_eq!((p.user, p.data), (None, &b""[..]));
        assert_eq!(parse(&with_expiry(&p, 9, 3)).unwrap().expires, 9);
    }

    #[test]
    fn devices_round_trip_and_touch_moves_last_seen() {
        let block = device_block(Some("Firefox/133 (X11)"), Some("203.0.113.7"));
        let device = RawDevice {
            handle: b"h4ndle-_x",
            block: &block,
        };
        let v = encode(3, 10, 20, 15, Some(b"ada"), Some(device), b"\x80");
        assert!(v.starts_with(b"C2 3 10 20 15 h4ndle-_x 3:ada29:Firefox/133 (X11)\n203"));
        let p = parse(&v).unwrap();
        assert_eq!(
            (p.seen, p.user, p.data),
            (Some(15), Some(&b"ada"[..]), &b"\x80"[..])
        );
        let d = p.device.unwrap();
        assert_eq!(d.handle, b"h4ndle-_x");
        assert_eq!(
            d.details(),
            (Some(&b"Firefox/133 (X11)"[..]), Some(&b"203.0.113.7"[..]))
        );
        let touched = with_expiry(&p, 99, 50);
        let touched = parse(&touched).map(|t| (t.expires, t.seen, t.device));
        assert_eq!(touched, Some((99, Some(50), Some(d))));
        let empty = device_block(None, None);
        let bare = encode(
            1,
            1,
            2,
            1,
            None,
            Some(RawDevice {
                handle: b"h",
                block: &empty,
            }),
            b"",
        );
        let p = parse(&bare);
        assert_eq!(
            p.and_then(|p| p.device).map(|d| d.details()),
            Some((None, None))
        );
    }

    #[test]
    fn refuses_what_is_not_a_value() {
        for bad in [
            &b""[..],
            b"C1",
            b"C3 1 1 1 -:",
            b"C2 1 1 1 -:",
            b"C2 1 1 1 1 h -:",
            b"C2 1 1 1 1 h/x -:0:",
            b"C2 1 1 1 1 h -:9:short",
            b"C1 x 1 1 -:",
            b"C1 -1 1 1 -:",
            b"C1 1 1 1 9:short",
            b"C1 1 1 1 -",
            b"C1 1 1 1 +3:abc",
            b"{\"cookie\":{}}",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(b"C2 1 1 1 1 h -:0:").is_some());
    }
}
