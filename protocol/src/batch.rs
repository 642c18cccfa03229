//! The unit of the write-ahead log.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::{DataPoint, Dimensions, Name};

/// One shard's share of one ingest request, applied by the shard's state machine as part of
/// a [`ShardEntry`]. `received_ms` is the ingesting node's arrival stamp, carried so that
/// apply() reads no clock. The points are shared, so cloning a batch (the log store keeps
/// recent entries for the state machine and replication to read back) copies no point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardBatch {
    pub shard: u32,
    pub received_ms: i64,
    pub points: Points,
    /// The client's idempotency key for the request this batch is part of: the shard
    /// remembers it, so a retried request is applied once (SPEC §3).
    pub batch_id: Option<String>,
    /// The points' series hashes as the ingesting node computed them to place the points, so
    /// the leader's state machine does not hash every point again. Not encoded: a batch read
    /// back from the log or received by a follower has none, and [`ShardBatch::series_hash`]
    /// computes them.
    #[serde(skip)]
    pub hashes: SeriesHashes,
    /// The batch's own encoding, kept where the batch is made (the ingesting node encodes it
    /// right after splitting a request, while its points are still in the CPU's cache, and
    /// forwards those bytes to the shard's leader, which keeps what it received): the log
    /// entry that carries the batch is built from them instead of encoding the points again.
    /// Not encoded; shared by clones.
    #[serde(skip)]
    pub encoded: KeptBytes,
}

/// One entry of a shard's Raft log: the batches its leader was given while the entry before
/// was being committed, in the order they came. Under load many requests touch a shard at
/// once; writing their shares as one entry (one append, one message to each follower, one
/// apply) instead of one entry each is what keeps a replicated shard's cost per request from
/// being paid three times over (see `RaftGroups::write`). Encoded as the list of its batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub parts: Vec<ShardBatch>,
    /// The encoding of the Raft log entry that carries this one, built by the leader's log
    /// store from its batches' kept encodings (or received by a follower): replication to
    /// every follower and each log reuse it instead of encoding the points again. Not
    /// encoded; shared by clones.
    #[serde(skip)]
    pub encoded: KeptBytes,
}

impl ShardEntry {
    pub fn new(parts: Vec<ShardBatch>) -> Self {
        Self {
            parts,
            encoded: Default::default(),
        }
    }
}

impl From<ShardBatch> for ShardEntry {
    fn from(batch: ShardBatch) -> Self {
        Self::new(vec![batch])
    }
}

/// Bytes kept beside a value as a cache of its encoding (see [`ShardBatch::encoded`] and
/// [`ShardEntry::encoded`]). Not part of the value: two values compare equal whatever their
/// caches hold.
#[derive(Clone, Debug, Default)]
pub struct KeptBytes(Arc<Mutex<Option<Arc<[u8]>>>>);

impl KeptBytes {
    pub(crate) fn get(&self) -> Option<Arc<[u8]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, bytes: Arc<[u8]>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }
}

impl PartialEq for KeptBytes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl crate::codec::EntryBytes for ShardEntry {
    fn decode_payload(entry: &Arc<[u8]>, start: usize) -> Result<Self, crate::codec::CodecError> {
        let bytes = entry.get(start..).ok_or_else(|| {
            crate::codec::CodecError::Decode(format!("entry starts past its {} bytes", entry.len()))
        })?;
        crate::codec::decode_shard_entry(bytes)
    }

    fn entry_bytes(&self, log_id_prefix: &[u8]) -> Option<Arc<[u8]>> {
        self.encoded.get().filter(|b| b.starts_with(log_id_prefix))
    }

    fn keep_entry_bytes(&self, bytes: Arc<[u8]>) {
        self.encoded.set(bytes);
    }

    /// The list's length as serde writes it, then each batch's kept encoding.
    fn write_kept_payload(&self, out: &mut Vec<u8>) -> bool {
        let parts: Option<Vec<Arc<[u8]>>> = self.parts.iter().map(|b| b.encoded.get()).collect();
        let Some(parts) = parts else { return false };
        let start = out.len();
        if crate::codec::encode_into(&(parts.len() as u64), out).is_err() {
            out.truncate(start);
            return false;
        }
        out.reserve(parts.iter().map(|p| p.len()).sum());
        for p in &parts {
            out.extend_from_slice(p);
        }
        true
    }

