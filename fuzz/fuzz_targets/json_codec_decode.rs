//! Property: `JsonCodec::decode` on any bytes returns `Ok(data)` or a `DecodeError` (never a
//! panic or a stack overflow, whatever the nesting). If it returns `Ok(data)`, then
//! `encode(&data)` is either an `EncodeError` (e.g. nested deeper than `MAX_DEPTH`) or JSON
//! that `JsonCodec` decodes back to exactly `data` (same keys, same order, same values, floats
//! bit-exact via serde_json's `float_roundtrip`), and that `NativeCodec` (which also reads
//! JSON objects) decodes to the same data; encoding is then a fixed point.
#![no_main]

use coatcheck_core::{Codec, JsonCodec, NativeCodec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(data) = JsonCodec.decode(bytes) else {
        return;
    };
    let Ok(encoded) = JsonCodec.encode(&data) else {
        return;
    };
    let back = JsonCodec
        .decode(&encoded)
        .expect("what JsonCodec encoded must decode");
    assert_eq!(back, data, "round trip changed the data");
    assert!(
        back.keys().eq(data.keys()),
        "round trip changed the key order"
    );
    let native = NativeCodec
        .decode(&encoded)
        .expect("NativeCodec must read JsonCodec's output");
    assert_eq!(native, data, "NativeCodec reads JSON differently");
    let again = JsonCodec
        .encode(&back)
        .expect("encoded once, must encode again");
    assert_eq!(again, encoded, "encoding is not a fixed point");
});
