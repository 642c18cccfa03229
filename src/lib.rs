//! Pulseboard: real-time analytics dashboards in one binary.
//!
//! # Layout
//! - `config`: embedded defaults, TOML file, flags and `PULSEBOARD_*` variables.
//! - `server`: starts and stops a node's components in order.
//! - `http`: the axum routes; translates HTTP to calls into the modules below, nothing more.
//! - `ingest`: admission of parsed points (cardinality limit) before they reach the log.
//!   Parsing itself (JSON, line protocol) lives in the `protocol` crate.
//! - `engine`: the node's storage engine and the routing seam: series → shard → actor, the
//!   shared write-ahead log (from the `cluster` crate), scatter-gather of queries.
//! - `shard`: one actor per virtual shard; its deterministic state machine, rings, rollups,
//!   quantile sketches, snapshots.
//! - `query`: query parameters → shard plans; merged cells → answers (JSON, CSV).
//! - `live`: subscription actors fed by the shards' deltas, fanned out to WebSockets.
//! - `meta`: users, sessions, API keys, dashboards in SQLite, changed only by applying
//!   commands.
//! - `membership`: this node as a cluster member: node id, cluster secret, the QUIC endpoint
//!   and what it serves to other nodes (Raft RPCs through `cluster::raft::Router`).
//! - `replication`: the node's shard groups as a whole: proposing at the leader (forwarding
//!   over QUIC), serving forwarded batches, joining nodes, the cluster view.
//! - `telemetry`: the node's own figures for `/metrics`.
//! - `load`: the `pulseboard load` generator. `demo`: the demo's streams and dashboard.
//!
//! The flow of a point: socket → `http::ingest` (parse, authenticate) → `Engine::write`
//! (time bounds, admission, split by shard) → `cluster::SharedLog` (group commit, fsync) →
//! `shard::ShardMsg::Apply` in log order → ring + rollups → `200 {"accepted": n}`.

pub mod alert;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod http;
pub mod ingest;
pub mod live;
pub mod load;
pub mod membership;
pub mod meta;
pub mod query;
pub mod quic_ingest;
pub mod remote;
pub mod replication;
pub mod server;
pub mod shard;
pub mod telemetry;

pub use config::Config;
pub use error::{Error, Result};

/// Wall-clock milliseconds since the epoch. The one place the engine reads the clock for
/// event-time decisions (what is too old, what "now" means in a query).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
