//! What encryption at rest costs per record, without any store: encode and decode of the
//! benchmark's ~5-key session with the plain native codec and with `EncryptedCodec` around
//! it, as the median of many timed batches on one core.

use std::time::Instant;

use coatcheck_core::{Codec, DataKeys, EncryptedCodec, NativeCodec, SessionId};

use crate::store_level::sample_data;
use crate::{BoxErr, Settings};

/// The codec the benchmark encrypts with (a fixed key: a benchmark, not a deployment).
pub fn bench_codec() -> EncryptedCodec {
    EncryptedCodec::new(DataKeys::new([[0x42; 32]]).expect("one key"))
}

/// Median nanoseconds per call of `f` over `batches` batches of `per` calls.
fn median_ns(
    batches: usize,
    per: usize,
    mut f: impl FnMut() -> Result<(), BoxErr>,
) -> Result<f64, BoxErr> {
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..per {
            f()?;
        }
        samples.push(start.elapsed().as_nanos() as f64 / per as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

pub fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## Codec cost: encryption at rest, per record, no store\n");
    let (batches, per) = if s.quick { (5, 200) } else { (41, 5_000) };
    let id = SessionId::generate();
    let data = sample_data(7);
    let plain = NativeCodec;
    let encrypted = bench_codec();
    let plain_bytes = plain.encode_for(&id, &data)?;
    let sealed = encrypted.encode_for(&id, &data)?;
    let rows = [
        (
            "NativeCodec",
            plain_bytes.len(),
            median_ns(batches, per, || {
                plain.encode_for(&id, &data).map(drop).map_err(Into::into)
            })?,
            median_ns(batches, per, || {
                plain
                    .decode_for(&id, &plain_bytes)
                    .map(drop)
                    .map_err(Into::into)
            })?,
        ),
        (
            "EncryptedCodec (XChaCha20-Poly1305 around NativeCodec)",
            sealed.len(),
            median_ns(batches, per, || {
                encrypted
                    .encode_for(&id, &data)
                    .map(drop)
                    .map_err(Into::into)
            })?,
            median_ns(batches, per, || {
                encrypted
                    .decode_for(&id, &sealed)
                    .map(drop)
                    .map_err(Into::into)
            })?,
        ),
    ];
    println!("| codec | bytes | encode µs | decode µs | encode+decode per s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, bytes, enc, dec) in rows {
        println!(
            "| {name} | {bytes} | {:.2} | {:.2} | {:.0} |",
            enc / 1000.0,
            dec / 1000.0,
            1e9 / (enc + dec)
        );
    }
    println!();
    Ok(())
}
