//! The one binary codec: bincode 2 (serde mode, standard config).
//!
//! This is the only module that names bincode, so a successor replaces it in one file.
//! Decoding caps allocations at [`DECODE_LIMIT`] bytes so a hostile or corrupt frame cannot
//! make the node allocate gigabytes, and rejects trailing bytes (a frame is exactly one value).

use std::sync::Arc;

use bincode::de::read::{BorrowReader, Reader};
use bincode::de::{BorrowDecode, BorrowDecoder, Decode, DecoderImpl};
use bincode::error::DecodeError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::{Dims, EncodedPoints, PointRef, Points};
use crate::{ShardBatch, ShardEntry};

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

fn config() -> Config {
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
    /// Decodes the payload encoded at `entry[start..]`; the default is [`decode`]. A type on
    /// the hot path (a shard's batch, decoded by every follower) may decode its exact same
    /// bytes faster, or keep referring to them.
    fn decode_payload(entry: &Arc<[u8]>, start: usize) -> Result<Self, CodecError>
    where
        Self: Sized + DeserializeOwned,
    {
        decode(entry.get(start..).unwrap_or_default())
    }
    /// The kept encoding, if it is of the entry whose log id encodes to `log_id_prefix`.
    fn entry_bytes(&self, _log_id_prefix: &[u8]) -> Option<Arc<[u8]>> {
        None
    }
    fn keep_entry_bytes(&self, _bytes: Arc<[u8]>) {}
    /// Memory the payload holds besides its encoding (a log store that caps the entries it
    /// keeps counts both; the encoding of a batch's points is compressed, the points in
    /// memory are not).
    fn held_bytes(&self) -> usize {
        0
    }
    /// Appends the payload's own encoding ([`encode`]'s bytes) to `out` from what was kept,
    /// without encoding the payload again (an entry's encoding is its log id's, the payload
    /// variant's, then these). Returns false, leaving `out` as it was, if nothing was kept.
    fn write_kept_payload(&self, _out: &mut Vec<u8>) -> bool {
        false
    }
}

impl EntryBytes for u64 {}

/// Decodes the [`ShardBatch`] encoded in `bytes` exactly as [`decode`] would (the same
/// bytes, the same errors for the same damage, the same limit), but keeps its points as they
/// were encoded ([`crate::batch::Points::Encoded`], in the decompressor's buffer, see
/// [`decompress_points`]) instead of allocating each one's names: a follower decodes every
/// point its leader sends, and allocating them only to compare and drop them cost it a fifth
/// of its time.
pub fn decode_shard_batch(bytes: &[u8]) -> Result<ShardBatch, CodecError> {
    let mut d = decoder(bytes);
    let batch = read_shard_batch(&mut d)?;
    let used = d.borrow_reader().pos;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(batch)
}

/// Decodes the [`ShardEntry`] encoded in `bytes` as [`decode`] would, each of its batches as
/// [`decode_shard_batch`] does.
pub fn decode_shard_entry(bytes: &[u8]) -> Result<ShardEntry, CodecError> {
    let mut d = decoder(bytes);
    // Serde writes a list as its length, then its items.
    let n = u64::decode(&mut d).map_err(decode_error)?;
    // Every batch takes at least a byte: a length beyond the bytes left is damage, found
    // before allocating for it.
    let left = (bytes.len() - d.borrow_reader().pos) as u64;
    if n > left {
        return Err(CodecError::Decode(format!(
            "an entry of {n} batches in {left} bytes"
        )));
    }
    let mut parts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        parts.push(read_shard_batch(&mut d)?);
    }
    let used = d.borrow_reader().pos;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(ShardEntry::new(parts))
}

fn read_shard_batch(d: &mut SliceDecoder<'_>) -> Result<ShardBatch, CodecError> {
    // Field by field in the order `ShardBatch` and serde's `Option` write them (the
    // round-trip and damaged-bytes tests below hold this to serde's decoder).
    let shard = u32::decode(d).map_err(decode_error)?;
    let received_ms = i64::decode(d).map_err(decode_error)?;
    let compressed: &[u8] = BorrowDecode::borrow_decode(d).map_err(decode_error)?;
    let points = decompress_points(compressed)?;
    let batch_id = Option::<String>::decode(d).map_err(decode_error)?;
    Ok(ShardBatch {
        shard,
        received_ms,
        points,
        batch_id,
        hashes: Default::default(),
        encoded: Default::default(),
    })
}

fn decode_error(e: DecodeError) -> CodecError {
    CodecError::Decode(e.to_string())
}

