//! Pulseboard's replicated command log.
//!
//! [`SharedLog`] is the node-wide write-ahead log shared by all of the node's Raft groups
//! (shards and metadata): one stream of segment files, one writer thread, one fsync for every
//! record written since the last (group commit across groups, the way TiKV's raft-engine
//! serves many Raft groups). [`raft::LogStore`] is openraft's log store over one group of it.
//!
//! Architecture invariant: this crate knows nothing of metrics. Payloads are opaque bytes.

pub mod log;
pub mod raft;
pub mod transport;

pub use log::{
    Done, FsyncMode, GroupState, LogConfig, LogError, LogStats, Op, RecoveryReport, SharedLog,
    Truncation,
};
