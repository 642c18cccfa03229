//! The storage engine of a node: shard actors, their Raft groups, the shared write-ahead log
//! under every group, admission, and the routing of series to shards.
//!
//! Every shard is a Raft group (`shard::group`): `write` proposes each shard's batch to its
//! group and answers once every touched group has committed and applied it. A single node is
//! a cluster of one on the same path. Callers (HTTP, load tests) see only `write`, `query`,
//! `metrics`, `dimensions` and `stats`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::raft::{LogStore, Network, Router};
use cluster::{FsyncMode, LogConfig, SharedLog};
use dashmap::DashMap;
use openraft::Raft;
use protocol::cluster::META_GROUP;
use protocol::{DataPoint, PointError, ShardBatch};
use ractor::Actor;
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ingest::Admission;
use crate::membership::Membership;
use crate::meta::group::{MetaGroup, MetaMachine};
use crate::meta::MetaStore;
pub use crate::replication::ShardSet;
use crate::replication::{unwrap_call, Answer, Ask, RaftGroups};
use crate::shard::group::{ShardMachine, ShardRaft};
use crate::shard::{
    snapshot, Layout, Partial, Shard, ShardArgs, ShardMsg, ShardQuery, ShardRef, ShardState,
    ShardStats,
};

/// Timing of the shard groups: heartbeats every 150 ms; a leader's lease (openraft 0.9:
/// `election_timeout_max`) is 0.5 s, after which voters grant votes to another candidate.
/// openraft's election timer is off: elections are called by the failure detector
/// (`RaftGroups::spawn_failure_detector`), which replaces a dead leader in 0.5–0.7 s.
/// openraft 0.9 also uses the heartbeat interval as the timeout of every append-entries RPC,
/// so a replication message is kept small (16 entries, a few hundred KB of points) to fit in
/// it on a loaded machine; a larger one would time out and be resent forever.
fn raft_config() -> Result<Arc<openraft::Config>> {
    raft_config_with("pulseboard-shards", openraft::SnapshotPolicy::Never)
}

/// The metadata group's timing is the shards'; it snapshots itself (a copy of the SQLite
/// store) every 1 000 entries.
fn meta_raft_config() -> Result<Arc<openraft::Config>> {
    raft_config_with(
        "pulseboard-meta",
        openraft::SnapshotPolicy::LogsSinceLast(1000),
    )
}

fn raft_config_with(
    name: &str,
    snapshot_policy: openraft::SnapshotPolicy,
) -> Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: name.into(),
        heartbeat_interval: 150,
        election_timeout_min: 300,
        election_timeout_max: 500,
        enable_elect: false,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 4 << 20,
        max_payload_entries: 16,
        // Shards snapshot on the engine's own schedule (`snapshot_interval`).
        snapshot_policy,
        // A snapshot purges the log it covers but the last 1 000 entries (a follower a
        // moment behind still catches up from the log); `snapshot_loop` purges the rest a
        // round later.
        max_in_snapshot_log_to_keep: 1000,
        purge_batch_size: 256,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("raft config: {e}")))
}

/// A background task (the failure detector, the rebalancer), stopped with the engine (or
/// when opening it fails).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Engine {
    shards: Vec<ShardRef>,
    groups: Arc<RaftGroups>,
    router: Arc<Router>,
    snapshots: tokio::task::JoinHandle<()>,
    /// Calls elections when a leader stops answering (`RaftGroups::spawn_failure_detector`).
    detector: Task,
    /// Moves replicas where the shard map places them (`RaftGroups::spawn_rebalancer`).
    rebalancer: Task,
    log: Arc<SharedLog>,
    admission: Admission,
    layout: Layout,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    max_future_ms: i64,
    query_timeout: Duration,
    /// Last arrival stamp handed out; see [`Engine::arrival_stamp`].
    last_arrival: AtomicI64,
    /// Idempotency keys of recent requests (SPEC §3), rebuilt at start from the shards.
    keys: Arc<DashMap<String, KeyState>>,
}