/// A batch's points as they travel and rest (in forwards, append-entries and every log):
/// the encoding of the points as a `Vec<DataPoint>`, compressed (Snappy's block format).
/// Points of one batch share metric and dimension names and nearly share timestamps, so
/// they shrink four to five times (38.9 → 7.4 bytes a point in `cargo bench --bench engine`'s
/// batches), and with them every byte a cluster sends over QUIC, encrypts, writes to three
/// logs and fsyncs. The same bench prints what it costs: encoding and compressing where the
/// batch is made, decompressing and checking on each node that receives it.
pub(crate) fn compress_points(points: &Points) -> Result<Vec<u8>, CodecError> {
    SCRATCH.with_borrow_mut(|(raw, compressor)| {
        raw.clear();
        match points {
            Points::Decoded(v) => encode_into(&**v, raw)?,
            Points::Encoded(e) => {
                encode_into(&(e.len as u64), raw)?;
                raw.extend_from_slice(e.bytes.get(e.range.clone()).unwrap_or_default());
            }
        }
        let out = compressor
            .compress_vec(raw)
            .map_err(|e| CodecError::Encode(format!("points: {e}")));
        // A rare huge batch does not pin its buffer to the thread.
        if raw.capacity() > 1 << 20 {
            *raw = Vec::new();
        }
        out
    })
}

thread_local! {
    /// Kept per thread: the points' plain encoding (grown to a batch's size once, not on
    /// every batch) and a compressor (whose table is 32 KiB to allocate and clear).
    static SCRATCH: std::cell::RefCell<(Vec<u8>, snap::raw::Encoder)> =
        std::cell::RefCell::new((Vec::new(), snap::raw::Encoder::new()));
}

/// The points [`compress_points`] wrote, decompressed (at most [`DECODE_LIMIT`] bytes, which
/// is checked before allocating) and every point checked by the plain reader that reads them
/// again when they are applied ([`Again::check_point`]: every name UTF-8, every length within
/// the bytes, nothing left over); they stay encoded ([`crate::batch::Points::Encoded`]).
/// Both ways of decoding a batch come through here.
pub(crate) fn decompress_points(compressed: &[u8]) -> Result<Points, CodecError> {
    let damaged = |e: snap::Error| CodecError::Decode(format!("points: {e}"));
    let n = snap::raw::decompress_len(compressed).map_err(damaged)?;
    if n > DECODE_LIMIT {
        return Err(CodecError::Decode(format!(
            "points: {n} bytes decompressed, over the {DECODE_LIMIT}-byte limit"
        )));
    }
    let raw = Arc::new(
        snap::raw::Decoder::new()
            .decompress_vec(compressed)
            .map_err(damaged)?,
    );
    // The count allocates nothing here: a count the bytes cannot hold fails at the first
    // point missing.
    let mut r = Again { buf: &raw, pos: 0 };
    let len = r
        .varint()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| CodecError::Decode("points: the count is cut short or damaged".into()))?;
    let from = r.pos;
    for i in 0..len {
        r.check_point().map_err(|what| {
            CodecError::Decode(format!("point {i} of {len}: {what} cut short or damaged"))
        })?;
    }
    let to = r.pos;
    if to != raw.len() {
        return Err(CodecError::Trailing(raw.len() - to));
    }
    Ok(Points::Encoded(EncodedPoints {
        bytes: raw,
        range: from..to,
        len,
    }))
}

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

type SliceDecoder<'a> = DecoderImpl<Cursor<'a>, Config, ()>;

fn decoder(bytes: &[u8]) -> SliceDecoder<'_> {
    DecoderImpl::new(Cursor { buf: bytes, pos: 0 }, config(), ())
}

/// A slice reader that tells how far it has read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader for Cursor<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
        let src = self.take(out.len())?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.buf.get(self.pos..self.pos.checked_add(n)?)
    }

    fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
    }
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::UnexpectedEnd {
                additional: n - left,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
}

impl<'a> BorrowReader<'a> for Cursor<'a> {
    fn take_bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.take(n)
    }
}

