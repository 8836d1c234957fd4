//! The cookie: reading the signed id from `Cookie` headers, and writing `Set-Cookie`.

use coatcheck_core::{KeyRing, SessionId, Timestamp, Verified};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use super::Shared;
use crate::config::{SameSite, Secure, SessionConfig};
use crate::session::CookieAction;

/// The session id carried by the first cookie named `name` whose value verifies under `keys`,
/// exactly as the middleware reads it.
///
/// Useful where the layer does not run (a WebSocket upgrade handled elsewhere, a log line
/// that wants the session's [`short_hash`](coatcheck_core::SessionId::short_hash)). Headers that are not
/// visible ASCII, pairs without `=`, values in double quotes that do not verify and bad
/// signatures are skipped; any input gives `None` or a verified id, never a panic. The id is
/// not checked against a store: it may name an expired or deleted session.
///
/// ```
/// use coatcheck::{session_id_from_headers, KeyRing, SessionId};
/// use http::{header::COOKIE, HeaderMap, HeaderValue};
///
/// let keys = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
/// let id = SessionId::generate();
/// let mut headers = HeaderMap::new();
/// let cookie = format!("theme=dark; sid={}", keys.sign_cookie_value(&id));
/// headers.insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
///
/// let verified = session_id_from_headers(&headers, "sid", &keys).unwrap();
/// assert_eq!(verified.id, id);
/// assert!(!verified.needs_resign());
/// assert!(session_id_from_headers(&headers, "other", &keys).is_none());
/// ```
pub fn session_id_from_headers(
    headers: &HeaderMap,
    name: &str,
    keys: &KeyRing,
) -> Option<Verified> {
    signed_cookie(headers, name, keys).map(|(verified, _)| verified)
}

/// [`session_id_from_headers`], and the cookie's value as the browser sent it (unquoted).
pub(super) fn signed_cookie<'h>(
    headers: &'h HeaderMap,
    name: &str,
    keys: &KeyRing,
) -> Option<(Verified, &'h str)> {
    // Pair by pair, as browsers and Express do: a neighbour cookie with bytes that are not
    // visible ASCII (a UTF-8 value set by another app) must not hide the session, so the
    // header is split on `;` as bytes and only each pair has to be UTF-8.
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.trim() == name)
        .find_map(|(_, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            keys.verify_cookie_value(v).map(|verified| (verified, v))
        })
}

/// Whether a cookie value that verified is spelled exactly as
/// [`KeyRing::sign_cookie_value`] spells it (`s%3A` prefix; the signature's `+` and `/` as
/// `%2B` and `%2F`, nothing else escaped): then, signed with the current secret, it is
/// what signing its id again would give, and a `Set-Cookie` for the same id can send it
/// back as it came instead of computing the HMAC again. (Verification also takes `s:`,
/// lower-case escapes and escaped letters; those are signed afresh.)
pub(super) fn is_canonical(value: &str) -> bool {
    let Some((_, sig)) = value.strip_prefix("s%3A").and_then(|v| v.rsplit_once('.')) else {
        return false;
    };
    let mut rest = sig.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        rest = match first {
            b'%' if tail.starts_with(b"2B") || tail.starts_with(b"2F") => &tail[2..],
            c if c.is_ascii_alphanumeric() => tail,
            _ => return false,
        };
    }
    true
}

/// Whether the cookie gets `Secure`: by configuration, or (`Secure::Auto`) when the
/// request came over HTTPS, or through a trusted proxy that says it did.
pub(super) fn is_secure(config: &SessionConfig, https: bool, headers: &HeaderMap) -> bool {
    match config.secure {
        Secure::Always => true,
        Secure::Never => false,
        Secure::Auto => {
            if https {
                return true;
            }
            config.trust_proxy
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        }
    }
}

