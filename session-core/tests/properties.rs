//! Property tests (proptest) for everything in the core that reads input from outside:
//! cookie values, session ids, stored bytes in each codec, express-session JSON.
//!
//! SECURITY.md points at these by name. Each property says what must hold for *any* input,
//! not only for the examples in the unit tests.

use coatcheck_core::{
    Codec, Data, ExpiryPolicy, ExpressFormat, JsonCodec, KeyRing, NativeCodec, Record, SessionId,
    Timestamp,
};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use std::time::Duration;

/// Any valid session id: 16..=128 characters of the base64url alphabet.
fn session_id() -> impl Strategy<Value = SessionId> {
    "[A-Za-z0-9_-]{16,128}".prop_map(|s| SessionId::parse(&s).expect("the regex only yields ids"))
}

/// One to four secrets of 32..64 arbitrary bytes (a ring as it looks during rotations).
fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 32..64), 1..5)
}

/// Any value of the JSON data model serde_json can hold (finite floats; NaN is not JSON).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Session data: a map of arbitrary keys to arbitrary JSON values.
fn data() -> impl Strategy<Value = Data> {
    prop::collection::vec((any::<String>(), json_value()), 0..12)
        .prop_map(|kv| kv.into_iter().collect())
}

fn ring_signing_with(secrets: &[Vec<u8>], first: usize) -> KeyRing {
    let mut rotated = secrets.to_vec();
    rotated.rotate_left(first);
    KeyRing::new(rotated).expect("secrets are at least 32 bytes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A value signed by any secret of a ring verifies under the ring, to the same id, and
    /// reports which secret signed it (so only the current one needs no re-signing).
    #[test]
    fn sign_verify_round_trips_for_every_secret_in_the_ring(
        secrets in secrets(),
        id in session_id(),
        pick in any::<prop::sample::Index>(),
    ) {
        let ring = KeyRing::new(secrets.clone()).expect("long secrets");
        let signer_index = pick.index(secrets.len());
        let signer = ring_signing_with(&secrets, signer_index);
        for value in [signer.sign_cookie_value(&id), signer.sign(&id)] {
            let verified = ring.verify_cookie_value(&value);
            prop_assert!(verified.is_some(), "signed by secret {signer_index}, not verified");
            let verified = verified.expect("checked");
            prop_assert_eq!(&verified.id, &id);
            // Equal secrets in one ring verify under the first of them.
            let first_equal = secrets.iter().position(|s| *s == secrets[signer_index]);
            prop_assert_eq!(Some(verified.key_index), first_equal);
            prop_assert_eq!(verified.needs_resign(), verified.key_index != 0);
        }
    }

    /// Changing any single byte of a signed value (`s:<id>.<mac>`) makes it fail verification.
    #[test]
    fn any_single_byte_change_fails_verification(
        secrets in secrets(),
        id in session_id(),
        at in any::<prop::sample::Index>(),
        new_byte in any::<u8>(),
    ) {
        let ring = KeyRing::new(secrets).expect("long secrets");
        let signed = ring.sign(&id).into_bytes();
        let i = at.index(signed.len());
        prop_assume!(signed[i] != new_byte);
        let mut tampered = signed.clone();
        tampered[i] = new_byte;
        // A cookie value is a &str; bytes that are not UTF-8 never reach the verifier.
        if let Ok(tampered) = String::from_utf8(tampered) {
            prop_assert_eq!(ring.verify_cookie_value(&tampered), None);
        }
    }

    /// The same on the wire form (percent-encoded): a change either fails, or is a change of
    /// case in a `%XX` escape that decodes to the very same signed value.
    #[test]
    fn any_single_byte_change_on_the_wire_fails_or_decodes_identically(
        secrets in secrets(),
        id in session_id(),
        at in any::<prop::sample::Index>(),
        new_byte in any::<u8>(),
    ) {
        let ring = KeyRing::new(secrets).expect("long secrets");
        let wire = ring.sign_cookie_value(&id).into_bytes();
        let i = at.index(wire.len());
        prop_assume!(wire[i] != new_byte);
        let mut tampered = wire.clone();
        tampered[i] = new_byte;
        if let Ok(tampered) = String::from_utf8(tampered) {
            if let Some(v) = ring.verify_cookie_value(&tampered) {
                prop_assert_eq!(&v.id, &id);
                prop_assert!(
                    tampered.eq_ignore_ascii_case(std::str::from_utf8(&wire).expect("ascii")),
                    "{tampered} verified"
                );
            }
        }
    }

    /// Any string: verification gives nothing or an id that parses and re-verifies.
    #[test]
    fn any_cookie_value_is_nothing_or_a_valid_id(secrets in secrets(), value in any::<String>()) {
        let ring = KeyRing::new(secrets).expect("long secrets");
        if let Some(v) = ring.verify_cookie_value(&value) {
            prop_assert_eq!(SessionId::parse(v.id.as_str()), Ok(v.id.clone()));
        }
    }

    /// `SessionId::parse` accepts exactly the 16..=128-character base64url strings, and
    /// parsing what it accepted gives the same id.
    #[test]
    fn session_id_parse_accepts_exactly_the_alphabet(s in any::<String>()) {
        let expected = (16..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match SessionId::parse(&s) {
            Ok(id) => {
                prop_assert!(expected);
                prop_assert_eq!(id.as_str(), s.as_str());
            }
            Err(_) => prop_assert!(!expected),
        }
    }

    /// Every codec reads any bytes as data or a `DecodeError`, never a panic; and what it
    /// reads back it writes and reads again unchanged.
    #[test]
    fn codecs_decode_any_bytes_to_data_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for codec in [&NativeCodec as &dyn Codec, &JsonCodec] {
            if let Ok(data) = codec.decode(&bytes) {
                let again = codec.encode(&data).expect("decoded data is encodable");
                prop_assert_eq!(codec.decode(&again).expect("own output decodes"), data);
            }
        }
    }

    /// The same with bytes that start like each format, so the fuzzing goes past the first
    /// byte: the native format byte then arbitrary MessagePack-ish bytes, or a `{`.
    #[test]
    fn codecs_decode_near_valid_bytes_to_data_or_an_error(
        first in prop::sample::select(vec![1u8, b'{']),
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![first];
        bytes.extend(rest);
        for codec in [&NativeCodec as &dyn Codec, &JsonCodec] {
            let _ = codec.decode(&bytes);
        }
    }

    /// `decode(encode(x)) == x` for any data of the JSON model, in every codec.
    #[test]
    fn codecs_round_trip_any_json_data(data in data()) {
        for codec in [&NativeCodec as &dyn Codec, &JsonCodec] {
            let bytes = codec.encode(&data).expect("data within the depth limit encodes");
            prop_assert_eq!(&codec.decode(&bytes).expect("own output decodes"), &data);
        }
    }

    /// The express-session reader: any bytes give a session or a `DecodeError`.
    #[test]
    fn express_reader_decodes_any_bytes_to_a_session_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ExpressFormat::new().decode(&bytes);
        let mut near = br#"{"cookie":"#.to_vec();
        near.extend(&bytes);
        let _ = ExpressFormat::new().decode(&near);
    }

    /// The express-session writer and reader round-trip any data that avoids Express's
    /// reserved keys (`cookie` and the `Session` methods), with the principal kept.
    #[test]
    fn express_json_round_trips_any_data(
        mut data in data(),
        principal in proptest::option::of(prop_oneof![
            "[a-z0-9]{1,12}".prop_map(Value::String),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
        ]),
    ) {
        // `userId` included: the principal is the data under it (a string or an integer,
        // kept as such; anything else there is plain data and no principal), as the
        // middleware keeps them in express mode.
        data.retain(|k, _| !coatcheck_core::is_express_reserved(k));
        if let Some(p) = principal {
            data.insert("userId".into(), p);
        }
        let format = ExpressFormat::new();
        let now = Timestamp::from_millis(1_790_000_000_000);
        let mut record = Record::new(SessionId::generate(), now, now.saturating_add(Duration::from_secs(3600)));
        record.user_id = data.get("userId").and_then(coatcheck_core::express_principal);
        record.data = data;
        let json = format.encode(&record, now).expect("encodable");
        let back = format.decode(json.as_bytes()).expect("own output decodes");
        prop_assert_eq!(back.user_id, record.user_id.clone());
        prop_assert_eq!(back.data, record.data.clone());
    }

    /// Whatever the times, a write's expiry never passes `created_at + absolute_timeout`;
    /// without an explicit expiry it never shortens the session (below that cap) and is at
    /// least `now + idle` (below that cap); an explicit expiry is taken as given (capped).
    #[test]
    fn expiry_on_write_is_capped_and_never_shortens_by_itself(
        idle_s in 1u64..100_000,
        absolute_s in proptest::option::of(1u64..1_000_000),
        created in 0i64..2_000_000_000_000,
        since_creation_ms in 0i64..2_000_000_000,
        current_offset_ms in -2_000_000_000i64..2_000_000_000,
        explicit_offset_ms in proptest::option::of(-2_000_000_000i64..2_000_000_000),
    ) {
        let policy = ExpiryPolicy::new(Duration::from_secs(idle_s))
            .with_absolute_timeout(absolute_s.map(Duration::from_secs));
        let created_at = Timestamp::from_millis(created);
        let now = Timestamp::from_millis(created + since_creation_ms);
        let current = Timestamp::from_millis(now.as_millis() + current_offset_ms);
        let explicit = explicit_offset_ms.map(|o| Timestamp::from_millis(now.as_millis() + o));
        let t = policy.on_write(created_at, current, explicit, now);
        let cap = policy.absolute_deadline(created_at);
        if let Some(cap) = cap {
            prop_assert!(t <= cap, "{t:?} past the absolute deadline {cap:?}");
        }
        let capped = |x: Timestamp| cap.map_or(x, |c| x.min(c));
        match explicit {
            Some(e) => prop_assert_eq!(t, capped(e)),
            None => {
                prop_assert!(t >= capped(current), "shortened: {current:?} → {t:?}");
                let idle_end = now.saturating_add(Duration::from_secs(idle_s));
                prop_assert!(t >= capped(idle_end), "less than the idle timeout");
            }
        }
    }
}
