//! The unit of the write-ahead log.

use std::sync::Arc;

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
