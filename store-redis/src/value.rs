//! The native session value: one string holding a short text header and the codec bytes.
//!
//! ```text
//! C1 {version} {created ms} {expires ms} {user length or -}:{user}{codec bytes}
//! ```
//!
//! One string instead of a hash, so that a load is one `GET` (a third of `HGETALL`'s server
//! time) and a save on a server with `SET … IFEQ` is one ordinary command comparing the
//! whole stored value. The version is part of the value, so two writes never leave the same
//! bytes behind: comparing the bytes is comparing the version. The Lua scripts parse the
//! same header (`scripts.rs`, `parse`).

/// A parsed native value, borrowing from the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) version: u64,
    pub(crate) created: i64,
    pub(crate) expires: i64,
    pub(crate) user: Option<&'a [u8]>,
    pub(crate) data: &'a [u8],
}

/// The value for a record with these fields.
pub(crate) fn encode(
    version: u64,
    created: i64,
    expires: i64,
    user: Option<&[u8]>,
    data: &[u8],
) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(48 + user.map_or(0, <[u8]>::len) + data.len());
    // Writing into a Vec cannot fail.
    let _ = write!(out, "C1 {version} {created} {expires} ");
    match user {
        Some(u) => {
            let _ = write!(out, "{}:", u.len());
            out.extend_from_slice(u);
        }
        None => out.extend_from_slice(b"-:"),
    }
    out.extend_from_slice(data);
    out
}

/// The same value with another expiry (what `touch` writes).
pub(crate) fn with_expiry(p: &Parsed<'_>, expires: i64) -> Vec<u8> {
    encode(p.version, p.created, expires, p.user, p.data)
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

/// Parses a native value; `None` when the bytes are not one.
pub(crate) fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    let mut rest = bytes.strip_prefix(b"C1 ")?;
    let version = field(&mut rest, b' ')?;
    if version.is_empty() || !version.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let version = number(version)?;
    let created = number(field(&mut rest, b' ')?)?;
    let expires = number(field(&mut rest, b' ')?)?;
    let user_len = field(&mut rest, b':')?;
    let user = if user_len == b"-" {
        None
    } else {
        if !user_len.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: usize = number(user_len)?;
        if n > rest.len() {
            return None;
        }
        let (u, tail) = rest.split_at(n);
        rest = tail;
        Some(u)
    };
    Some(Parsed {
        version,
        created,
        expires,
        user,
        data: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_user() {
        let v = encode(7, 1, 2, Some(b"al ice:1"), b"\x81\xa1a\x01");
        assert_eq!(&v[..20], b"C1 7 1 2 8:al ice:1\x81");
        let p = parse(&v).unwrap();
        assert_eq!(
            p,
            Parsed {
                version: 7,
                created: 1,
                expires: 2,
                user: Some(b"al ice:1"),
                data: b"\x81\xa1a\x01"
            }
        );
        let v = encode(u64::MAX, -5, i64::MAX, None, b"");
        let p = parse(&v).unwrap();
        assert_eq!((p.version, p.created, p.expires), (u64::MAX, -5, i64::MAX));
        assert_eq!((p.user, p.data), (None, &b""[..]));
        assert_eq!(parse(&with_expiry(&p, 9)).unwrap().expires, 9);
    }

    #[test]
    fn refuses_what_is_not_a_value() {
        for bad in [
            &b""[..],
            b"C1",
            b"C2 1 1 1 -:",
            b"C1 x 1 1 -:",
            b"C1 -1 1 1 -:",
            b"C1 1 1 1 9:short",
            b"C1 1 1 1 -",
            b"C1 1 1 1 +3:abc",
            b"{\"cookie\":{}}",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
