//! Property: `coatcheck::session_id_from_headers` (the middleware's cookie reader) on any
//! set of `Cookie` header values returns `None` or a `Verified` whose id is a valid
//! `SessionId` (it re-parses to itself), whose `key_index` names a secret of the ring, and
//! which round-trips: `sign_cookie_value(id)` verifies to the same id under the current key.
//! Never a panic.
//!
//! Input layout:
//! - first byte != 0x00: the whole input is split on 0xFF into up to 8 `Cookie` header
//!   values (values `HeaderValue::from_bytes` refuses are skipped);
//! - first byte == 0x00: `[0x00, xor mask, position, id...]`. If the id is accepted by
//!   `SessionId::parse`, `a=b; sid=<signed id>` must verify to exactly that id (key 0), the
//!   same id signed by the old secret must verify with `key_index` 1, and after XOR-ing the
//!   byte at `position` (mod length) with the mask (0 -> 1) the header must not verify to
//!   a *different* id (same id, e.g. `%3a` for `%3A`, or `None` are fine).
#![no_main]

use std::sync::LazyLock;

use coatcheck::{session_id_from_headers, KeyRing, SessionId};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The current (signing) secret and the previous one; both at least 32 bytes.
const CURRENT: &[u8] = b"coatcheck-fuzz current secret, 32+ bytes long";
const PREVIOUS: &[u8] = b"coatcheck-fuzz previous secret, 32+ bytes long";

static KEYS: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::new([CURRENT, PREVIOUS]).expect("two secrets of >= 32 bytes"));
static OLD_KEYS: LazyLock<KeyRing> =
    LazyLock::new(|| KeyRing::new([PREVIOUS]).expect("a secret of >= 32 bytes"));

const NAME: &str = "sid";
const MAX_HEADERS: usize = 8;

fn headers_from(values: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values.iter().take(MAX_HEADERS) {
        if let Ok(value) = HeaderValue::from_bytes(v) {
            headers.append(COOKIE, value);
        }
    }
    headers
}

/// What must hold of any answer of `session_id_from_headers`.
fn check_answer(headers: &HeaderMap) -> Option<SessionId> {
    let keys = &*KEYS;
    let v = session_id_from_headers(headers, NAME, keys)?;
    assert!(
        v.key_index < keys.len(),
        "key_index {} out of range",
        v.key_index
    );
    assert_eq!(v.needs_resign(), v.key_index != 0);
    let reparsed = SessionId::parse(v.id.as_str()).expect("a verified id must re-parse");
    assert_eq!(reparsed, v.id);
    let resigned = keys.sign_cookie_value(&v.id);
    let again = keys
        .verify_cookie_value(&resigned)
        .expect("a re-signed verified id must verify");
    assert_eq!(again.id, v.id);
    assert_eq!(again.key_index, 0);
    Some(v.id)
}

fn signed_round_trip(mask: u8, position: u8, id_bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(id_bytes) else {
        return;
    };
    let Ok(id) = SessionId::parse(s) else {
        return;
    };
    let keys = &*KEYS;

    // Signed with the current key, among other cookies.
    let cookie = format!("a=b; {NAME}={}", keys.sign_cookie_value(&id));
    let headers = headers_from(&[cookie.as_bytes()]);
    let v = session_id_from_headers(&headers, NAME, keys).expect("a freshly signed id must verify");
    assert_eq!(v.id, id);
    assert_eq!(v.key_index, 0);
    assert_eq!(check_answer(&headers), Some(id.clone()));

    // Signed with the previous key: verifies, asks for a re-sign.
    let old = format!("{NAME}={}; a=b", OLD_KEYS.sign_cookie_value(&id));
    let v = session_id_from_headers(&headers_from(&[old.as_bytes()]), NAME, keys)
        .expect("an id signed by the previous key must verify");
    assert_eq!(v.id, id);
    assert_eq!(v.key_index, 1);
    assert!(v.needs_resign());

    // One flipped byte never yields a different id.
    let mut flipped = cookie.into_bytes();
    let at = usize::from(position) % flipped.len();
    flipped[at] ^= if mask == 0 { 1 } else { mask };
    let headers = headers_from(&[&flipped]);
    if let Some(other) = check_answer(&headers) {
        assert_eq!(
            other, id,
            "flipping byte {at} of the header made it verify to a different id"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match data {
        [0x00, mask, position, id @ ..] => signed_round_trip(*mask, *position, id),
        [0x00, ..] => {}
        _ => {
            let values: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
            check_answer(&headers_from(&values));
        }
    }
});