/// Where a request with an idempotency key stands.
enum KeyState {
    /// Being written; later requests with the key wait for it.
    InFlight(Arc<Notify>),
    /// Durable: later requests with the key get the same answer.
    Done { accepted: usize, at_ms: i64 },
}

/// Idempotency keys kept in memory at most; past it the oldest half is forgotten.
const MAX_KEYS: usize = 1_000_000;
const MAX_KEY_BYTES: usize = 256;

/// Settles a key when the write ends, however it ends: `Done` once the batch is in the log
/// (it will be applied even if the client went away), forgotten if it never got there.
struct KeyGuard {
    keys: Arc<DashMap<String, KeyState>>,
    key: String,
    notify: Arc<Notify>,
    accepted: Option<usize>,
    now_ms: i64,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        match self.accepted {
            Some(accepted) => {
                self.keys.insert(
                    std::mem::take(&mut self.key),
                    KeyState::Done {
                        accepted,
                        at_ms: self.now_ms,
                    },
                );
            }
            None => {
                self.keys.remove(&self.key);
            }
        }
        self.notify.notify_waiters();
    }
}

/// Persisted once, at creation: a node refuses to start with a different shard count,
/// which would move every series to another shard.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct CreatedLayout {
    shards: u32,
    layout: Layout,
}

impl Engine {
    /// Opens the data directory: loads each shard's snapshot, starts the shard actors and
    /// their Raft groups (which re-apply the committed log tail), and waits until every group
    /// has a leader and has applied what was committed.
    pub async fn open(config: &Config, node: &Membership, meta: Arc<MetaStore>) -> Result<Self> {
        let dir = &config.data_dir;
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("shards");
        for d in [&wal_dir, &snap_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::Storage(format!("create {}: {e}", d.display())))?;
        }
        let layout = Layout {
            raw_retention_ms: config.storage.raw_retention.as_millis() as i64,
            ..Layout::default()
        };
        let shard_count = check_layout(&snap_dir, config.storage.shards, &layout)?;

        let mut states = Vec::with_capacity(shard_count as usize);
        for shard in 0..shard_count {
            let state = snapshot::read(&snap_dir, shard)
                .map_err(|e| Error::Storage(e.to_string()))?
                .unwrap_or_else(|| ShardState::new(shard, layout.clone()));
            states.push(state);
        }

        let log_config = LogConfig {
            dir: wal_dir,
            segment_bytes: config.storage.wal_segment_bytes,
            fsync: if config.storage.fsync {
                FsyncMode::Always
            } else {
                FsyncMode::Never
            },
            simulated_fsync_delay: (!config.storage.simulated_fsync_delay.is_zero())
                .then_some(config.storage.simulated_fsync_delay),
            queue_capacity: config.storage.wal_queue,
            max_batch_bytes: 8 << 20,
        };
        let (log, report) =
            SharedLog::open(log_config).map_err(|e| Error::Storage(e.to_string()))?;
        if let Some(t) = &report.truncated {
            warn!(
                path = %t.path.display(),
                offset = t.offset,
                dropped_bytes = t.dropped_bytes,
                reason = %t.reason,
                "write-ahead log had a torn or corrupt tail; truncated at the last good record"
            );
        }
        info!(
            segments = report.segments,
            records = report.records,
            "write-ahead log recovered"
        );
        let log = Arc::new(log);

        let mut shards = Vec::with_capacity(states.len());
        for state in states {
            let args = ShardArgs {
                state,
                snapshot_dir: snap_dir.clone(),
                tick: Duration::from_secs(1),
            };
            let (actor, _handle) = Actor::spawn(None, Shard, args)
                .await
                .map_err(|e| Error::Internal(format!("spawn shard actor: {e}")))?;
            shards.push(actor);
        }