/// The cookie's `Expires` date (IMF-fixdate, whole seconds). httpdate writes it directly;
/// the cookie crate's own rendering goes through `time`'s general formatter, about half a
/// microsecond per write request (BENCHMARKS.md, the write path accounted). Both spell the
/// same bytes (test `expires_is_spelled_as_the_cookie_crate_spells_it`). httpdate panics
/// past the year 9999, so a later expiry (an application's `set_expiry` far ahead, a huge
/// timeout) is written as the last second of 9999, and one before 1970 as the epoch.
fn http_date(t: Timestamp) -> String {
    /// 9999-12-31T23:59:59Z, the last second httpdate writes.
    const LAST: u64 = 253_402_300_799;
    let secs = u64::try_from(t.as_millis() / 1000).unwrap_or(0).min(LAST);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// `Set-Cookie` for `action`; `signed` is the request's own cookie value when it can be
/// sent back as it came (its id, signed with the current secret, canonically spelled).
pub(super) fn set_cookie_header(
    shared: &Shared,
    action: &CookieAction,
    secure: bool,
    signed: Option<&(SessionId, String)>,
) -> Option<HeaderValue> {
    let c = &shared.config;
    let mut expires_at = None;
    let mut builder = match action {
        CookieAction::None => return None,
        CookieAction::Set { id, expires } => {
            let value = match signed {
                Some((same, value)) if same == id => value.clone(),
                _ => shared.keys.sign_cookie_value(id),
            };
            expires_at = *expires;
            cookie::Cookie::build((c.name.clone(), value))
        }
        CookieAction::Clear => cookie::Cookie::build((c.name.clone(), ""))
            .max_age(cookie::time::Duration::ZERO)
            .expires(cookie::time::OffsetDateTime::UNIX_EPOCH),
    };
    builder = builder
        .path(c.path.clone())
        .http_only(c.http_only)
        .secure(secure)
        .same_site(match c.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        });
    if c.partitioned {
        builder = builder.partitioned(true);
    }
    if let Some(d) = &c.domain {
        builder = builder.domain(d.clone());
    }
    let mut header = builder.build().to_string();
    // `Expires` is the last attribute the cookie crate writes: appended here, the header
    // is byte for byte what it would have written.
    if let Some(t) = expires_at {
        header.push_str("; Expires=");
        header.push_str(&http_date(t));
    }
    HeaderValue::from_str(&header).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_cookie_takes_first_valid_and_ignores_junk() {
        let keys = KeyRing::new(["k".repeat(32)]).unwrap();
        let id = SessionId::generate();
        let good = keys.sign_cookie_value(&id);
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=b; sid=s%3Abogus.sig; junk"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_str(&format!("x=1;sid={good}")).unwrap(),
        );
        assert_eq!(
            session_id_from_headers(&h, "sid", &keys).map(|x| x.id),
            Some(id)
        );
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(b"sid=\xff\xfe").unwrap());
        assert!(session_id_from_headers(&h, "sid", &keys).is_none());
    }

    /// A value judged canonical is exactly what signing its id again gives (so sending it
    /// back unsigned again changes nothing on the wire); every other spelling that verifies
    /// is judged not canonical (and is signed afresh).
    #[test]
    fn a_canonical_value_is_what_signing_gives() {
        let keys = KeyRing::new(["k".repeat(32)]).unwrap();
        let mut other_spellings = 0;
        for _ in 0..2000 {
            let id = SessionId::generate();
            let signed = keys.sign_cookie_value(&id);
            assert!(is_canonical(&signed), "{signed}");
            let raw = keys.sign(&id); // `s:id.sig`, unescaped
            let variants = [
                raw.clone(),
                signed.replacen("s%3A", "s%3a", 1),
                signed.replace("%2B", "%2b").replace("%2F", "%2f"),
                // A letter of the signature escaped.
                match signed.rsplit_once('.') {
                    Some((head, sig)) => format!("{head}.{}", sig.replacen('A', "%41", 1)),
                    None => signed.clone(),
                },
            ];
            for v in variants.iter().filter(|v| **v != signed) {
                let verified = keys
                    .verify_cookie_value(v)
                    .expect("every spelling verifies");
                assert_eq!(verified.id, id);
                assert!(!is_canonical(v), "{v} is not how {id:?} is signed");
                other_spellings += 1;
            }
        }
        // Most ids give a signature with `+` or `/` in it, so every variant was tried.
        assert!(other_spellings > 6000, "{other_spellings}");
    }

    /// The `Expires` written with httpdate is what the cookie crate writes through `time`:
    /// seconds from 1970 to 9999, every weekday and month, sub-second parts dropped.
    #[test]
    fn expires_is_spelled_as_the_cookie_crate_spells_it() {
        let mut secs: i64 = 0;
        while secs < 253_402_300_799 {
            for extra_ms in [0, 1, 999] {
                let t = Timestamp::from_millis(secs * 1000 + extra_ms);
                let at = cookie::time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
                let theirs = cookie::Cookie::build(("sid", "v")).expires(at).build();
                assert_eq!(
                    format!("sid=v; Expires={}", http_date(t)),
                    theirs.to_string(),
                    "{secs}"
                );
            }
            secs += 86_400 * 17 + 3_723; // every weekday, every month, hours and minutes
        }
    }

    /// An expiry past what httpdate can write (it panics after 9999) or before 1970 is
    /// clamped, never a panic in the middleware.
    #[test]
    fn expires_out_of_range_is_clamped() {
        for ms in [253_402_300_800_000, i64::MAX] {
            assert_eq!(
                http_date(Timestamp::from_millis(ms)),
                "Fri, 31 Dec 9999 23:59:59 GMT"
            );
        }
        for ms in [-1, i64::MIN] {
            assert_eq!(
                http_date(Timestamp::from_millis(ms)),
                "Thu, 01 Jan 1970 00:00:00 GMT"
            );
        }
    }
}
