//! Pulseboard's replicated command log.
//!
//! Today: [`SharedLog`], the node-wide write-ahead log shared by all of the node's shards
//! ("groups"): one stream of segment files, one writer thread, one fsync for every record
//! written since the last (group commit across shards, the way TiKV's raft-engine serves many
//! Raft groups). Each group has its own contiguous indices starting at 1 — the shape of a Raft
//! log per shard, which is what this crate grows into (openraft groups, QUIC transport).
//!
//! Architecture invariant: this crate knows nothing of metrics. Payloads are opaque bytes.

pub mod log;

pub use log::{
    Apply, FsyncMode, LogConfig, LogError, LogStats, RecoveryReport, SharedLog, Truncation,
};
