//! Codecs: how a session's [`Data`] becomes bytes in a store and back.

use std::fmt;

use crate::{Data, DecodeError, SessionId};

/// The leading byte of the native format, version 1: MessagePack follows.
pub const NATIVE_FORMAT_V1: u8 = 0x01;

/// How deeply values may nest. Decoders refuse deeper input (so hostile bytes cannot
/// exhaust the stack) and encoders refuse to write what could not be read back.
pub const MAX_DEPTH: usize = 128;

fn depth_ok(v: &serde_json::Value, budget: usize) -> bool {
    match v {
        serde_json::Value::Array(a) => budget > 0 && a.iter().all(|x| depth_ok(x, budget - 1)),
        serde_json::Value::Object(m) => budget > 0 && m.values().all(|x| depth_ok(x, budget - 1)),
        _ => true,
    }
}

pub(crate) fn check_depth(data: &Data) -> Result<(), EncodeError> {
    // The map itself is one level.
    if data.values().all(|v| depth_ok(v, MAX_DEPTH - 1)) {
        Ok(())
    } else {
        Err(EncodeError(format!(
            "session values nest deeper than {MAX_DEPTH} levels"
        )))
    }
}

/// Encoding a session's data failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// Turns session data into bytes and back. Decoding never panics on any input: it returns
/// the data or a [`DecodeError`].
///
/// ```
/// use coatcheck::core::{Codec, Data, JsonCodec, NativeCodec};
///
/// let mut data = Data::new();
/// data.insert("views".into(), 3.into());
/// for codec in [&NativeCodec as &dyn Codec, &JsonCodec] {
///     let bytes = codec.encode(&data).unwrap();
///     assert_eq!(codec.decode(&bytes).unwrap(), data);
/// }
/// assert!(NativeCodec.decode(b"\xff garbage").is_err());
/// ```
pub trait Codec: Send + Sync + fmt::Debug + 'static {
    /// Data to bytes.
    fn encode(&self, data: &Data) -> Result<Vec<u8>, EncodeError>;
    /// Bytes to data, or a [`DecodeError`].
    fn decode(&self, bytes: &[u8]) -> Result<Data, DecodeError>;

    /// The data of session `id` to bytes. Stores call this one: a codec that binds the
    /// bytes to their session ([`EncryptedCodec`](crate::EncryptedCodec)) needs the id.
    /// By default, [`encode`](Codec::encode).
    fn encode_for(&self, id: &SessionId, data: &Data) -> Result<Vec<u8>, EncodeError> {
        let _ = id;
        self.encode(data)
    }

    /// The bytes stored for session `id` back to data. By default,
    /// [`decode`](Codec::decode).
    fn decode_for(&self, id: &SessionId, bytes: &[u8]) -> Result<Data, DecodeError> {
        let _ = id;
        self.decode(bytes)
    }

    /// Whether this codec encrypts: a store refuses it where its bytes are not what is
    /// stored (express-compatible layouts, which Node must read).
    fn encrypts(&self) -> bool {
        false
    }
}

/// The native format: one format byte ([`NATIVE_FORMAT_V1`]) then MessagePack (rmp-serde).
///
/// The format byte lets a later version change the encoding while still reading what this
/// one wrote. Decoding also accepts plain JSON objects (bytes starting with `{`), so a store
/// can move from [`JsonCodec`] to this one without losing sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeCodec;

impl Codec for NativeCodec {
    fn encode(&self, data: &Data) -> Result<Vec<u8>, EncodeError> {
        check_depth(data)?;
        let mut out = Vec::with_capacity(64);
        out.push(NATIVE_FORMAT_V1);
        rmp_serde::encode::write_named(&mut out, data).map_err(|e| EncodeError(e.to_string()))?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Data, DecodeError> {
        match bytes.split_first() {
            Some((&NATIVE_FORMAT_V1, rest)) => {
                let mut de = rmp_serde::Deserializer::new(rest);
                de.set_max_depth(MAX_DEPTH);
                let data: Data = serde::Deserialize::deserialize(&mut de)
                    .map_err(|e| DecodeError::with_source("invalid MessagePack session data", e))?;
                if de.into_inner().is_empty() {
                    Ok(data)
                } else {
                    Err(DecodeError::new("trailing bytes after session data"))
                }
            }
            Some((b'{', _)) => JsonCodec.decode(bytes),
            Some((b, _)) => Err(DecodeError::new(format!(
                "unknown session format byte 0x{b:02x}"
            ))),
            None => Err(DecodeError::new("empty session data")),
        }
    }
}

/// Plain JSON (an object), readable by other tools.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode(&self, data: &Data) -> Result<Vec<u8>, EncodeError> {
        check_depth(data)?;
        serde_json::to_vec(data).map_err(|e| EncodeError(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Data, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::with_source("invalid JSON session data", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Data {
        let v = json!({
            "views": 3, "max": i64::MAX, "min": i64::MIN, "umax": u64::MAX, "pi": std::f64::consts::PI,
            "tiny": 1e-300, "neg": -0.5, "s": "héllo ✓ 🎉", "null": null, "t": true,
            "nested": {"a": [1, 2, {"b": "c"}], "e": {}}, "ключ": "значение"
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn native_round_trips_exactly_and_keeps_order() {
        let data = sample();
        let bytes = NativeCodec.encode(&data).unwrap();
        assert_eq!(bytes[0], NATIVE_FORMAT_V1);
        let back = NativeCodec.decode(&bytes).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            data.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn json_round_trips_and_native_reads_json() {
        let data = sample();
        let bytes = JsonCodec.encode(&data).unwrap();
        assert_eq!(JsonCodec.decode(&bytes).unwrap(), data);
        assert_eq!(NativeCodec.decode(&bytes).unwrap(), data);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x01",
            b"\x01\xc1",
            b"\x01\x91\x01",
            b"\x02abc",
            b"{",
            b"[1]",
            b"\x01\x81\x01\x02",
        ] {
            assert!(NativeCodec.decode(bad).is_err(), "{bad:?}");
        }
        assert!(JsonCodec.decode(b"[1,2]").is_err());
        assert!(JsonCodec.decode(b"\xff").is_err());
        // trailing bytes
        let mut ok = NativeCodec.encode(&sample()).unwrap();
        ok.push(0);
        assert!(NativeCodec.decode(&ok).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut bytes = vec![NATIVE_FORMAT_V1, 0x81, 0xa1, b'a'];
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0x01);
        assert!(NativeCodec.decode(&bytes).is_err());
        let mut deep = serde_json::Value::Null;
        for _ in 0..200 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        let mut data = Data::new();
        data.insert("deep".into(), deep);
        assert!(NativeCodec.encode(&data).is_err());
        assert!(JsonCodec.encode(&data).is_err());
        let json = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(JsonCodec.decode(json.as_bytes()).is_err());
    }
}
