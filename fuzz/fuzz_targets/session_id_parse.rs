//! Property: `SessionId::parse` accepts exactly the strings of 16 to 128 characters of the
//! base64url alphabet (`A-Z a-z 0-9 - _`), checked against an independent oracle, and for an
//! accepted string `as_str()` is the input unchanged, parsing that again gives an equal id,
//! and `str::parse::<SessionId>` (FromStr) agrees. Never a panic, on any UTF-8 input.
#![no_main]

use coatcheck_core::{InvalidSessionId, SessionId};
use libfuzzer_sys::fuzz_target;

fn oracle(s: &str) -> bool {
    (16..=128).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = SessionId::parse(s);
    assert_eq!(
        parsed.is_ok(),
        oracle(s),
        "parse disagrees with the oracle on {s:?}"
    );
    assert_eq!(
        s.parse::<SessionId>(),
        parsed,
        "FromStr disagrees with parse"
    );
    match parsed {
        Ok(id) => {
            assert_eq!(id.as_str(), s, "as_str() is not the input");
            let again = SessionId::parse(id.as_str()).expect("an accepted id must parse again");
            assert_eq!(again, id);
            assert_eq!(again.as_str(), id.as_str());
            // Debug never shows the id itself.
            assert!(!format!("{id:?}").contains(s));
        }
        Err(InvalidSessionId::Length(n)) => assert_eq!(n, s.len()),
        Err(_) => assert!((16..=128).contains(&s.len())),
    }
});
