//! The one binary codec: bincode 2 (serde mode, standard config).
//!
//! This is the only module that names bincode, so a successor replaces it in one file.
//! Decoding caps allocations at [`DECODE_LIMIT`] bytes so a hostile or corrupt frame cannot
//! make the node allocate gigabytes, and rejects trailing bytes (a frame is exactly one value).

use serde::de::DeserializeOwned;
use serde::Serialize;

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
    bincode::serde::encode_into_std_write(value, buf, bincode::config::standard())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
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
    /// The kept encoding, if it is of the entry whose log id encodes to `log_id_prefix`.
    fn entry_bytes(&self, _log_id_prefix: &[u8]) -> Option<std::sync::Arc<[u8]>> {
        None
    }
    fn keep_entry_bytes(&self, _bytes: std::sync::Arc<[u8]>) {}
}

impl EntryBytes for u64 {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataPoint, ShardBatch};
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
        )
            .prop_map(|(shard, received_ms, points)| ShardBatch {
                batch_id: None,
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
            prop_assert_eq!(back, b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ShardBatch>(&bytes);
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
    }
}