        let raft_config = raft_config()?;
        let node_id = node.identity.node_id;
        let me = node.member();
        let mut groups = Vec::with_capacity(shards.len());
        for (shard, actor) in shards.iter().enumerate() {
            let shard = shard as u32;
            let store = LogStore::new(log.clone(), shard);
            let machine =
                ShardMachine::new(shard, actor.clone(), snap_dir.clone(), store.applied_mark())
                    .await
                    .map_err(Error::Storage)?;
            let raft = Raft::new(
                node_id,
                raft_config.clone(),
                Network::new(node.transport.clone(), shard),
                store,
                machine,
            )
            .await
            .map_err(|e| Error::Storage(format!("shard {shard}: start its Raft group: {e}")))?;
            node.router.insert(shard, Arc::new(raft.clone()));
            groups.push(raft);
        }
        let meta_store = LogStore::new(log.clone(), META_GROUP);
        let meta_machine = MetaMachine::new(meta, meta_store.applied_mark())?;
        let meta_raft = Raft::new(
            node_id,
            meta_raft_config()?,
            Network::new(node.transport.clone(), META_GROUP),
            meta_store,
            meta_machine,
        )
        .await
        .map_err(|e| Error::Storage(format!("metadata group: start its Raft: {e}")))?;
        node.router.insert(META_GROUP, Arc::new(meta_raft.clone()));
        let founding = config.join.is_none() && !config.await_join;
        let mut fresh = !found(&meta_raft, META_GROUP, node_id, &me, founding).await?;
        for (shard, raft) in groups.iter().enumerate() {
            fresh &= !found(raft, shard as u32, node_id, &me, founding).await?;
        }
        let rafts = groups;
        let meta = Arc::new(MetaGroup::new(meta_raft, node_id, node.transport.clone()));
        let groups = Arc::new(RaftGroups::new(
            rafts.clone(),
            shards.clone(),
            meta,
            node_id,
            node.transport.clone(),
            config.cluster.replication_factor,
            config.cluster.balance_leaders,
        ));
        node.attach(groups.clone());
        // Before waiting for leaders: after a restart this node may hold the longest log of a
        // group, and only it can then win the election.
        let detector = Task(groups.spawn_failure_detector());
        match config.join {
            Some(peer) if fresh => {
                info!(%peer, "joining the cluster");
                groups.join_via(peer, &me).await?;
            }
            None if fresh && config.await_join => {
                // The HTTP API starts once the node is a member (its users are the cluster's).
                info!(
                    quic = %me.quic,
                    "waiting to be added: `pulseboard cluster add {}` against a member",
                    me.quic
                );
                let peer = node.await_invite().await?;
                info!(%peer, "invited; joining the cluster");
                groups.join_via(peer, &me).await?;
            }
            _ => groups.wait_for_leaders(Duration::from_secs(30)).await?,
        }
        for (shard, raft) in rafts.iter().enumerate() {
            // The leader re-applies what was committed before it serves; followers apply as
            // their leader tells them what is committed.
            if raft.metrics().borrow().current_leader != Some(node_id) {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(30), raft.ensure_linearizable()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    info!(shard, cause = %e, "leadership moved while starting")
                }
                Err(_) => warn!(shard, "applying the committed log took over 30 s"),
            }
        }

        let admission = Admission::new(config.ingest.cardinality_limit);
        for actor in &shards {
            let hashes = unwrap_call(
                actor
                    .call(ShardMsg::SeriesHashes, Some(Duration::from_secs(60)))
                    .await,
            )?;
            admission.register_existing(hashes.iter().map(|(m, h)| (m.as_str(), *h)));
        }
        // Keys answered by this process. After a restart a retried key is proposed again: the
        // shards that applied their part skip it and the others apply theirs. (Rebuilding
        // "done" from the shards would answer a batch that failed half-way as if whole, and
        // the missing parts would never be written.)
        let keys: Arc<DashMap<String, KeyState>> = Arc::new(DashMap::new());

        let rebalancer = Task(groups.spawn_rebalancer());
        let snapshots = tokio::spawn(snapshot_loop(
            rafts,
            groups.meta().raft().clone(),
            config.storage.snapshot_interval,
        ));
        Ok(Self {
            shards,
            groups,
            router: node.router.clone(),
            snapshots,
            detector,
            rebalancer,
            log,
            admission,
            layout,
            inflight: Arc::new(Semaphore::new(config.ingest.max_inflight_points)),
            max_inflight: config.ingest.max_inflight_points,
            max_future_ms: config.storage_max_future_ms(),
            query_timeout: Duration::from_secs(30),
            last_arrival: AtomicI64::new(0),
            keys,
        })
    }

    /// The batch's arrival stamp: the wall clock in ms, but strictly increasing across the
    /// node's requests, so that two requests in the same millisecond still have an order
    /// (`last` on an event-time tie is the later arrival). It may run ahead of the clock by
    /// a few ms under heavy load; it is an order, not a time anyone reads.
    fn arrival_stamp(&self, now_ms: i64) -> i64 {
        let mut prev = self.last_arrival.load(Ordering::Relaxed);
        loop {
            let next = now_ms.max(prev + 1);
            match self.last_arrival.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// The metadata group (the metadata service proposes through it).
    pub fn meta_group(&self) -> &Arc<MetaGroup> {
        self.groups.meta()
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Makes a validated batch durable and applied; all of it or none of it.
    ///
    /// # Returns
    /// The number of points accepted, once every point is in the log (fsynced, unless the
    /// node runs with `fsync = false`) and applied by its shard.
    pub async fn write(&self, points: Vec<DataPoint>, now_ms: i64) -> Result<usize> {
        self.write_batch(points, now_ms, None, &mut None).await
    }

    /// [`Engine::write`] with the client's idempotency key: a request whose key was already
    /// written is not written again and gets the first answer; one still in flight is
    /// waited for.
    pub async fn write_idempotent(
        &self,
        points: Vec<DataPoint>,
        now_ms: i64,
        key: Option<&str>,
    ) -> Result<usize> {
        let Some(key) = key else {
            return self.write(points, now_ms).await;
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::BadRequest(format!(
                "idempotency key: 1 to {MAX_KEY_BYTES} bytes"
            )));
        }
        let notify = loop {
            let wait = {
                match self.keys.entry(key.to_owned()) {
                    dashmap::Entry::Occupied(e) => match e.get() {
                        KeyState::Done { accepted, .. } => return Ok(*accepted),
                        KeyState::InFlight(n) => n.clone(),
                    },
                    dashmap::Entry::Vacant(v) => {
                        let n = Arc::new(Notify::new());
                        v.insert(KeyState::InFlight(n.clone()));
                        break n;
                    }
                }
            };
            // Wait for the writer to settle the key. A notification sent between releasing the
            // map's lock and registering here would be missed, so re-check every 50 ms.
            let _ = tokio::time::timeout(Duration::from_millis(50), wait.notified()).await;
        };
        self.forget_old_keys(now_ms);
        let mut guard = Some(KeyGuard {
            keys: self.keys.clone(),
            key: key.to_owned(),
            notify,
            accepted: None,
            now_ms,
        });
        self.write_batch(points, now_ms, Some(key), &mut guard)
            .await
    }

    fn forget_old_keys(&self, now_ms: i64) {
        if self.keys.len() < MAX_KEYS {
            return;
        }
        let horizon = now_ms - crate::shard::state::BATCH_ID_RETENTION_MS / 2;
        self.keys
            .retain(|_, s| !matches!(s, KeyState::Done { at_ms, .. } if *at_ms < horizon));
    }

    async fn write_batch(
        &self,
        points: Vec<DataPoint>,
        now_ms: i64,
        batch_id: Option<&str>,
        key: &mut Option<KeyGuard>,
    ) -> Result<usize> {
        let n = points.len();
        if n == 0 {
            return Ok(0);
        }
        let oldest = now_ms - self.layout.raw_retention_ms;
        let newest = now_ms + self.max_future_ms;
        for (index, p) in points.iter().enumerate() {
            if p.timestamp_ms < oldest {
                return Err(Error::Point(PointError {
                    index,
                    field: "timestamp".into(),
                    reason: format!(
                        "{} is older than the raw-point retention (oldest accepted: {})",
                        protocol::time::format_rfc3339_ms(p.timestamp_ms),
                        protocol::time::format_rfc3339_ms(oldest)
                    ),
                }));
            }
            if p.timestamp_ms > newest {
                return Err(Error::Point(PointError {
                    index,
                    field: "timestamp".into(),
                    reason: format!(
                        "{} is too far in the future (latest accepted: {})",
                        protocol::time::format_rfc3339_ms(p.timestamp_ms),
                        protocol::time::format_rfc3339_ms(newest)
                    ),
                }));
            }
        }
        let permits = u32::try_from(n).map_err(|_| Error::TooLarge {
            limit: u32::MAX as usize,
        })?;
        let _permit = self
            .inflight
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| Error::Overloaded {
                inflight: self.max_inflight,
                retry_after_s: 1,
            })?;

        let shard_count = self.shard_count();
        let hashes: Vec<u64> = points
            .iter()
            .map(|p| protocol::point::series_hash(&p.metric, &p.dimensions))
            .collect();
        self.admission.admit(&points, &hashes)?;

        let mut per_shard: Vec<(Vec<DataPoint>, Vec<u64>)> =
            vec![(Vec::new(), Vec::new()); shard_count as usize];
        for (p, h) in points.into_iter().zip(hashes) {
            let part = &mut per_shard[protocol::point::shard_for(h, shard_count) as usize];
            part.0.push(p);
            part.1.push(h);
        }
        let arrival = self.arrival_stamp(now_ms);
        let proposals = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (points, _))| !points.is_empty())
            .map(|(shard, (points, hashes))| {
                let batch = ShardBatch {
                    shard: shard as u32,
                    received_ms: arrival,
                    points: points.into(),
                    batch_id: batch_id.map(str::to_owned),
                    hashes: protocol::batch::SeriesHashes(hashes.into()),
                    encoded: Default::default(),
                };
                // Encoded here, while its points are still in this core's cache (and on the
                // request's task, not the group's): the log entry and a forward to another
                // node are built from these bytes.
                let encoded = batch.batch_bytes();
                async move {
                    encoded.map_err(|e| Error::Internal(e.to_string()))?;
                    self.groups.propose(batch).await
                }
            });
        let mut failed = None;
        for result in futures_util::future::join_all(proposals).await {
            if let Err(e) = result {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            // Some shards may have committed their part: a retry with the same key applies
            // only the missing parts (shards skip keys they have applied).
            return Err(e);
        }
        if let Some(k) = key.as_mut() {
            k.accepted = Some(n);
        }
        Ok(n)
    }

    /// Scatter `q` to every shard (here or at nodes hosting it) and merge the partial
    /// aggregates.
    pub async fn query(&self, q: ShardQuery) -> Result<Partial> {
        match self.groups.ask(Ask::Query(q)).await? {
            Answer::Partial(p) => Ok(p),
            other => Err(Error::Internal(format!("a query answered {other:?}"))),
        }
    }

    /// A handle on the shards for live subscriptions.
    pub fn shard_set(&self) -> ShardSet {
        ShardSet::new(&self.groups)
    }

    /// Metric names with their series counts.
    pub async fn metrics(&self) -> Result<HashMap<String, u64>> {
        match self.groups.ask(Ask::Metrics).await? {
            Answer::Metrics(m) => Ok(m),
            other => Err(Error::Internal(format!(
                "a metrics read answered {other:?}"
            ))),
        }
    }

    /// For `metric`: dimension key → value → series count.
    pub async fn dimensions(&self, metric: &str) -> Result<HashMap<String, HashMap<String, u64>>> {
        match self.groups.ask(Ask::Dimensions(metric.to_owned())).await? {
            Answer::Dimensions(d) => Ok(d),
            other => Err(Error::Internal(format!(
                "a dimensions read answered {other:?}"
            ))),
        }
    }

    pub async fn stats(&self) -> Result<ShardStats> {
        let calls = self
            .shards
            .iter()
            .map(|s| s.call(ShardMsg::Stats, Some(self.query_timeout)));
        let mut total = ShardStats::default();
        for answer in futures_util::future::join_all(calls).await {
            let s = unwrap_call(answer)?;
            total.series += s.series;
            total.raw_points += s.raw_points;
            total.raw_bytes += s.raw_bytes;
            total.rollup_cells += s.rollup_cells;
            total.rollup_bytes += s.rollup_bytes;
            total.applied_index += s.applied_index;
            total.asleep += s.asleep;
        }
        Ok(total)
    }

    /// Raft heartbeats and votes sent batched, and the frames that carried them.
    pub fn raft_batched(&self) -> (u64, u64) {
        self.groups.batched()
    }

    /// Shard leadership hand-overs from this node: (done, failed).
    pub fn leader_handovers(&self) -> (u64, u64) {
        self.groups.handovers()
    }

    /// Entries this node wrote to the shards it leads, and the batches they carried.
    pub fn entries_written(&self) -> (u64, u64) {
        self.groups.entries_written()
    }

    pub fn log_stats(&self) -> cluster::LogStats {
        self.log.stats()
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Points admitted but not yet applied.
    pub fn inflight_points(&self) -> usize {
        self.max_inflight - self.inflight.available_permits()
    }

    /// Stop the Raft groups, snapshot every shard (so the next start re-applies little), stop
    /// the actors and the log.
    pub async fn shutdown(self) {
        self.snapshots.abort();
        self.detector.0.abort();
        self.rebalancer.0.abort();
        snapshot_through_raft(self.groups.rafts(), Duration::from_secs(30)).await;
        snapshot_through_raft(
            std::slice::from_ref(self.groups.meta().raft()),
            Duration::from_secs(10),
        )
        .await;
        for (shard, raft) in self.groups.rafts().iter().enumerate() {
            self.router.remove(shard as u32);
            if let Err(e) = raft.shutdown().await {
                warn!(shard, cause = %e, "raft group shutdown");
            }
        }
        self.router.remove(META_GROUP);
        if let Err(e) = self.groups.meta().raft().shutdown().await {
            warn!(cause = %e, "metadata group shutdown");
        }
        drop(self.groups);
        for shard in &self.shards {
            match shard
                .call(ShardMsg::Snapshot, Some(Duration::from_secs(60)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(_))) => {}
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    warn!(cause = %e, "snapshot at shutdown failed; the log still has the data")
                }
                _ => warn!("shard did not answer the shutdown snapshot"),
            }
        }
        for shard in &self.shards {
            shard.stop(None);
        }
        match Arc::try_unwrap(self.log) {
            Ok(log) => {
                if let Err(e) = log.shutdown() {
                    warn!(cause = %e, "write-ahead log shutdown");
                }
            }
            Err(_) => warn!("write-ahead log still referenced at shutdown; dropped instead"),
        }
    }
}

