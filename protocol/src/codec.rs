//! The one binary codec: bincode 2 (serde mode, standard config).
//!
//! This is the only module that names bincode, so a successor replaces it in one file.
//! Decoding caps allocations at [`DECODE_LIMIT`] bytes so a hostile or corrupt frame cannot
//! make the node allocate gigabytes, and rejects trailing bytes (a frame is exactly one value).

use bincode::de::{BorrowDecode, BorrowDecoder, Decode, Decoder};
use bincode::error::DecodeError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{DataPoint, Name, ShardBatch};

/// The most a single decoded value may allocate.
pub const DECODE_LIMIT: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(String),
    #[error("decode: {0}")]
    Decode(String),
    #[error("decode: {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `value` to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    encode_to_writer(value, buf)
}

/// Writes the encoding of `value` to `w` as it is produced (a large value, such as a shard's
/// snapshot, never sits whole in memory).
pub fn encode_to_writer<T: Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    w: &mut W,
) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, w, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value from the start of `bytes` and says how many bytes it took.
pub fn decode_with_len<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Decodes a value from the start of `bytes`, ignoring what follows (reading the leading
/// fields of a larger record without decoding all of it).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// A Raft entry's application data that can keep the encoding of the entry carrying it, so
/// a node encodes an entry once: for its log, for each follower, and (as a follower) not at
/// all. The bytes are the encoding of the whole entry, which starts with the encoding of its
/// log id: a batch proposed again (a new entry, a new log id) never reuses another entry's
/// bytes, because callers pass the new entry's log id encoding as `log_id_prefix`.
/// The defaults keep nothing (small payloads, such as metadata commands, are cheap to encode
/// again).
pub trait EntryBytes {
    /// Decodes a payload; the default is [`decode`]. A type on the hot path (a shard's
    /// batch, decoded by every follower) may decode its exact same bytes faster.
    fn decode_payload(bytes: &[u8]) -> Result<Self, CodecError>
    where
        Self: Sized + DeserializeOwned,
    {
        decode(bytes)
    }
    /// The kept encoding, if it is of the entry whose log id encodes to `log_id_prefix`.
    fn entry_bytes(&self, _log_id_prefix: &[u8]) -> Option<std::sync::Arc<[u8]>> {
        None
    }
    fn keep_entry_bytes(&self, _bytes: std::sync::Arc<[u8]>) {}
    /// The payload's own encoding ([`encode`]'s bytes), if it was kept: an entry's encoding is
    /// its log id's, the payload variant's, then these, so it is built without encoding the
    /// payload again.
    fn payload_bytes(&self) -> Option<std::sync::Arc<[u8]>> {
        None
    }
}

impl EntryBytes for u64 {}

/// Decodes a [`ShardBatch`] exactly as [`decode`] would (the same bytes, the same errors for
/// the same damage, the same allocation limit), through bincode's own decoders instead of
/// serde's visitors: a follower decodes every point its leader sends, and this takes about
/// two thirds of the time.
pub fn decode_shard_batch(bytes: &[u8]) -> Result<ShardBatch, CodecError> {
    let (FastBatch(batch), used) = bincode::borrow_decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(batch)
}

struct FastBatch(ShardBatch);

fn decode_name<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<Name, DecodeError> {
    let s: &str = BorrowDecode::borrow_decode(d)?;
    Ok(Name::new(s))
}

fn decode_len<T, D: Decoder>(d: &mut D) -> Result<usize, DecodeError> {
    let n = usize::try_from(u64::decode(d)?).map_err(|_| DecodeError::OutsideUsizeRange(0))?;
    d.claim_container_read::<T>(n)?;
    Ok(n)
}

// Field by field in the order `ShardBatch`, `DataPoint` and serde's `Option`, `Vec`, tuple
// and `Arc` impls write them (the round-trip tests below hold the two decoders together).
impl<'de, Ctx> BorrowDecode<'de, Ctx> for FastBatch {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Ctx>>(d: &mut D) -> Result<Self, DecodeError> {
        let shard = u32::decode(d)?;
        let received_ms = i64::decode(d)?;
        let n = decode_len::<DataPoint, _>(d)?;
        let mut points = Vec::with_capacity(n);
        for _ in 0..n {
            let metric = decode_name(d)?;
            let timestamp_ms = i64::decode(d)?;
            let value = f64::decode(d)?;
            let k = decode_len::<(Name, Name), _>(d)?;
            let mut dimensions = Vec::with_capacity(k);
            for _ in 0..k {
                dimensions.push((decode_name(d)?, decode_name(d)?));
            }
            points.push(DataPoint {
                metric,
                timestamp_ms,
                value,
                dimensions,
            });
        }
        let batch_id = Option::<String>::decode(d)?;
        Ok(FastBatch(ShardBatch {
            shard,
            received_ms,
            points: points.into(),
            batch_id,
            hashes: Default::default(),
            encoded: Default::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch_strategy() -> impl Strategy<Value = ShardBatch> {
        let point = (
            "[a-z_][a-z0-9_.]{0,20}",
            any::<i64>(),
            -1e300f64..1e300,
            proptest::collection::vec(("[a-z]{1,8}", ".{0,16}"), 0..4),
        )
            .prop_map(|(metric, ts, value, dims)| DataPoint {
                metric: metric.into(),
                timestamp_ms: ts,
                value,
                dimensions: dims
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            });
        (
            any::<u32>(),
            any::<i64>(),
            proptest::collection::vec(point, 0..20),
            proptest::option::of("[a-z0-9-]{0,12}"),
        )
            .prop_map(|(shard, received_ms, points, batch_id)| ShardBatch {
                batch_id,
                shard,
                received_ms,
                points: points.into(),
                hashes: Default::default(),
                encoded: Default::default(),
            })
    }

    proptest! {
        #[test]
        fn shard_batches_round_trip(b in batch_strategy()) {
            let bytes = encode(&b).unwrap();
            let back: ShardBatch = decode(&bytes).unwrap();
            prop_assert_eq!(&back, &b);
            prop_assert_eq!(decode_shard_batch(&bytes).unwrap(), b);
        }

        #[test]
        fn both_batch_decoders_agree_on_damaged_bytes(
            b in batch_strategy(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..,
        ) {
            let mut bytes = encode(&b).unwrap();
            let at = flip.index(bytes.len());
            bytes[at] ^= bits;
            bytes.truncate(cut.index(bytes.len() + 1));
            let slow = decode::<ShardBatch>(&bytes);
            let fast = decode_shard_batch(&bytes);
            match (slow, fast) {
                (Ok(a), Ok(f)) => prop_assert_eq!(a, f),
                (Err(_), Err(_)) => {}
                (a, f) => prop_assert!(false, "serde {a:?}, fast {f:?}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ShardBatch>(&bytes);
            let _ = decode_shard_batch(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_errors() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::Trailing(1))
        ));
        // A vector claiming 2^60 elements must fail on the limit, not try to allocate.
        let mut evil = vec![0xFFu8];
        evil.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Vec<u64>>(&evil).is_err());
        // A batch claiming 2^60 points likewise.
        let mut evil = encode(&7u32).unwrap();
        evil.push(0);
        evil.push(0xFD);
        evil.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_shard_batch(&evil).is_err());
    }
}