    fn held_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|b| match &b.points {
                Points::Encoded(e) => e.bytes.len(),
                Points::Decoded(v) => v
                    .iter()
                    .map(|p| {
                        std::mem::size_of::<DataPoint>()
                            + p.dimensions.capacity() * std::mem::size_of::<(Name, Name)>()
                    })
                    .sum(),
            })
            .sum()
    }
}

/// A cache beside a batch's points (see [`ShardBatch::hashes`]): not part of its value, so
/// two batches compare equal whatever their caches hold.
#[derive(Clone, Debug, Default)]
pub struct SeriesHashes(pub Arc<Vec<u64>>);

impl PartialEq for SeriesHashes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ShardBatch {
    /// Keeps `bytes`, which must be this batch's encoding ([`crate::codec::encode`] of it):
    /// the log entry that carries the batch is then built from them (see
    /// [`ShardBatch::encoded`]).
    pub fn keep_batch_bytes(&self, bytes: Arc<[u8]>) {
        self.encoded.set(bytes);
    }

    /// The batch's encoding: kept, or encoded now (and kept).
    pub fn batch_bytes(&self) -> Result<Arc<[u8]>, crate::codec::CodecError> {
        if let Some(b) = self.encoded.get() {
            return Ok(b);
        }
        let b: Arc<[u8]> = crate::codec::encode(self)?.into();
        self.keep_batch_bytes(b.clone());
        Ok(b)
    }

    /// The series hash of point `p`, the batch's `i`-th: from the cache, else computed.
    pub fn series_hash(&self, i: usize, p: &PointRef<'_>) -> u64 {
        match self.hashes.0.get(i) {
            Some(&h) => h,
            None => crate::point::series_hash_of(p.metric, p.dims),
        }
    }
}

/// A batch's points, in one of two forms with one value: as made on this node (parsed from a
/// request), or as received from another node or read back from the log — the points'
/// encoding, decompressed into one buffer and checked when the batch was decoded
/// ([`crate::codec::decompress_points`]). A follower applies every point its leader sends
/// and stores none of them as they came (a shard keeps one copy per series), so it reads them
/// where they lie instead of allocating each point's names and dimensions only to compare
/// and drop them. Both forms encode alike and compare by value.
#[derive(Clone)]
pub enum Points {
    Decoded(Arc<Vec<DataPoint>>),
    Encoded(EncodedPoints),
}

/// See [`Points::Encoded`]: `len` points encoded at `bytes[range]`, already checked.
#[derive(Clone)]
pub struct EncodedPoints {
    /// The decompressor's own buffer, shared as it is (not copied into an `Arc<[u8]>`).
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) range: std::ops::Range<usize>,
    pub(crate) len: usize,
}

impl Points {
    pub fn len(&self) -> usize {
        match self {
            Points::Decoded(v) => v.len(),
            Points::Encoded(e) => e.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points in order, borrowed.
    pub fn iter(&self) -> PointIter<'_> {
        match self {
            Points::Decoded(v) => PointIter::Decoded(v.iter()),
            Points::Encoded(e) => PointIter::Encoded(crate::codec::encoded_points(
                e.bytes.get(e.range.clone()).unwrap_or_default(),
                e.len,
            )),
        }
    }
}

impl From<Vec<DataPoint>> for Points {
    fn from(v: Vec<DataPoint>) -> Self {
        Points::Decoded(Arc::new(v))
    }
}

impl From<Arc<Vec<DataPoint>>> for Points {
    fn from(v: Arc<Vec<DataPoint>>) -> Self {
        Points::Decoded(v)
    }
}

impl PartialEq for Points {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Points {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Compressed ([`crate::codec::compress_points`]); both forms encode to the same bytes.
impl Serialize for Points {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let compressed = crate::codec::compress_points(self).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&compressed)
    }
}

/// Decodes to [`Points::Encoded`], as [`crate::codec::decode_shard_batch`] does.
impl<'de> Deserialize<'de> for Points {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Compressed;
        impl serde::de::Visitor<'_> for Compressed {
            type Value = Points;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("compressed points")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Points, E> {
                crate::codec::decompress_points(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(Compressed)
    }
}

/// One point of a batch, borrowed from either form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointRef<'a> {
    pub metric: &'a str,
    pub timestamp_ms: i64,
    pub value: f64,
    pub dims: Dims<'a>,
}

impl PointRef<'_> {
    pub fn to_point(&self) -> DataPoint {
        DataPoint {
            metric: self.metric.into(),
            timestamp_ms: self.timestamp_ms,
            value: self.value,
            dimensions: self.dims.to_owned(),
        }
    }
}