/// Reads points in place, as bincode lays them out (its standard configuration:
/// variable-length integers, zigzag for signed ones, little-endian floats, strings as a length
/// and their bytes), without bincode's generic machinery: a node checks every point it
/// receives this way ([`Again::check_point`]) and reads it again when applying it — bincode's
/// decoders took three times as long for either. Anything it does not expect ends the read
/// (`None`), never a panic; property tests hold it to serde's decoder.
struct Again<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Again<'a> {
    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let a = self.buf.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(a)
    }

    fn varint(&mut self) -> Option<u64> {
        let first = *self.buf.get(self.pos)?;
        self.pos += 1;
        match first {
            0..=250 => Some(u64::from(first)),
            251 => self.fixed().map(|a| u64::from(u16::from_le_bytes(a))),
            252 => self.fixed().map(|a| u64::from(u32::from_le_bytes(a))),
            253 => self.fixed().map(u64::from_le_bytes),
            _ => None,
        }
    }

    fn zigzag(&mut self) -> Option<i64> {
        let u = self.varint()?;
        Some((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    /// Reads one point as [`Again::point`] will, checking what that reader takes on trust:
    /// every name UTF-8. Says which part is cut short or damaged.
    fn check_point(&mut self) -> Result<(), &'static str> {
        self.text().ok_or("metric name")?;
        self.zigzag().ok_or("timestamp")?;
        self.fixed::<8>().ok_or("value")?;
        let len = self.varint().ok_or("dimension count")?;
        for _ in 0..len {
            self.text().ok_or("dimension name")?;
            self.text().ok_or("dimension value")?;
        }
        Ok(())
    }

    fn point(&mut self) -> Option<PointRef<'a>> {
        let metric = self.text()?;
        let timestamp_ms = self.zigzag()?;
        let value = f64::from_le_bytes(self.fixed()?);
        let len = usize::try_from(self.varint()?).ok()?;
        let from = self.pos;
        for _ in 0..len {
            self.bytes()?;
            self.bytes()?;
        }
        Some(PointRef {
            metric,
            timestamp_ms,
            value,
            dims: Dims::Encoded {
                bytes: self.buf.get(from..self.pos)?,
                len,
            },
        })
    }
}

/// `left` items read in place from checked bytes (see [`Again`]); reading them again cannot
/// fail, but were the bytes damaged anyway, the iteration would end early, never panic.
pub struct InPlace<'a, T> {
    r: Again<'a>,
    left: usize,
    read: fn(&mut Again<'a>) -> Option<T>,
}

impl<T> Iterator for InPlace<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.left = self.left.checked_sub(1)?;
        let item = (self.read)(&mut self.r);
        if item.is_none() {
            self.left = 0;
        }
        item
    }
}

/// The points of [`crate::batch::Points::Encoded`].
pub type EncodedPointIter<'a> = InPlace<'a, PointRef<'a>>;

/// The dimensions of an encoded point as the bytes of each name (hashing and comparing need
/// no more; they were checked to be UTF-8 on receipt).
pub type EncodedPairs<'a> = InPlace<'a, (&'a [u8], &'a [u8])>;

pub(crate) fn encoded_points(bytes: &[u8], len: usize) -> EncodedPointIter<'_> {
    InPlace {
        r: Again { buf: bytes, pos: 0 },
        left: len,
        read: Again::point,
    }
}

