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
}