/// Field for field as `DataPoint` serializes.
impl Serialize for PointRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("DataPoint", 4)?;
        st.serialize_field("metric", self.metric)?;
        st.serialize_field("timestamp_ms", &self.timestamp_ms)?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("dimensions", &self.dims)?;
        st.end()
    }
}

/// A point's dimensions (sorted by key, keys unique), borrowed from either form.
#[derive(Clone, Copy)]
pub enum Dims<'a> {
    Slice(&'a [(Name, Name)]),
    /// `len` pairs encoded in `bytes`, already checked.
    Encoded {
        bytes: &'a [u8],
        len: usize,
    },
}

impl<'a> Dims<'a> {
    pub fn len(&self) -> usize {
        match self {
            Dims::Slice(s) => s.len(),
            Dims::Encoded { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> DimsIter<'a> {
        DimsIter(self.byte_pairs())
    }

    /// The pairs as the bytes of each name (all that hashing and comparing need).
    pub fn byte_pairs(&self) -> BytePairs<'a> {
        match *self {
            Dims::Slice(s) => BytePairs::Slice(s.iter()),
            Dims::Encoded { bytes, len } => {
                BytePairs::Encoded(crate::codec::encoded_pairs(bytes, len))
            }
        }
    }

    /// The value of dimension `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        match self {
            Dims::Slice(s) => s
                .binary_search_by(|(k, _)| k.as_str().cmp(key))
                .ok()
                .map(|i| s[i].1.as_str()),
            Dims::Encoded { .. } => self.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
        }
    }

    pub fn to_owned(&self) -> Dimensions {
        self.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// Whether these are `dims`.
    pub fn same_as(&self, dims: &Dimensions) -> bool {
        match self {
            Dims::Slice(s) => *s == dims.as_slice(),
            Dims::Encoded { .. } => {
                self.len() == dims.len()
                    && self
                        .byte_pairs()
                        .zip(dims)
                        .all(|((k, v), (dk, dv))| k == dk.as_bytes() && v == dv.as_bytes())
            }
        }
    }
}

impl<'a> From<&'a Dimensions> for Dims<'a> {
    fn from(d: &'a Dimensions) -> Self {
        Dims::Slice(d)
    }
}

impl PartialEq for Dims<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Dims<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// As a `Vec<(Name, Name)>` serializes.
impl Serialize for Dims<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        seq(s, self.len(), self.iter())
    }
}

/// A sequence of known length (bincode writes the length first).
fn seq<S: serde::Serializer, T: Serialize>(
    s: S,
    len: usize,
    items: impl Iterator<Item = T>,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut out = s.serialize_seq(Some(len))?;
    for item in items {
        out.serialize_element(&item)?;
    }
    out.end()
}

pub enum PointIter<'a> {
    Decoded(std::slice::Iter<'a, DataPoint>),
    Encoded(crate::codec::EncodedPointIter<'a>),
}

impl<'a> Iterator for PointIter<'a> {
    type Item = PointRef<'a>;

    fn next(&mut self) -> Option<PointRef<'a>> {
        match self {
            PointIter::Decoded(it) => it.next().map(|p| PointRef {
                metric: &p.metric,
                timestamp_ms: p.timestamp_ms,
                value: p.value,
                dims: Dims::Slice(&p.dimensions),
            }),
            PointIter::Encoded(it) => it.next(),
        }
    }
}

/// See [`Dims::byte_pairs`].
pub enum BytePairs<'a> {
    Slice(std::slice::Iter<'a, (Name, Name)>),
    Encoded(crate::codec::EncodedPairs<'a>),
}

impl<'a> Iterator for BytePairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        match self {
            BytePairs::Slice(it) => it.next().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            BytePairs::Encoded(it) => it.next(),
        }
    }
}

/// See [`Dims::iter`]. Encoded names were checked to be UTF-8 when their batch was decoded;
/// were one not, the iteration would end there.
pub struct DimsIter<'a>(BytePairs<'a>);

impl<'a> Iterator for DimsIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        let (k, v) = self.0.next()?;
        Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
    }
}