pub(crate) fn encoded_pairs(bytes: &[u8], len: usize) -> EncodedPairs<'_> {
    InPlace {
        r: Again { buf: bytes, pos: 0 },
        left: len,
        read: |r| r.bytes().zip(r.bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataPoint;
    use proptest::prelude::*;

    fn point_strategy() -> impl Strategy<Value = DataPoint> {
        (
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
            })
    }

    /// What [`decompress_points`] makes of `raw`, compressed as a batch's points travel, read
    /// back in place, against what serde's decoder makes of `raw` as points: damage to the
    /// compressed form is mostly caught by the decompressor, so this is where the check on
    /// receipt and the in-place reader meet arbitrary points.
    fn same_as_serde(raw: &[u8]) -> Result<(), TestCaseError> {
        let compressed = snap::raw::Encoder::new().compress_vec(raw).unwrap();
        let slow = decode::<Vec<DataPoint>>(raw);
        match (slow, decompress_points(&compressed)) {
            (Ok(a), Ok(f)) => {
                prop_assert_eq!(f.len(), a.len());
                let read: Vec<DataPoint> = f.iter().map(|p| p.to_point()).collect();
                // Compared as encoded: damage can make a value NaN, which equals nothing.
                prop_assert_eq!(encode(&read).unwrap(), encode(&a).unwrap());
            }
            (Err(_), Err(_)) => {}
            (a, f) => prop_assert!(false, "serde {a:?}, in place {f:?}"),
        }
        Ok(())
    }

    fn batch_strategy() -> impl Strategy<Value = ShardBatch> {
        (
            any::<u32>(),
            any::<i64>(),
            proptest::collection::vec(point_strategy(), 0..20),
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
            // Alone in a log entry's payload, behind a prefix (the entry's log id), read back
            // point by point, and encoded again to the same bytes.
            let payload = encode(&ShardEntry::from(b.clone())).unwrap();
            let mut entry = vec![9u8; 5];
            entry.extend_from_slice(&payload);
            let mut back = ShardEntry::decode_payload(&entry.into(), 5).unwrap();
            prop_assert_eq!(back.parts.len(), 1);
            let fast = back.parts.pop().unwrap();
            prop_assert!(matches!(fast.points, Points::Encoded(_)));
            prop_assert_eq!(fast.points.len(), b.points.len());
            let owned: Vec<DataPoint> = fast.points.iter().map(|p| p.to_point()).collect();
            prop_assert_eq!(&owned, &*match &b.points {
                Points::Decoded(v) => v.clone(),
                Points::Encoded(_) => unreachable!("made decoded"),
            });
            for (p, q) in fast.points.iter().zip(&owned) {
                prop_assert_eq!(
                    crate::point::series_hash_of(p.metric, p.dims),
                    crate::point::series_hash(&q.metric, &q.dimensions)
                );
                prop_assert!(p.dims.same_as(&q.dimensions));
                for (k, _) in &q.dimensions {
                    let first = q.dimensions.iter().find(|(dk, _)| dk == k);
                    prop_assert_eq!(p.dims.get(k), first.map(|(_, v)| v.as_str()));
                }
            }
            prop_assert_eq!(encode(&fast).unwrap(), bytes);
            prop_assert_eq!(fast, b);
        }

        #[test]
        fn shard_entries_round_trip_and_are_built_from_their_batches_bytes(
            parts in proptest::collection::vec(batch_strategy(), 0..4),
        ) {
            let entry = ShardEntry::new(parts.clone());
            let bytes = encode(&entry).unwrap();
            prop_assert_eq!(decode::<ShardEntry>(&bytes).unwrap(), entry.clone());
            prop_assert_eq!(decode_shard_entry(&bytes).unwrap(), entry.clone());
            // Every batch's encoding kept (as where a request is split, or a forward
            // received): the entry's payload is those bytes, without encoding them again.
            prop_assert!(parts.iter().all(|b| b.encoded.get().is_none()));
            let kept: Vec<Arc<[u8]>> = parts.iter().map(|b| b.batch_bytes().unwrap()).collect();
            let mut built = vec![7u8];
            prop_assert!(entry.write_kept_payload(&mut built));
            prop_assert_eq!(&built[1..], bytes.as_slice());
            for (b, k) in parts.iter().zip(&kept) {
                prop_assert!(Arc::ptr_eq(&b.encoded.get().unwrap(), k));
            }
        }

        #[test]
        fn both_entry_decoders_agree_on_damaged_bytes(
            parts in proptest::collection::vec(batch_strategy(), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..,
        ) {
            let mut bytes = encode(&ShardEntry::new(parts)).unwrap();
            let at = flip.index(bytes.len());
            bytes[at] ^= bits;
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            match (decode::<ShardEntry>(&bytes), decode_shard_entry(&bytes)) {
                // Compared as encoded: damage can make a value NaN, which equals nothing.
                (Ok(a), Ok(f)) => prop_assert_eq!(encode(&a).unwrap(), encode(&f).unwrap()),
                (Err(_), Err(_)) => {}
                (a, f) => prop_assert!(false, "serde {a:?}, fast {f:?}"),
            }
        }

        #[test]
        fn both_batch_decoders_agree_on_damaged_bytes(
            b in batch_strategy(),
            // Cut short in some cases only: a cut almost always leaves a value incomplete,
            // which both reject alike, and the flip is the damage worth comparing.
            cut in proptest::option::of(any::<prop::sample::Index>()),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..,
        ) {
            let mut bytes = encode(&b).unwrap();
            let at = flip.index(bytes.len());
            bytes[at] ^= bits;
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let slow = decode::<ShardBatch>(&bytes);
            let fast = decode_shard_batch(&bytes);
            match (slow, fast) {
                // As encoded, for the same reason as above.
                (Ok(a), Ok(f)) => prop_assert_eq!(encode(&a).unwrap(), encode(&f).unwrap()),
                (Err(_), Err(_)) => {}
                (a, f) => prop_assert!(false, "serde {a:?}, fast {f:?}"),
            }
        }

        #[test]
        fn both_point_decoders_agree_on_damaged_plain_points(
            points in proptest::collection::vec(point_strategy(), 0..20),
            // Cut short in some cases only: a cut almost always leaves a value incomplete,
            // which both reject alike, and the flip is the damage worth comparing.
            cut in proptest::option::of(any::<prop::sample::Index>()),
            flip in any::<prop::sample::Index>(),
            bits in 1u8..,
        ) {
            let mut raw = encode(&points).unwrap();
            let at = flip.index(raw.len());
            raw[at] ^= bits;
            if let Some(cut) = cut {
                raw.truncate(cut.index(raw.len() + 1));
            }
            same_as_serde(&raw)?;
        }

        #[test]
        fn arbitrary_plain_points_read_back_as_serde_reads_them(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            same_as_serde(&bytes)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let slow = decode::<ShardBatch>(&bytes);
            // Whatever decodes reads back in place in full, the same as serde's decoder read it.
            if let Ok(b) = decode_shard_batch(&bytes) {
                let mut n = 0;
                for p in b.points.iter() {
                    n += 1;
                    let _ = crate::point::series_hash_of(p.metric, p.dims);
                    prop_assert_eq!(p.dims.to_owned().len(), p.dims.len());
                }
                prop_assert_eq!(n, b.points.len());
                prop_assert_eq!(slow.ok(), Some(b));
            }
        }
    }

    #[test]
    fn points_read_in_place_whatever_their_lengths_encode_to() {
        // Lengths and integers of every width bincode writes (one byte, then 251/252/253 and
        // two, four or eight bytes), read back in place as they were made.
        let points: Vec<DataPoint> = [0usize, 250, 251, 300, 70_000]
            .iter()
            .zip([0i64, -1, 125, -40_000, i64::MIN])
            .map(|(&n, ts)| DataPoint {
                metric: "m".repeat(n.max(1)).into(),
                timestamp_ms: ts,
                value: -0.0,
                dimensions: vec![("k".into(), "v".repeat(n).into()), ("z".into(), "".into())],
            })
            .collect();
        let made = ShardBatch {
            shard: 70_000,
            received_ms: i64::MAX,
            points: points.clone().into(),
            batch_id: Some("b".repeat(300)),
            hashes: Default::default(),
            encoded: Default::default(),
        };
        let bytes = encode(&made).expect("encode");
        let read = decode_shard_batch(&bytes).expect("decode");
        let back: Vec<DataPoint> = read.points.iter().map(|p| p.to_point()).collect();
        assert_eq!(back, points);
        assert_eq!(read, made);
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
        assert!(ShardEntry::decode_payload(&Arc::from(vec![0u8; 3]), 4).is_err());
        // An entry claiming 2^60 batches: refused before allocating.
        let mut evil = vec![0xFDu8];
        evil.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let err = decode_shard_entry(&evil).unwrap_err().to_string();
        assert!(err.contains("batches in"), "{err}");
        assert!(decode::<ShardEntry>(&evil).is_err());
        // Compressed points claiming to decompress past the limit: refused before allocating.
        let mut evil = encode(&(7u32, 0i64)).unwrap();
        evil.extend_from_slice(&serde_bytes_of(&[0x80, 0x80, 0x80, 0x80, 0x08]));
        evil.push(0);
        let err = decode_shard_batch(&evil).unwrap_err().to_string();
        assert!(err.contains("over the"), "{err}");
        let slow = decode::<ShardBatch>(&evil).unwrap_err().to_string();
        assert!(slow.contains("over the"), "{slow}");
    }

    /// `bytes` as serde's byte strings encode (a length, then the bytes).
    fn serde_bytes_of(bytes: &[u8]) -> Vec<u8> {
        let mut out = encode(&(bytes.len() as u64)).unwrap();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_batch_of_many_series_compresses_more_than_three_times() {
        // As the load generator and most agents send: one metric, a host dimension, points a
        // millisecond apart.
        let points: Vec<DataPoint> = (0..625)
            .map(|i| DataPoint {
                metric: "bench.value".into(),
                timestamp_ms: 1_764_900_000_000 + i,
                value: (i % 100) as f64,
                dimensions: vec![("host".into(), format!("h{}", i * 16 + 3).into())],
            })
            .collect();
        let raw = encode(&points).unwrap().len();
        let batch = ShardBatch {
            shard: 3,
            received_ms: 1_764_900_000_000,
            points: points.into(),
            batch_id: None,
            hashes: Default::default(),
            encoded: Default::default(),
        };
        let sent = encode(&batch).unwrap();
        assert!(
            sent.len() * 3 < raw,
            "{raw} bytes of points sent as {}",
            sent.len()
        );
        // What a log store counts as held in memory: the points, not their compressed form.
        assert!(ShardEntry::from(batch).held_bytes() > raw);
        let received = decode_shard_batch(&sent).unwrap();
        assert_eq!(ShardEntry::from(received).held_bytes(), raw);
    }
}
