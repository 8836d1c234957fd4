//! `timestamptz` on the wire, exactly: a [`Timestamp`] (UTC milliseconds) bound and read in
//! Postgres' binary format (microseconds since 2000-01-01 UTC), so no float arithmetic, no
//! extra date crate, and no dependence on the connection's `TimeZone` setting.

use coatcheck_core::Timestamp;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};

/// Milliseconds from the Unix epoch to the Postgres epoch (2000-01-01T00:00:00Z).
const PG_EPOCH_MS: i64 = 946_684_800_000;
/// The OID of `timestamptz` (stable across every Postgres version).
const TIMESTAMPTZ_OID: u32 = 1184;
/// Postgres' `infinity` / `-infinity` in the binary format.
const PG_INFINITY: i64 = i64::MAX;
const PG_NEG_INFINITY: i64 = i64::MIN;
/// Postgres' valid `timestamptz` range in microseconds since its epoch
/// (`MIN_TIMESTAMP` and `END_TIMESTAMP` in its source): 4713 BC to 294276 AD.
const PG_MIN_US: i64 = -211_813_488_000_000_000;
const PG_END_US: i64 = 9_223_371_331_200_000_000;

/// A [`Timestamp`] as a Postgres `timestamptz`.
///
/// Instants beyond what Postgres can store are clamped to `infinity` / `-infinity`, which
/// read back as the largest / smallest [`Timestamp`]; a session expiring "never" (a
/// saturated `Timestamp`) therefore round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PgTs(pub(crate) Timestamp);

impl PgTs {
    fn to_pg_micros(self) -> i64 {
        let ms = self.0.as_millis();
        match ms
            .checked_sub(PG_EPOCH_MS)
            .and_then(|d| d.checked_mul(1000))
        {
            Some(us) if us >= PG_END_US => PG_INFINITY,
            Some(us) if us < PG_MIN_US => PG_NEG_INFINITY,
            Some(us) => us,
            None if ms > 0 => PG_INFINITY,
            None => PG_NEG_INFINITY,
        }
    }

    fn from_pg_micros(us: i64) -> Self {
        let ms = match us {
            PG_INFINITY => i64::MAX,
            PG_NEG_INFINITY => i64::MIN,
            // Sub-millisecond digits written by another tool are floored: an instant is
            // never moved later than it was stored.
            us => us.div_euclid(1000).saturating_add(PG_EPOCH_MS),
        };
        PgTs(Timestamp::from_millis(ms))
    }
}

impl sqlx::Type<Postgres> for PgTs {
    fn type_info() -> PgTypeInfo {
        // By OID, so sqlx never needs a round trip to look the type up by name.
        PgTypeInfo::with_oid(Oid(TIMESTAMPTZ_OID))
    }
}

impl sqlx::Encode<'_, Postgres> for PgTs {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.to_pg_micros().to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for PgTs {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into().map_err(|_| {
                    BoxDynError::from("a binary timestamptz must be exactly 8 bytes")
                })?;
                Ok(PgTs::from_pg_micros(i64::from_be_bytes(bytes)))
            }
            // Every statement of this crate has parameters, so results come back binary.
            PgValueFormat::Text => Err("timestamptz in text format is not supported".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_millis_exactly() {
        for ms in [
            0,
            1,
            -1,
            PG_EPOCH_MS,
            PG_EPOCH_MS - 1,
            1_763_796_315_940,
            -62_135_596_800_000,
        ] {
            let t = PgTs(Timestamp::from_millis(ms));
            assert_eq!(PgTs::from_pg_micros(t.to_pg_micros()), t, "{ms}");
        }
        assert_eq!(PgTs(Timestamp::from_millis(PG_EPOCH_MS)).to_pg_micros(), 0);
        assert_eq!(
            PgTs(Timestamp::from_millis(PG_EPOCH_MS + 1)).to_pg_micros(),
            1000
        );
    }

    #[test]
    fn extremes_become_infinities_and_back() {
        let max = PgTs(Timestamp::from_millis(i64::MAX));
        let min = PgTs(Timestamp::from_millis(i64::MIN));
        assert_eq!(max.to_pg_micros(), PG_INFINITY);
        assert_eq!(min.to_pg_micros(), PG_NEG_INFINITY);
        assert_eq!(PgTs::from_pg_micros(PG_INFINITY), max);
        assert_eq!(PgTs::from_pg_micros(PG_NEG_INFINITY), min);
        // Within i64 microseconds but past what Postgres stores: clamped, not an error.
        let far = PgTs(Timestamp::from_millis(9_224_318_100_000_000));
        assert_eq!(far.to_pg_micros(), PG_INFINITY);
    }

    #[test]
    fn sub_millisecond_digits_are_floored() {
        assert_eq!(PgTs::from_pg_micros(1_999).0.as_millis(), PG_EPOCH_MS + 1);
        assert_eq!(PgTs::from_pg_micros(-1).0.as_millis(), PG_EPOCH_MS - 1);
    }
}