/// Whether the group had state; if not and this node is `founding` the cluster (a new data
/// directory, not joining), this node founds the group as its only member.
async fn found<C>(
    raft: &Raft<C>,
    group: u32,
    node_id: u64,
    me: &cluster::raft::Member,
    founding: bool,
) -> Result<bool>
where
    C: openraft::RaftTypeConfig<NodeId = u64, Node = cluster::raft::Member>,
{
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Storage(format!("group {group}: {e}")))?;
    if !initialized && founding {
        let members = std::collections::BTreeMap::from([(node_id, me.clone())]);
        raft.initialize(members)
            .await
            .map_err(|e| Error::Storage(format!("group {group}: initialize: {e}")))?;
    }
    Ok(initialized)
}

/// Snapshots every group with something new applied through openraft (which then purges
/// the log the snapshot covers, and the log frees the segments nothing needs) and waits up
/// to `within` for them: a stopped node keeps its points as snapshots, not as the log's
/// encoded batches. The shard actors' own snapshot at shutdown follows regardless.
async fn snapshot_through_raft<C>(groups: &[Raft<C>], within: Duration)
where
    C: openraft::RaftTypeConfig<NodeId = u64>,
{
    let snapshot = |raft: &Raft<C>| raft.metrics().borrow().snapshot.map(|s| s.index);
    // Each group's target: what it had applied when asked (a follower may go on applying
    // what its leader sends; that is not waited for).
    let mut waiting = Vec::new();
    for raft in groups {
        let (due, applied) = {
            let m = raft.metrics().borrow().clone();
            (snapshot_due(&m), m.last_applied.map(|l| l.index))
        };
        if due {
            match raft.trigger().snapshot().await {
                Ok(()) => waiting.push((raft, applied)),
                Err(e) => warn!(cause = %e, "could not start a snapshot at shutdown"),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + within;
    while waiting.iter().any(|(r, target)| snapshot(r) < *target)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stopping node has no follower to keep the log for: release it all.
    for raft in groups {
        if let Some(upto) = snapshot(raft) {
            let _ = raft.trigger().purge_log(upto).await;
        }
    }
    let purged = |raft: &Raft<C>| raft.metrics().borrow().purged.map(|l| l.index);
    while groups.iter().any(|r| purged(r) < snapshot(r)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Snapshots and the release of the log, every `every` (`storage.snapshot_interval`): each
/// group — every shard and the metadata group — with something applied since its last
/// snapshot takes one, and each group's log is purged up to the snapshot it had one round
/// earlier. So a follower less than a round behind still catches up from the log, and no
/// group, however quiet, holds on to old segments: the shared log frees a segment only when
/// every group is done with it, and before this a shard without writes (or the metadata
/// group, which purged only every 1 000 entries) kept every segment on disk for good.
async fn snapshot_loop(
    shards: Vec<Raft<ShardRaft>>,
    meta: Raft<crate::meta::group::MetaRaft>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    let mut earlier: Vec<Option<u64>> = vec![None; shards.len()];
    let mut meta_earlier = None;
    loop {
        tick.tick().await;
        for (raft, earlier) in shards.iter().zip(&mut earlier) {
            *earlier = snapshot_round(raft, *earlier).await;
        }
        meta_earlier = snapshot_round(&meta, meta_earlier).await;
    }
}

/// Whether the group applied something its last snapshot does not hold.
fn snapshot_due<N: openraft::Node>(m: &openraft::RaftMetrics<u64, N>) -> bool {
    m.last_applied.map(|l| l.index) > m.snapshot.as_ref().map(|s| s.index)
}

/// One group's round (see [`snapshot_loop`]): purges up to `earlier`, snapshots if due, and
/// returns the snapshot it has now (the next round's `earlier`).
async fn snapshot_round<C>(raft: &Raft<C>, earlier: Option<u64>) -> Option<u64>
where
    C: openraft::RaftTypeConfig<NodeId = u64>,
{
    let m = raft.metrics().borrow().clone();
    if let Some(upto) = earlier {
        if m.purged.map(|l| l.index) < Some(upto) {
            if let Err(e) = raft.trigger().purge_log(upto).await {
                warn!(cause = %e, "could not release the log");
            }
        }
    }
    if snapshot_due(&m) {
        if let Err(e) = raft.trigger().snapshot().await {
            warn!(cause = %e, "could not start a snapshot");
        }
    }
    m.snapshot.map(|s| s.index)
}

impl Config {
    fn storage_max_future_ms(&self) -> i64 {
        self.ingest.max_future.as_millis() as i64
    }
}

fn check_layout(snap_dir: &std::path::Path, shards: u32, layout: &Layout) -> Result<u32> {
    let path: PathBuf = snap_dir.join("layout.json");
    let wanted = CreatedLayout {
        shards,
        layout: layout.clone(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: CreatedLayout = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
            if found.shards != shards {
                return Err(Error::Storage(format!(
                    "{} was created with {} shards; this node is configured for {shards}. The shard count is fixed at creation",
                    path.display(),
                    found.shards
                )));
            }
            Ok(found.shards)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text =
                serde_json::to_vec_pretty(&wanted).map_err(|e| Error::Internal(e.to_string()))?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, text)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
            Ok(shards)
        }
        Err(e) => Err(Error::Storage(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::DataRequest;

    async fn open(dir: &std::path::Path) -> (Engine, Membership) {
        let config = Config {
            data_dir: dir.to_path_buf(),
            quic: "127.0.0.1:0".parse().expect("addr"),
            ..Config::default()
        };
        let node = Membership::start(&config, "127.0.0.1:0".parse().expect("addr")).expect("node");
        let store = Arc::new(MetaStore::open(&dir.join("meta.sqlite")).expect("metadata"));
        (
            Engine::open(&config, &node, store).await.expect("open"),
            node,
        )
    }

    async fn count(engine: &Engine, now: i64) -> f64 {
        let req = DataRequest::parse(
            "orders",
            Some("start=now-1h&aggregation=count&granularity=1h"),
            now,
        )
        .expect("request");
        let plan = req.plan(engine.layout(), now).expect("plan");
        let partial = engine.query(plan).await.expect("query");
        req.render(partial)
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .sum()
    }

    /// A request that failed half-way (some shards committed their part) and is retried
    /// after a restart must get its missing parts written, not an answer from the parts.
    #[tokio::test]
    async fn a_key_half_written_before_a_restart_is_completed_by_the_retry() {
        let dir = tempfile::tempdir().expect("dir");
        let now = crate::now_ms();
        let points: Vec<DataPoint> = (0..64)
            .map(|i| DataPoint {
                metric: "orders".into(),
                timestamp_ms: now - i,
                value: 1.0,
                dimensions: vec![("host".into(), format!("h{i}").into())],
            })
            .collect();
        let (engine, node) = open(dir.path()).await;
        // One shard's part commits, as if the node died before proposing the others.
        let first = protocol::point::shard_for(
            protocol::point::series_hash("orders", &points[0].dimensions),
            engine.shard_count(),
        );
        let part: Vec<DataPoint> = points
            .iter()
            .filter(|p| {
                protocol::point::shard_for(
                    protocol::point::series_hash(&p.metric, &p.dimensions),
                    engine.shard_count(),
                ) == first
            })
            .cloned()
            .collect();
        let partial = part.len() as f64;
        assert!(partial < 64.0);
        engine
            .groups
            .propose(ShardBatch {
                shard: first,
                received_ms: now,
                points: part.into(),
                batch_id: Some("k1".into()),
                hashes: Default::default(),
                encoded: Default::default(),
            })
            .await
            .expect("part");
        engine.shutdown().await;
        node.shutdown().await;

        let (engine, node) = open(dir.path()).await;
        assert_eq!(count(&engine, now).await, partial);
        let accepted = engine
            .write_idempotent(points.clone(), now, Some("k1"))
            .await
            .expect("retry");
        assert_eq!(accepted, 64);
        assert_eq!(
            count(&engine, now).await,
            64.0,
            "the missing parts are written, the committed one once"
        );
        // And a second retry changes nothing.
        engine
            .write_idempotent(points, now, Some("k1"))
            .await
            .expect("again");
        assert_eq!(count(&engine, now).await, 64.0);
        engine.shutdown().await;
        node.shutdown().await;
    }
}
