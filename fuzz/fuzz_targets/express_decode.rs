//! Property: `ExpressFormat::decode` (express-session's stored JSON) on any bytes returns a
//! session or a `DecodeError`, never a panic or a stack overflow. A decoded session has no
//! `cookie` key left in its data and its `user_id` is the string or integer found under
//! `userId`. Turned into a `Record` (`into_record`, expiry = the cookie's `expires` or
//! now + 1 h, version 1), `encode(&record, now)` never panics; when it is `Ok`, the JSON
//! starts with the `cookie` object (with a non-negative whole-second `originalMaxAge` and the
//! record's expiry), and decoding it again gives the same data, the same user and the same
//! `cookie_expires` (when the expiry is within years 1970..=9999). Logging out
//! (`user_id = None`) and logging in as another user, when they encode, decode to that user,
//! with the rest of the data unchanged.
#![no_main]

use std::time::Duration;

use coatcheck_core::{Codec, ExpressFormat, JsonCodec, SessionId, Timestamp};
use libfuzzer_sys::fuzz_target;

/// 2026-11-22T10:00:00.000Z
const NOW: Timestamp = Timestamp::from_millis(1_795_341_600_000);
/// 9999-12-31T23:59:59.999Z, the last instant `Date.toISOString` writes with four digits.
const LAST_4_DIGIT_YEAR_MS: i64 = 253_402_300_799_999;
const USER_KEY: &str = "userId";
const OTHER_USER: &str = "fuzz-user";
/// A fixed id keeps runs reproducible (the id plays no part in the format).
const ID: &str = "hk_Tvp_af4vfm-vuRFUKIKmCIEhHXSaz";

fuzz_target!(|bytes: &[u8]| {
    let format = ExpressFormat::new();
    let Ok(session) = format.decode(bytes) else {
        return;
    };
    assert!(
        !session.data.contains_key("cookie"),
        "`cookie` left in the data"
    );
    match (&session.user_id, session.data.get(USER_KEY)) {
        (None, None) => {}
        (None, Some(v)) => assert!(
            !(v.is_string() || v.is_i64() || v.is_u64()),
            "a principal under `{USER_KEY}` was not read as the user"
        ),
        (Some(u), Some(v)) => assert!(
            v.as_str() == Some(u.as_str()) || ((v.is_i64() || v.is_u64()) && v.to_string() == *u),
            "user_id {u:?} does not match the stored {v}"
        ),
        (Some(u), None) => panic!("user_id {u:?} without a `{USER_KEY}` key"),
    }
    let data = session.data.clone();
    let user = session.user_id.clone();
    let expires_at = session
        .cookie_expires
        .unwrap_or(NOW + Duration::from_secs(3600));
    let id = SessionId::parse(ID).expect("a valid id");
    let mut record = session.into_record(id, expires_at, 1);
    assert_eq!(record.created_at, Timestamp::from_millis(0));
    assert_eq!(record.version, 1);

    // As decoded: the same data and user come back.
    if let Ok(json) = format.encode(&record, NOW) {
        assert!(
            json.starts_with(r#"{"cookie":{"#),
            "cookie is not first: {json}"
        );
        let back = format
            .decode(json.as_bytes())
            .expect("what ExpressFormat encoded must decode");
        assert_eq!(back.data, data, "data changed through encode/decode");
        assert!(back.data.keys().eq(data.keys()), "key order changed");
        assert_eq!(back.user_id, user, "user changed through encode/decode");
        match back.cookie_expires {
            Some(t) => assert_eq!(t, expires_at, "cookie.expires written wrong"),
            None => assert!(
                !(0..=LAST_4_DIGIT_YEAR_MS).contains(&expires_at.as_millis()),
                "cookie.expires unreadable for {expires_at:?}"
            ),
        }
        let raw = JsonCodec
            .decode(json.as_bytes())
            .expect("valid JSON object");
        let cookie = raw["cookie"].as_object().expect("cookie is an object");
        let max_age = cookie["originalMaxAge"]
            .as_u64()
            .expect("originalMaxAge is a non-negative integer");
        assert_eq!(max_age % 1000, 0, "originalMaxAge not whole seconds");
    }

    // Logout: no user comes back; a principal under the key goes, other data stays.
    record.user_id = None;
    if let Ok(json) = format.encode(&record, NOW) {
        let back = format
            .decode(json.as_bytes())
            .expect("logout output decodes");
        assert_eq!(back.user_id, None, "user survived logout");
        let mut expected = data.clone();
        if user.is_some() {
            expected.shift_remove(USER_KEY);
        }
        assert_eq!(back.data, expected, "logout changed other data");
    }

    // Login as someone else: that user comes back, other data stays.
    record.user_id = Some(OTHER_USER.to_owned());
    if let Ok(json) = format.encode(&record, NOW) {
        let back = format
            .decode(json.as_bytes())
            .expect("login output decodes");
        assert_eq!(back.user_id.as_deref(), Some(OTHER_USER), "login lost");
        let mut expected = data.clone();
        expected.shift_remove(USER_KEY);
        let mut got = back.data.clone();
        got.shift_remove(USER_KEY);
        assert_eq!(got, expected, "login changed other data");
    } else {
        // Only a non-principal value under the key (or a reserved key, or depth) refuses.
        let key_refuses = data.get(USER_KEY).is_some() && user.is_none();
        let reserved = data.keys().any(|k| coatcheck_core::is_express_reserved(k));
        assert!(
            key_refuses || reserved || JsonCodec.encode(&data).is_err(),
            "login refused for no documented reason"
        );
    }
});
