//! Pulseboard's wire types and formats, shared by the server, clients and the cluster.
//!
//! - `point`: [`DataPoint`], dimension rules, limits, series identity and shard placement.
//! - `json`: the JSON ingest body (`POST /api/v1/ingest`).
//! - `line`: the InfluxDB line protocol (`POST /api/v1/write`).
//! - `batch`: [`ShardBatch`], one shard's share of a request, and [`ShardEntry`], the unit of
//!   a shard's log: the batches proposed together.
//! - `codec`: the one binary encoding (bincode 2, behind this module only).
//! - `cluster`: node-to-node frames (handshake, requests, responses) carried over QUIC.
//! - `time`: timestamps, durations and relative times (`now-15m`).
//!
//! Nothing here knows tokio, sockets or files: the crate is pure, so every parser can be
//! tested and fuzzed in isolation.

pub mod batch;
pub mod cluster;
pub mod codec;
pub mod ingest;
pub mod json;
pub mod line;
pub mod point;
pub mod prom;
pub mod time;

pub use batch::{ShardBatch, ShardEntry};
pub use point::{DataPoint, Dimensions, Limits, Name, PointError};
