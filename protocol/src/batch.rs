//! The unit of the write-ahead log.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::DataPoint;

/// One shard's share of one ingest request: one entry of the shard's Raft log, applied by the
/// shard's state machine. `received_ms` is the ingesting node's arrival stamp, carried so that
/// apply() reads no clock. The points are shared, so cloning a batch (the log store keeps
/// recent entries for the state machine and replication to read back) copies no point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardBatch {
    pub shard: u32,
    pub received_ms: i64,
    pub points: Arc<Vec<DataPoint>>,
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
    /// forwards those bytes to the shard's leader, which keeps what it received); then the
    /// encoding of the Raft log entry that carries it, built from those bytes by the leader's
    /// log store (or received by a follower): replication to every follower and each log
    /// reuse it instead of encoding the points again. Not encoded; shared by clones.
    #[serde(skip)]
    pub encoded: EncodedEntry,
}

/// See [`ShardBatch::encoded`]. Not part of a batch's value: two batches compare equal
/// whatever their caches hold.
#[derive(Clone, Debug, Default)]
pub struct EncodedEntry(Arc<Mutex<Option<Kept>>>);

#[derive(Clone, Debug)]
enum Kept {
    /// The batch's encoding ([`crate::codec::encode`] of the batch).
    Batch(Arc<[u8]>),
    /// The encoding of the log entry carrying the batch.
    Entry(Arc<[u8]>),
}

impl PartialEq for EncodedEntry {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl crate::codec::EntryBytes for ShardBatch {
    fn decode_payload(bytes: &[u8]) -> Result<Self, crate::codec::CodecError> {
        crate::codec::decode_shard_batch(bytes)
    }

    fn entry_bytes(&self, log_id_prefix: &[u8]) -> Option<Arc<[u8]>> {
        match &*self.encoded.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Kept::Entry(b)) if b.starts_with(log_id_prefix) => Some(b.clone()),
            _ => None,
        }
    }

    fn keep_entry_bytes(&self, bytes: Arc<[u8]>) {
        *self.encoded.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept::Entry(bytes));
    }

    fn payload_bytes(&self) -> Option<Arc<[u8]>> {
        match &*self.encoded.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Kept::Batch(b)) => Some(b.clone()),
            _ => None,
        }
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
        *self.encoded.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept::Batch(bytes));
    }

    /// The batch's encoding: kept, or encoded now (and kept).
    pub fn batch_bytes(&self) -> Result<Arc<[u8]>, crate::codec::CodecError> {
        use crate::codec::EntryBytes;
        if let Some(b) = self.payload_bytes() {
            return Ok(b);
        }
        let b: Arc<[u8]> = crate::codec::encode(self)?.into();
        self.keep_batch_bytes(b.clone());
        Ok(b)
    }
    /// The series hash of point `i`: from the cache, else computed.
    pub fn series_hash(&self, i: usize) -> u64 {
        match self.hashes.0.get(i) {
            Some(&h) => h,
            None => {
                let p = &self.points[i];
                crate::point::series_hash(&p.metric, &p.dimensions)
            }
        }
    }
}
