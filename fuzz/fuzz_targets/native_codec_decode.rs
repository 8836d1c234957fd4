//! Property: `NativeCodec::decode` on any bytes returns `Ok(data)` or a `DecodeError` (never a
//! panic or a stack overflow, whatever the nesting). If it returns `Ok(data)`, then
//! `encode(&data)` is either an `EncodeError` (e.g. nested deeper than `MAX_DEPTH`) or bytes
//! that start with `NATIVE_FORMAT_V1` and decode back to exactly `data` (same keys, same
//! order, same values); encoding is then a fixed point (encode(decode(e)) == e).
#![no_main]

use coatcheck_core::{Codec, NativeCodec, NATIVE_FORMAT_V1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(data) = NativeCodec.decode(bytes) else {
        return;
    };
    let Ok(encoded) = NativeCodec.encode(&data) else {
        return;
    };
    assert_eq!(encoded.first(), Some(&NATIVE_FORMAT_V1));
    let back = NativeCodec
        .decode(&encoded)
        .expect("what NativeCodec encoded must decode");
    assert_eq!(back, data, "round trip changed the data");
    assert!(
        back.keys().eq(data.keys()),
        "round trip changed the key order"
    );
    let again = NativeCodec
        .encode(&back)
        .expect("encoded once, must encode again");
    assert_eq!(again, encoded, "encoding is not a fixed point");
});
