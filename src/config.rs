//! Node configuration: embedded defaults, overridden by a TOML file, overridden by flags and
//! `PULSEBOARD_*` environment variables (clap reads both; see `main.rs`).
//!
//! Durations are strings such as `"90s"` or `"2h"` (parsed by `protocol::time`). Unknown keys
//! are errors that name the key: a typo in a config file must not silently fall back to a
//! default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub data_dir: PathBuf,
    pub join: Option<SocketAddr>,
    /// Start without founding a cluster and wait for a member to add this node
    /// (`POST /api/v1/cluster/nodes`, `pulseboard cluster add`); ignored once the node is a
    /// member (its data directory says so) or when `join` is set.
    pub await_join: bool,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub live: LiveConfig,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The secret every node of the cluster shares (at least 16 bytes). Without it, the first
    /// start generates one into `<data_dir>/cluster.secret`; nodes joining need the same.
    pub secret: Option<String>,
    /// Voting replicas per shard (nodes beyond it replicate as learners).
    pub replication_factor: usize,
    /// The QUIC address other nodes reach this one at, when it differs from the listen
    /// address (NAT, containers, a relay in front of the node). Default: the listen address.
    pub advertise: Option<SocketAddr>,
    /// Hand each shard's leadership to the node the shard map names, so leaders spread over
    /// the nodes (and come back to a node that restarts). Off, leaders stay where elections
    /// put them: on the first node of a cluster grown from one, which suits a cluster whose
    /// writes all enter through that node (it forwards nothing).
    pub balance_leaders: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            secret: None,
            replication_factor: 3,
            advertise: None,
            balance_leaders: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Virtual shards (fixed at cluster creation).
    pub shards: u32,
    /// Raw points kept per series (also how far back points are accepted, and the span
    /// answered at sub-minute granularity).
    #[serde(deserialize_with = "duration")]
    pub raw_retention: Duration,
    /// `true` (default): fsync before every acknowledgement. `false` only for benchmarks.
    pub fsync: bool,
    /// Extra delay after each fsync, to see how the design behaves on slow disks.
    #[serde(deserialize_with = "duration")]
    pub simulated_fsync_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub snapshot_interval: Duration,
    pub wal_segment_bytes: u64,
    pub wal_queue: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_points_per_request: usize,
    /// Series per metric before new series are refused.
    pub cardinality_limit: u64,
    /// Points accepted but not yet applied, node-wide; past it ingest answers 429.
    pub max_inflight_points: usize,
    /// How far ahead of the node's clock an event time may be.
    #[serde(deserialize_with = "duration")]
    pub max_future: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Messages queued per WebSocket before the client counts as lagging and is resumed
    /// from a fresh snapshot.
    pub client_queue: usize,
    /// How long a subscription nobody listens to is kept (for clients that reconnect).
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            client_queue: 256,
            linger: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            quic: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("./pulseboard-data"),
            join: None,
            await_join: false,
            storage: StorageConfig::default(),
            ingest: IngestConfig::default(),
            auth: AuthConfig::default(),
            live: LiveConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            shards: 16,
            raw_retention: Duration::from_secs(6 * 3600),
            fsync: true,
            simulated_fsync_delay: Duration::ZERO,
            snapshot_interval: Duration::from_secs(60),
            wal_segment_bytes: 64 << 20,
            wal_queue: 4096,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            max_points_per_request: 100_000,
            cardinality_limit: 100_000,
            max_inflight_points: 2_000_000,
            max_future: Duration::from_secs(3600),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl Config {
    /// Defaults overridden by the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        if !(1..=1024).contains(&s.shards) {
            return Err(ConfigError::Invalid(format!(
                "storage.shards is {}, it must be between 1 and 1024",
                s.shards
            )));
        }
        if let Some(secret) = &self.cluster.secret {
            if secret.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "cluster.secret is {} bytes, it must be at least 16",
                    secret.len()
                )));
            }
        }
        if !(1..=7).contains(&self.cluster.replication_factor) {
            return Err(ConfigError::Invalid(format!(
                "cluster.replication_factor is {}, it must be between 1 and 7",
                self.cluster.replication_factor
            )));
        }
        if s.wal_queue < 64 {
            return Err(ConfigError::Invalid(
                "storage.wal_queue must be at least 64".into(),
            ));
        }
        let i = &self.ingest;
        if i.max_points_per_request == 0 || i.max_inflight_points < i.max_points_per_request {
            return Err(ConfigError::Invalid(
                "ingest.max_inflight_points must be at least ingest.max_points_per_request (> 0)"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    if s == "0" || s == "0s" || s == "0ms" {
        return Ok(Duration::ZERO);
    }
    protocol::time::parse_duration_ms(&s)
        .map(|ms| Duration::from_millis(ms as u64))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_typos_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pb.toml");
        std::fs::write(
            &p,
            "http = \"127.0.0.1:9999\"\n[storage]\nshards = 4\nraw_retention = \"30m\"\n",
        )
        .expect("write");
        let c = Config::from_file(&p).expect("parse");
        assert_eq!(c.http.port(), 9999);
        assert_eq!(c.storage.shards, 4);
        assert_eq!(c.storage.raw_retention, Duration::from_secs(1800));
        assert!(c.storage.fsync);
        std::fs::write(&p, "[storage]\nshardz = 4\n").expect("write");
        let err = Config::from_file(&p).expect_err("typo").to_string();
        assert!(err.contains("shardz"), "{err}");
        std::fs::write(&p, "[storage]\nraw_retention = \"soon\"\n").expect("write");
        assert!(Config::from_file(&p).is_err());
        let mut c = Config::default();
        c.storage.shards = 0;
        assert!(c.validate().is_err());
    }
}
