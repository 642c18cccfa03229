//! The node's Raft groups as a whole (every shard's, and the metadata group): proposing a
//! batch wherever its shard's leader is, serving batches other nodes forward, the failure
//! detector that calls elections, adding a joining node to the groups, and the cluster as the
//! groups see it (`GET /api/v1/cluster`).
//!
//! A joining node asks any member, which adds it to the groups it leads and passes the others
//! on to their leaders.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cluster::raft::{GroupRpc, Member};
use cluster::transport::{Transport, TransportError};
use futures_util::StreamExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use protocol::cluster::{
    Channel, MemberChange, MembershipAnswer, MembershipRequest, Request, Response, META_GROUP,
};
use protocol::ShardBatch;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::membership::{ClusterView, NodeView, ShardView};
use crate::meta::group::MetaGroup;
use crate::shard::group::ShardRaft;
use crate::shard::{ShardMsg, ShardRef};

mod fragments;
mod proposals;
mod watches;
pub(crate) use fragments::unwrap_call;
pub use fragments::{Answer, Ask};
pub use watches::{LostSink, ShardSet};

/// Shard groups a node reconciles at once (each adds learners and changes membership).
const RECONCILE_AT_ONCE: usize = 8;
/// How long moving one shard's replicas may take (a new replica copies the shard).
const RECONCILE_WITHIN: Duration = Duration::from_secs(60);

/// How long a write waits for its shard to have a reachable leader (an election after a
/// leader dies takes 0.5–1 s) before it fails with 503.
const LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct RaftGroups {
    rafts: Vec<Raft<ShardRaft>>,
    /// The shard actors (what query fragments and watches from other nodes read).
    shards: Vec<ShardRef>,
    query_timeout: Duration,
    meta: Arc<MetaGroup>,
    /// Every group, shards and metadata, by group number: what elections, joins and the
    /// cluster view go over.
    groups: Vec<(u32, Arc<dyn GroupRpc>)>,
    node_id: u64,
    transport: Arc<Transport>,
    replication_factor: usize,
    /// Where each shard's replicas belong, for the metadata group's membership as last seen.
    placement: RwLock<Arc<Placement>>,
    /// Who leads and who replicates each group, as the failure detector's latest probes
    /// answered: how this node finds the shards it does not host.
    directory: RwLock<Arc<HashMap<u32, Seen>>>,
    /// Every node's addresses as last seen (a leaving node's stay reachable while it hands
    /// over the groups it leads).
    known: RwLock<HashMap<u64, Member>>,
    /// When each peer last answered the failure detector's probe (first asked, if never).
    heard: RwLock<HashMap<u64, Instant>>,
    /// Per shard: proposals here hold it shared; a leader handing the shard's leadership to
    /// another node holds it alone, so nothing is proposed while the other catches up and
    /// takes over ([`RaftGroups::hand_over`]).
    gates: Vec<Arc<tokio::sync::RwLock<()>>>,
    /// Per shard: the batches proposed here while this node leads it, gathered into entries.
    queues: Vec<Arc<proposals::Queue>>,
    /// Per shard: membership changes under way here; a shard being changed is not handed over.
    changing: Vec<std::sync::atomic::AtomicU32>,
    /// Whether this node hands the shards it leads to the leaders the shard map names.
    balance_leaders: bool,
    /// Leadership hand-overs from this node: done, failed.
    handovers: [std::sync::atomic::AtomicU64; 2],
}

/// The shard map: every node of the cluster (the metadata group's members) and the nodes
/// each shard belongs on (`protocol::point::placement`). Derived, never stored: every node
/// computes the same map from the same membership.
pub struct Placement {
    /// The metadata membership this was computed from.
    key: Option<openraft::LogId<u64>>,
    pub nodes: BTreeMap<u64, Member>,
    /// Per shard, the nodes its replicas belong on.
    pub targets: Vec<Vec<u64>>,
    /// Per shard, the node that should lead it (`protocol::point::leaders`): leaders spread
    /// over the nodes.
    pub leaders: Vec<Option<u64>>,
}

/// A group as the probes saw it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub leader: Option<u64>,
    pub replicas: BTreeSet<u64>,
}

type WriteError = RaftError<u64, ClientWriteError<u64, Member>>;

impl RaftGroups {
    pub fn new(
        rafts: Vec<Raft<ShardRaft>>,
        shards: Vec<ShardRef>,
        meta: Arc<MetaGroup>,
        node_id: u64,
        transport: Arc<Transport>,
        replication_factor: usize,
        balance_leaders: bool,
    ) -> Self {
        let mut groups: Vec<(u32, Arc<dyn GroupRpc>)> = rafts
            .iter()
            .enumerate()
            .map(|(shard, raft)| (shard as u32, Arc::new(raft.clone()) as Arc<dyn GroupRpc>))
            .collect();
        groups.push((META_GROUP, Arc::new(meta.raft().clone())));
        let gates: Vec<_> = rafts.iter().map(|_| Arc::default()).collect();
        let queues = rafts
            .iter()
            .zip(&gates)
            .map(|(raft, gate)| proposals::Queue::new(raft.clone(), Arc::clone(gate)))
            .collect();
        let changing = rafts.iter().map(|_| Default::default()).collect();
        Self {
            rafts,
            shards,
            query_timeout: Duration::from_secs(30),
            meta,
            groups,
            node_id,
            transport,
            replication_factor,
            placement: RwLock::new(Arc::new(Placement {
                key: None,
                nodes: BTreeMap::new(),
                targets: Vec::new(),
                leaders: Vec::new(),
            })),
            directory: RwLock::new(Arc::new(HashMap::new())),
            known: RwLock::new(HashMap::new()),
            heard: RwLock::new(HashMap::new()),
            gates,
            queues,
            changing,
            balance_leaders,
            handovers: Default::default(),
        }
    }

    /// The shard map for the metadata membership this node knows now.
    pub fn placement(&self) -> Arc<Placement> {
        let (key, nodes) = {
            let m = self.meta.raft().metrics();
            let m = m.borrow();
            let key = *m.membership_config.log_id();
            let cached = self.placement.read().unwrap_or_else(|p| p.into_inner());
            if cached.key == key && !cached.targets.is_empty() {
                return cached.clone();
            }
            let nodes: BTreeMap<u64, Member> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            (key, nodes)
        };
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let targets: Vec<Vec<u64>> = (0..self.rafts.len() as u32)
            .map(|shard| protocol::point::placement(shard, &ids, self.replication_factor))
            .collect();
        let leaders = protocol::point::leaders(&targets);
        let fresh = Arc::new(Placement {
            key,
            nodes,
            targets,
            leaders,
        });
        *self.placement.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        fresh
    }

    /// Whether this node counts itself a member of `group` (its replica's own view; a node
    /// removed from a group may not have heard).
    fn member_of(&self, group: u32) -> bool {
        self.group(group).is_ok_and(|g| {
            g.metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&self.node_id)
                .is_some()
        })
    }

    /// Whether this node takes part in `group`: a member (voter, or learner catching up) that
    /// leads it or, for shards, is one of the nodes the shard map places it on. A node the
    /// map no longer places a shard on keeps its copy until the group's leader removes it,
    /// but neither reads it nor calls elections in it.
    fn serves(&self, group: u32) -> bool {
        if !self.member_of(group) {
            return false;
        }
        group == META_GROUP
            || self
                .placement()
                .targets
                .get(group as usize)
                .is_some_and(|t| t.contains(&self.node_id))
            || self
                .group(group)
                .is_ok_and(|g| g.metrics().borrow().current_leader == Some(self.node_id))
    }

    /// Whether reads of `shard` can use this node's replica: it serves the shard and votes in
    /// its group (a learner may still be catching up).
    pub fn hosts(&self, shard: u32) -> bool {
        self.serves(shard)
            && self.raft(shard).is_ok_and(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == self.node_id)
            })
    }

    /// The group's leader and its address: from this node's replica if it serves the group,
    /// else from the directory.
    pub fn leader(&self, group: u32) -> Option<(u64, Option<Member>)> {
        // Not `member_of`: a node removed from a group may never hear of the final change
        // (its leader stops replicating to it), and its replica goes on naming the leader of
        // that moment.
        if self.serves(group) {
            return self.group(group).ok().and_then(leader_of);
        }
        let leader = self.seen(group)?.leader?;
        Some((leader, self.address(leader)))
    }

    /// Node `id`'s addresses: from the cluster's membership, or (a node that left, still
    /// handing over its shards) as last seen.
    pub fn address(&self, id: u64) -> Option<Member> {
        self.placement().nodes.get(&id).cloned().or_else(|| {
            self.known
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned()
        })
    }

    fn seen_all(&self) -> Arc<HashMap<u32, Seen>> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The group as the latest probes saw it.
    pub fn seen(&self, group: u32) -> Option<Seen> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Every group this node hosts: `(group, last log index, whether this node leads it)`
    /// (the answer to `Channel::Groups`).
    pub fn status(&self) -> Vec<(u32, u64, bool)> {
        self.groups
            .iter()
            .filter(|(id, _)| self.serves(*id))
            .map(|(id, g)| {
                let last = g.metrics().borrow().last_log_index.unwrap_or(0);
                let leads = leader_of(g.as_ref()).is_some_and(|(l, _)| l == self.node_id);
                (*id, last, leads)
            })
            .collect()
    }

    /// Leadership hand-overs from this node: (done, failed).
    pub fn handovers(&self) -> (u64, u64) {
        let [done, failed] = &self.handovers;
        (
            done.load(std::sync::atomic::Ordering::Relaxed),
            failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Entries this node wrote to the shards it leads, and the batches they carried.
    pub fn entries_written(&self) -> (u64, u64) {
        self.queues
            .iter()
            .map(|q| q.written())
            .fold((0, 0), |(e, b), (qe, qb)| (e + qe, b + qb))
    }

    /// Heartbeats and votes sent to peers batched, and the frames that carried them.
    pub fn batched(&self) -> (u64, u64) {
        self.transport.batched()
    }

    pub fn meta(&self) -> &Arc<MetaGroup> {
        &self.meta
    }

    fn group(&self, id: u32) -> Result<&dyn GroupRpc> {
        self.groups
            .iter()
            .find(|(g, _)| *g == id)
            .map(|(_, g)| g.as_ref())
            .ok_or_else(|| Error::BadRequest(format!("no group {id}")))
    }

    pub fn rafts(&self) -> &[Raft<ShardRaft>] {
        &self.rafts
    }

    fn raft(&self, shard: u32) -> Result<&Raft<ShardRaft>> {
        self.rafts
            .get(shard as usize)
            .ok_or_else(|| Error::BadRequest(format!("no shard {shard}")))
    }

    /// Commits `batch` in its shard's group, here or at the leader, and returns once the
    /// leader applied it. Waits (up to [`LEADER_WAIT`]) through an election.
    pub async fn propose(&self, batch: ShardBatch) -> Result<()> {
        let shard = batch.shard;
        let raft = self.raft(shard)?;
        let started = Instant::now();
        loop {
            let leader = match self.leader(shard) {
                Some((l, _)) if l == self.node_id => {
                    if let Some(silent) = cut_off(raft) {
                        // Nothing proposed yet: the client can go to another node at once
                        // instead of waiting for a commit that cannot come.
                        return Err(leader_cut_off(shard, silent));
                    }
                    // Cloning a batch shares its points.
                    let write = self.write(shard, batch.clone());
                    // A leader cut off from its peers cannot commit; it finds out only when
                    // the partition heals (or, cut off one way, may never hear of the leader
                    // elected meanwhile: QUIC stops sending to a peer whose acknowledgements
                    // do not come). The client hears of it once a majority has been silent
                    // for `QUORUM_SILENCE_MS` (the write may still commit if the partition
                    // heals: only the client can retry safely).
                    let written = tokio::select! {
                        written = tokio::time::timeout(LEADER_WAIT, write) => match written {
                            Ok(w) => w,
                            Err(_) => return Err(Error::Unavailable(format!(
                                "shard {shard}: not committed within {} s (this node may be cut off from its peers); retry",
                                LEADER_WAIT.as_secs()
                            ))),
                        },
                        e = self.given_up(shard, raft, self.node_id) => return Err(e),
                    };
                    match written {
                        Ok(_) => return Ok(()),
                        // Leadership moved (this node was paused or partitioned): go on with
                        // the leader it names.
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            f.leader_id.map(|l| (l, f.leader_node))
                        }
                        Err(e) => return Err(write_error(shard, e)),
                    }
                }
                other => other,
            };
            match leader {
                Some((l, Some(node))) if l != self.node_id => {
                    if let Some(silent) = self.silent(l) {
                        // Nothing sent: the client can go to another node at once.
                        return Err(unanswered(shard, l, silent));
                    }
                    let addr: SocketAddr = node.quic.parse().map_err(|e| {
                        Error::Internal(format!("leader address {}: {e}", node.quic))
                    })?;
                    // The batch keeps its encoding: a retry sends the same bytes.
                    let request = Request {
                        channel: Channel::Ingest,
                        group: shard,
                        body: batch
                            .batch_bytes()
                            .map_err(|e| Error::Internal(e.to_string()))?
                            .to_vec(),
                    };
                    // A dead leader does not answer until its connection times out; the
                    // election that replaces it is the sooner sign. And a leader this node
                    // cannot reach (this node cut off from it, one way or both) may go on
                    // leading: its silence to this node's probes is the sign then. Waiting
                    // for any of them (the leader may have committed the write before: only
                    // the client can retry safely):
                    let answer = tokio::select! {
                        answer = self.transport.call(addr, &request) => answer,
                        () = self.deposed(shard, l) => {
                            return Err(Error::Unavailable(format!(
                                "shard {shard}: its leader changed while the write was in flight; retry"
                            )));
                        }
                        e = self.given_up(shard, raft, l) => return Err(e),
                    };
                    match answer {
                        Ok(_) => return Ok(()),
                        // Not delivered, or refused by a node that is no longer the leader:
                        // nothing was written, so trying again cannot apply it twice.
                        Err(TransportError::Connect { .. })
                        | Err(TransportError::Remote { retry: true, .. })
                            if started.elapsed() <= LEADER_WAIT => {}
                        // Anything else may have been applied: only the client can retry
                        // safely (with its idempotency key).
                        Err(e) => return Err(Error::Unavailable(format!("shard {shard}: {e}"))),
                    }
                }
                _ if started.elapsed() > LEADER_WAIT => {
                    return Err(Error::Unavailable(format!(
                        "shard {shard}: no leader within {} s; retry",
                        LEADER_WAIT.as_secs()
                    )))
                }
                // No leader known, and no other node answers: no election this node could
                // hear of is coming.
                _ => {
                    if let Some(silent) = self.isolated() {
                        return Err(Error::Unavailable(format!(
                            "shard {shard}: no leader known, and no other node has answered this node for {} ms (cut off?); retry on another node",
                            silent.as_millis()
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long peer `id` has not answered this node's probes, if longer than
    /// [`PEER_SILENCE`].
    fn silent(&self, id: u64) -> Option<Duration> {
        let heard = self.heard.read().unwrap_or_else(|p| p.into_inner());
        heard
            .get(&id)
            .map(Instant::elapsed)
            .filter(|&d| d > PEER_SILENCE)
    }

    /// How long the peer heard from last has not answered this node's probes, if every peer
    /// has been silent for longer than [`PEER_SILENCE`] (and there is one).
    fn isolated(&self) -> Option<Duration> {
        let heard = self.heard.read().unwrap_or_else(|p| p.into_inner());
        heard
            .values()
            .map(Instant::elapsed)
            .min()
            .filter(|&d| d > PEER_SILENCE)
    }

    /// Resolves, with the error to answer, once a write to `shard` in flight at `leader`
    /// should be given up, looked at every [`PING_EVERY`] — not on every change of the
    /// group's metrics (a leader's change with every entry and acknowledgement), nor after
    /// each round of the failure detector's probes (a round waits out an unanswered probe's
    /// 0.5 s, so writes to a peer just cut off were held that much longer; the README gives
    /// the full chaos runs of both forms):
    /// - `leader` is this node, and it has not heard from a majority for
    ///   [`QUORUM_SILENCE_MS`], or has not led the shard for [`DEPOSED_GRACE`] (cut off one
    ///   way, it hears of the new leader; openraft answers the write only once the new leader
    ///   overwrites its entry, and that may never come);
    /// - `leader` is another node, silent to this node's probes for [`PEER_SILENCE`].
    ///
    /// The write may still commit (the partition heals, or the new leader had the entry):
    /// only the client can retry safely.
    async fn given_up(&self, shard: u32, raft: &dyn GroupRpc, leader: u64) -> Error {
        let mut deposed: Option<Instant> = None;
        loop {
            tokio::time::sleep(PING_EVERY).await;
            if leader != self.node_id {
                if let Some(silent) = self.silent(leader) {
                    return unanswered(shard, leader, silent);
                }
                continue;
            }
            if let Some(silent) = cut_off(raft) {
                return leader_cut_off(shard, silent);
            }
            if leader_of(raft).map(|(l, _)| l) == Some(self.node_id) {
                deposed = None;
            } else if deposed.get_or_insert_with(Instant::now).elapsed() >= DEPOSED_GRACE {
                return Error::Unavailable(format!(
                    "shard {shard}: this node stopped leading it while the write was in flight; retry"
                ));
            }
        }
    }

    /// Resolves once `leader` no longer leads `group` as this node sees it (its replica's
    /// metrics, or for a group it does not serve the probes' directory).
    async fn deposed(&self, group: u32, leader: u64) {
        if !self.serves(group) {
            while self.seen(group).and_then(|s| s.leader) == Some(leader) {
                tokio::time::sleep(PING_EVERY).await;
            }
            return;
        }
        let Ok(g) = self.group(group) else { return };
        leader_changes(g, leader).await
    }

    /// A batch another node forwarded: commit it here if this node leads its shard.
    pub async fn serve_ingest(&self, shard: u32, body: &[u8]) -> Response {
        let body: Arc<[u8]> = body.into();
        let batch = match protocol::codec::decode_shard_batch(&body) {
            Ok(b) => b,
            Err(e) => {
                return Response::Err {
                    message: format!("malformed forwarded batch: {e}"),
                    retry: false,
                }
            }
        };
        if batch.shard != shard {
            return Response::Err {
                message: format!("batch of shard {} sent to shard {shard}", batch.shard),
                retry: false,
            };
        }
        // The bytes decoded are the batch's encoding: its log entry is built from them.
        batch.keep_batch_bytes(body);
        if self.raft(shard).is_err() {
            return Response::Err {
                message: format!("no shard {shard}"),
                retry: false,
            };
        }
        match self.write(shard, batch).await {
            Ok(_) => Response::Ok(Vec::new()),
            Err(e) => Response::Err {
                message: write_error(shard, e).to_string(),
                retry: true,
            },
        }
    }

    /// Carries out a membership change. A fresh request (no `groups`) changes the metadata
    /// group first — a joining node becomes a member of it (a voter while it has fewer than
    /// the replication factor), a leaving one stops being one — and then every shard group,
    /// whose replicas move to where the new shard map places them
    /// ([`RaftGroups::reconcile_shard`]). Each group is changed by its leader: this node
    /// carries out the groups it leads and passes the others on.
    pub async fn change_membership(&self, req: MembershipRequest) -> Result<MembershipAnswer> {
        if req.groups.is_none() {
            let mut done = self
                .change_groups(MembershipRequest {
                    groups: Some(vec![META_GROUP]),
                    ..req.clone()
                })
                .await?
                .groups;
            let shards = (0..self.rafts.len() as u32).collect();
            done.extend(
                self.change_groups(MembershipRequest {
                    groups: Some(shards),
                    ..req.clone()
                })
                .await?
                .groups,
            );
            info!(node = req.node_id, change = ?req.change, groups = done.len(), "membership changed");
            return Ok(MembershipAnswer { groups: done });
        }
        self.change_groups(req).await
    }

    async fn change_groups(&self, req: MembershipRequest) -> Result<MembershipAnswer> {
        let hops = req.hops;
        let wanted = req.groups.clone().unwrap_or_default();
        let mut here = Vec::new();
        let mut elsewhere: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for id in wanted {
            self.group(id)?;
            // A group may be between leaders (an election, a hand-over after a node joined):
            // wait for one, as a write does.
            let started = Instant::now();
            let leader = loop {
                match self.leader(id) {
                    Some((l, leader)) if l == self.node_id || leader.is_some() => {
                        break Some((l, leader))
                    }
                    _ if started.elapsed() > LEADER_WAIT => break None,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            match leader {
                Some((l, _)) if l == self.node_id => here.push(id),
                Some((_, Some(leader))) if hops < 2 => {
                    elsewhere.entry(leader.quic).or_default().push(id)
                }
                _ => {
                    return Err(Error::Unavailable(format!(
                        "group {id} has no reachable leader; retry"
                    )))
                }
            }
        }
        let local = futures_util::stream::iter(here.into_iter().map(|id| {
            let req = &req;
            async move {
                let changed = if id == META_GROUP {
                    let group = self.group(id)?;
                    match &req.change {
                        MemberChange::Join { quic, http } => {
                            let voters = group
                                .metrics()
                                .borrow()
                                .membership_config
                                .membership()
                                .voter_ids()
                                .collect::<BTreeSet<u64>>();
                            let member = Member {
                                quic: quic.clone(),
                                http: http.clone(),
                            };
                            let voter = voters.contains(&req.node_id)
                                || voters.len() < self.replication_factor;
                            group.add_member(req.node_id, member, voter).await
                        }
                        MemberChange::Leave => group.remove_member(req.node_id).await,
                    }
                } else {
                    self.reconcile_shard(id, Some((req.node_id, &req.change)))
                        .await
                        .map(|_| ())
                };
                match changed {
                    Ok(()) => Ok(vec![id]),
                    // Its leadership moved meanwhile (a hand-over, an election): the new
                    // leader carries the change out.
                    Err(e) => match self.leader(id) {
                        Some((l, Some(leader))) if l != self.node_id && hops < 2 => {
                            info!(group = id, leader = l, cause = %e, "passing a membership change on to the group's new leader");
                            self.pass_on(&leader.quic, vec![id], req).await
                        }
                        _ => Err(Error::Unavailable(format!("group {id}: {e}"))),
                    },
                }
            }
        }))
        .buffer_unordered(RECONCILE_AT_ONCE)
        .collect::<Vec<Result<Vec<u32>>>>();
        let remote = elsewhere.into_iter().map(|(leader, groups)| {
            let req = &req;
            async move { self.pass_on(&leader, groups, req).await }
        });
        let (local, remote) =
            futures_util::future::join(local, futures_util::future::join_all(remote)).await;
        let mut done = Vec::new();
        for r in local.into_iter().chain(remote) {
            done.extend(r?);
        }
        done.sort_unstable();
        Ok(MembershipAnswer { groups: done })
    }

    /// Has the node at `leader` carry out `req` for `groups` (which it leads); returns the
    /// groups done.
    async fn pass_on(
        &self,
        leader: &str,
        groups: Vec<u32>,
        req: &MembershipRequest,
    ) -> Result<Vec<u32>> {
        let addr: SocketAddr = leader
            .parse()
            .map_err(|e| Error::Internal(format!("leader address {leader}: {e}")))?;
        let body = protocol::codec::encode(&MembershipRequest {
            groups: Some(groups),
            hops: req.hops + 1,
            ..req.clone()
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        let answer = self
            .transport
            .call_within(
                addr,
                &Request {
                    channel: Channel::Membership,
                    group: 0,
                    body,
                },
                RECONCILE_WITHIN * 4,
            )
            .await
            .map_err(|e| Error::Unavailable(format!("passing the change on: {e}")))?;
        protocol::codec::decode::<MembershipAnswer>(&answer)
            .map(|a| a.groups)
            .map_err(|e| Error::Internal(format!("membership answer: {e}")))
    }

    /// At the leader of `shard`: moves its replicas to the nodes the shard map places it
    /// on, for the cluster's nodes as this node knows them, adjusted by `change` (a joining
    /// node counts although this node may not have seen it join the metadata group yet; a
    /// leaving one no longer counts). Returns whether anything changed.
    pub async fn reconcile_shard(
        &self,
        shard: u32,
        change: Option<(u64, &MemberChange)>,
    ) -> std::result::Result<bool, String> {
        let group = self.group(shard).map_err(|e| e.to_string())?;
        // Not while the shard's leadership is being handed over (waits for it to end), and no
        // hand-over while the change runs.
        let _changing = match (
            self.changing.get(shard as usize),
            self.gates.get(shard as usize),
        ) {
            (Some(count), Some(gate)) => {
                let _gate = gate.read().await;
                Some(Changing::new(count))
            }
            _ => None,
        };
        if leader_of(group).map(|(l, _)| l) != Some(self.node_id) {
            return Err("this node no longer leads the group".into());
        }
        let mut nodes = self.placement().nodes.clone();
        match change {
            Some((id, MemberChange::Join { quic, http })) => {
                nodes.insert(
                    id,
                    Member {
                        quic: quic.clone(),
                        http: http.clone(),
                    },
                );
            }
            Some((id, MemberChange::Leave)) => {
                nodes.remove(&id);
            }
            None => {}
        }
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let target: Vec<(u64, Member)> =
            protocol::point::placement(shard, &ids, self.replication_factor)
                .into_iter()
                .filter_map(|id| nodes.get(&id).map(|m| (id, m.clone())))
                .collect();
        match tokio::time::timeout(RECONCILE_WITHIN, group.reconcile(target)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "moving the replicas took over {} s (a new replica not catching up?)",
                RECONCILE_WITHIN.as_secs()
            )),
        }
    }

    /// Removes node `id` from every group (admin: `DELETE /api/v1/cluster/nodes/{id}`).
    /// The metadata group drops it first, then each shard's leader moves the shard's
    /// replicas off it. Refused for an unknown node, and for the cluster's only node.
    pub async fn remove_node(&self, id: u64) -> Result<MembershipAnswer> {
        let nodes = self.placement().nodes.clone();
        if !nodes.contains_key(&id) {
            return Err(Error::NotFound {
                what: format!("node {id}"),
            });
        }
        if nodes.len() == 1 {
            return Err(Error::Meta(crate::meta::MetaError::Conflict(format!(
                "node {id} is the cluster's only node; add another node first"
            ))));
        }
        self.change_membership(MembershipRequest {
            node_id: id,
            change: MemberChange::Leave,
            groups: None,
            hops: 0,
        })
        .await
    }

    /// Asks `peer` to add this node to every shard group, retrying while the cluster elects
    /// leaders, then waits until every group has this node as a member and knows its leader.
    pub async fn join_via(&self, peer: SocketAddr, me: &Member) -> Result<()> {
        let req = MembershipRequest {
            node_id: self.node_id,
            change: MemberChange::Join {
                quic: me.quic.clone(),
                http: me.http.clone(),
            },
            groups: None,
            hops: 0,
        };
        let body = protocol::codec::encode(&req).map_err(|e| Error::Internal(e.to_string()))?;
        let started = Instant::now();
        loop {
            let call = self
                .transport
                .call_within(
                    peer,
                    &Request {
                        channel: Channel::Membership,
                        group: 0,
                        body: body.clone(),
                    },
                    Duration::from_secs(120),
                )
                .await;
            match call {
                Ok(_) => break,
                Err(e) if !e.retryable() || started.elapsed() > Duration::from_secs(120) => {
                    return Err(Error::Unavailable(format!("joining via {peer}: {e}")))
                }
                Err(e) => {
                    warn!(%peer, cause = %e, "join not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        self.wait_for_leaders(Duration::from_secs(60)).await
    }

    /// Waits until every group counts this node as a member and knows a leader.
    pub async fn wait_for_leaders(&self, within: Duration) -> Result<()> {
        let me = self.node_id;
        let deadline = tokio::time::Instant::now() + within;
        for (id, group) in &self.groups {
            // Groups the shard map places elsewhere are read through their leaders.
            if *id != META_GROUP && !self.serves(*id) {
                continue;
            }
            let mut metrics = group.metrics();
            let ready = |m: &openraft::RaftMetrics<u64, Member>| {
                m.current_leader.is_some()
                    && m.membership_config.membership().get_node(&me).is_some()
            };
            loop {
                if ready(&metrics.borrow()) {
                    break;
                }
                match tokio::time::timeout_at(deadline, metrics.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(Error::Unavailable(format!("group {id}: stopped")));
                    }
                    Err(_) => {
                        return Err(Error::Unavailable(format!(
                            "group {id}: no leader with this node as a member within {} s",
                            within.as_secs()
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// The cluster as this node's groups see it; peers are pinged to tell who is alive.
    pub async fn view(&self) -> ClusterView {
        let mut nodes: BTreeMap<u64, (Member, bool)> = BTreeMap::new();
        let mut shards = Vec::with_capacity(self.rafts.len());
        let mut meta_leader = 0;
        for (id, member) in &self.placement().nodes {
            nodes.insert(*id, (member.clone(), false));
        }
        for (group, g) in &self.groups {
            let m = g.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            if self.serves(*group) {
                for id in membership.voter_ids() {
                    if let Some(e) = nodes.get_mut(&id) {
                        e.1 = true;
                    }
                }
            } else {
                for id in self.seen(*group).unwrap_or_default().replicas {
                    if let Some(e) = nodes.get_mut(&id) {
                        e.1 = true;
                    }
                }
            }
            if *group == META_GROUP {
                meta_leader = m.current_leader.unwrap_or(0);
                continue;
            }
            if !self.serves(*group) {
                let seen = self.seen(*group).unwrap_or_default();
                shards.push(ShardView {
                    shard: *group,
                    leader: seen.leader.unwrap_or(0),
                    replicas: seen.replicas.into_iter().collect(),
                });
                continue;
            }
            shards.push(ShardView {
                shard: *group,
                leader: m.current_leader.unwrap_or(0),
                replicas: membership.nodes().map(|(id, _)| *id).collect(),
            });
        }
        let pings = nodes.iter().map(|(id, (member, _))| {
            let transport = self.transport.clone();
            let me = *id == self.node_id;
            let addr = member.quic.parse::<SocketAddr>().ok();
            async move {
                if me {
                    return true;
                }
                let Some(addr) = addr else { return false };
                matches!(
                    tokio::time::timeout(Duration::from_millis(500), transport.ping(addr)).await,
                    Ok(Ok(_))
                )
            }
        });
        let alive = futures_util::future::join_all(pings).await;
        ClusterView {
            nodes: nodes
                .into_iter()
                .zip(alive)
                .map(|((id, (member, voter)), alive)| NodeView {
                    id,
                    http_addr: member.http,
                    quic_addr: member.quic,
                    role: if voter { "voter" } else { "learner" },
                    alive,
                })
                .collect(),
            meta_leader,
            shards,
        }
    }
}

/// How often a node looks for groups it leads whose replicas are not where the shard map
/// places them.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// How long the metadata membership must have stood still before the background rebalancer
/// moves replicas. A join or a removal reconciles every group at once; the background pass
/// catches what they missed (a group whose leader was down then, an interrupted change).
const SETTLED_FOR: Duration = Duration::from_secs(3);
/// How long a shard copy this node does not serve must have applied nothing before it is put
/// to sleep (see `RaftGroups::hibernate_idle`); doubled each time it woke (up to 64 ×).
const HIBERNATE_AFTER: Duration = Duration::from_secs(10);

/// What `RaftGroups::hibernate_idle` remembers of a shard copy this node does not serve.
struct Idle {
    /// The applied index last seen, and since when it has not moved.
    applied: u64,
    since: Instant,
    asleep: bool,
    /// Times it woke up (applied again) after being put to sleep.
    wakes: u32,
}

impl RaftGroups {
    /// Moves replicas of the groups this node leads to where the shard map places them,
    /// whenever they differ (see [`SETTLED_FOR`]).
    pub fn spawn_rebalancer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut key = None;
            let mut since = Instant::now();
            let mut idle = HashMap::new();
            let mut led = HashMap::new();
            let mut tick = tokio::time::interval(REBALANCE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.hibernate_idle(&mut idle).await;
                let p = me.placement();
                if p.key != key {
                    key = p.key;
                    since = Instant::now();
                    continue;
                }
                if since.elapsed() < SETTLED_FOR || p.nodes.is_empty() {
                    continue;
                }
                let due: Vec<u32> = (0..me.rafts.len() as u32)
                    .filter(|&s| me.misplaced(s, &p))
                    .collect();
                if due.is_empty() {
                    // Replicas are where they belong: now leaders.
                    me.balance_leaders(&p, &mut led).await;
                    continue;
                }
                info!(
                    groups = due.len(),
                    "moving replicas to where the shard map places them"
                );
                let results = futures_util::stream::iter(due.into_iter().map(|shard| {
                    let me = &me;
                    async move { (shard, me.reconcile_shard(shard, None).await) }
                }))
                .buffer_unordered(RECONCILE_AT_ONCE)
                .collect::<Vec<_>>()
                .await;
                for (shard, result) in results {
                    if let Err(e) = result {
                        warn!(shard, cause = %e, "moving the shard's replicas failed; will retry");
                    }
                }
            }
        })
    }

    /// Puts to sleep (`ShardMsg::Hibernate`: state on disk only) each shard copy this node
    /// does not serve — the shard map places it elsewhere and this node does not lead it —
    /// once it has applied nothing for [`HIBERNATE_AFTER`]: a copy a rebalance moved away,
    /// or one a removal left behind, would otherwise stay in memory until retention drained
    /// it. A copy still in its group that applies an entry wakes up (reads its snapshot
    /// back), so sleeping never loses or hides a point.
    async fn hibernate_idle(&self, idle: &mut HashMap<u32, Idle>) {
        let p = self.placement();
        if p.nodes.is_empty() {
            return;
        }
        for shard in 0..self.rafts.len() as u32 {
            let placed = p.targets.get(shard as usize).is_some_and(|t| !t.is_empty());
            if !placed || self.serves(shard) {
                idle.remove(&shard);
                continue;
            }
            let Ok(raft) = self.raft(shard) else { continue };
            let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            let entry = idle.entry(shard).or_insert(Idle {
                applied,
                since: Instant::now(),
                asleep: false,
                wakes: 0,
            });
            if entry.applied != applied {
                // It applied something (and woke, if it was asleep): idle again from now.
                entry.wakes += entry.asleep as u32;
                entry.applied = applied;
                entry.since = Instant::now();
                entry.asleep = false;
                continue;
            }
            // A copy that keeps waking (its group still writes to it now and then) waits
            // longer each time: sleeping costs a snapshot, waking reads it back.
            // Asleep, it is asked again every so often: a no-op, unless a read woke it.
            let wait = HIBERNATE_AFTER * 2u32.pow(entry.wakes.min(6));
            if entry.since.elapsed() < wait {
                continue;
            }
            let Some(actor) = self.shards.get(shard as usize) else {
                continue;
            };
            match actor
                .call(ShardMsg::Hibernate, Some(Duration::from_secs(60)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(Ok(()))) => {
                    entry.asleep = true;
                    entry.since = Instant::now();
                }
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    warn!(shard, cause = %e, "could not put a shard copy to sleep")
                }
                _ => warn!(shard, "the shard did not answer the request to sleep"),
            }
        }
    }

    /// Whether this node leads `shard` and its members differ from the shard map's.
    fn misplaced(&self, shard: u32, p: &Placement) -> bool {
        let Some(target) = p.targets.get(shard as usize).filter(|t| !t.is_empty()) else {
            return false;
        };
        let Ok(raft) = self.raft(shard) else {
            return false;
        };
        let m = raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(self.node_id) {
            return false;
        }
        let membership = m.membership_config.membership();
        let target: BTreeSet<u64> = target.iter().copied().collect();
        membership.voter_ids().collect::<BTreeSet<u64>>() != target
            || membership
                .nodes()
                .map(|(n, _)| *n)
                .collect::<BTreeSet<u64>>()
                != target
    }
}

/// How long a node must have led a shard before it hands the lead over: a leader grants a
/// vote only once its own lease (0.5 s from its election) has run out, and a leader that
/// just took over (a failover) should not be moved again at once.
const LEAD_BEFORE_HANDING_OVER: Duration = Duration::from_secs(3);
/// Shards a node hands over at once (each pauses its shard's writes for a few milliseconds).
const HAND_OVER_AT_ONCE: usize = 4;
/// How far behind the leader's log a replica may be and still be asked to take the lead:
/// the leader waits, with the shard's writes paused, for it to catch up the rest.
const HAND_OVER_LAG: u64 = 64;
/// The longest a hand-over pauses a shard's writes.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(1);
/// How long after a failed hand-over the shard is tried again (doubling with each failure).
const HAND_OVER_RETRY: Duration = Duration::from_secs(10);

/// A shard this node leads, as the balancer tracks it.
struct Led {
    /// The term it has led in since `since`.
    term: u64,
    since: Instant,
    /// Failed hand-overs in this term, and when the next may be tried.
    failures: u32,
    not_before: Instant,
}

impl Led {
    /// Led in `term` from `now`, no hand-over tried yet.
    fn new(term: u64, now: Instant) -> Self {
        Self {
            term,
            since: now,
            failures: 0,
            not_before: now,
        }
    }
}

/// Leader balancing. openraft 0.9 has no leadership transfer; a hand-over is an election the
/// leader arranges so that it wins: the leader stops proposing in the shard (its gate), waits
/// until the chosen replica holds its whole log, and asks it to call an election. Its vote
/// request carries a log as long as the leader's and a higher term; the leader's own lease
/// has long run out, so the leader grants the vote and steps down — with the candidate's
/// own, a majority of three. (The third replica refuses while its lease from the leader's
/// heartbeats runs; it is not needed.) Writes that waited at the gate find a follower and go
/// on to the new leader. If anything goes wrong the group is left with an election, as after
/// a failure, and no write is lost either way: Raft's rules decide, the hand-over only picks
/// the moment.
impl RaftGroups {
    /// Whether a membership change of `shard` is under way here.
    fn being_changed(&self, shard: u32) -> bool {
        self.changing
            .get(shard as usize)
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Acquire) > 0)
    }

    /// Writes `batch` in its shard's group, which this node leads, with the batches proposed
    /// beside it (see `proposals`). Each entry is written under the shard's gate: a hand-over
    /// of the shard's leadership waits for the entry in flight, and entries wait for it.
    async fn write(&self, shard: u32, batch: ShardBatch) -> std::result::Result<(), WriteError> {
        match self.queues.get(shard as usize) {
            Some(queue) => queue.write(batch).await,
            None => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
        }
    }

    /// Hands over, a few at a time, the shards this node leads and the shard map says another
    /// replica should lead (`Placement::leaders`), once that replica is nearly caught up.
    /// Only groups of two or three voters: with more, the leader's and the candidate's votes
    /// are not a majority.
    async fn balance_leaders(&self, p: &Placement, led: &mut HashMap<u32, Led>) {
        if !self.balance_leaders {
            return;
        }
        let mut due = Vec::new();
        for (shard, raft) in self.rafts.iter().enumerate() {
            let shard = shard as u32;
            let Some(want) = p.leaders.get(shard as usize).copied().flatten() else {
                continue;
            };
            let m = raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(self.node_id) {
                led.remove(&shard);
                continue;
            }
            let now = Instant::now();
            let entry = led
                .entry(shard)
                .or_insert_with(|| Led::new(m.current_term, now));
            if entry.term != m.current_term {
                *entry = Led::new(m.current_term, now);
            }
            // Only to a node whose probe answered just now (a dead one would keep the
            // shard's writes paused for the hand-over's whole second, every second).
            let alive = self.seen(shard).is_some_and(|s| s.replicas.contains(&want));
            if want == self.node_id
                || entry.since.elapsed() < LEAD_BEFORE_HANDING_OVER
                || now < entry.not_before
                || !alive
                || self.being_changed(shard)
            {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters = membership.voter_ids().count();
            if !(2..=3).contains(&voters) || !membership.voter_ids().any(|v| v == want) {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&want).copied().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|i| i + HAND_OVER_LAG >= last) {
                due.push((shard, want));
            }
        }
        if due.is_empty() {
            return;
        }
        info!(
            shards = due.len(),
            "handing shard leadership over to where the shard map puts it"
        );
        let failed = futures_util::stream::iter(due.into_iter().map(|(shard, to)| async move {
            let result = self.hand_over(shard, to).await;
            self.handovers[result.is_err() as usize]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            result.err().map(|e| (shard, to, e))
        }))
        .buffer_unordered(HAND_OVER_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        // Each failure paused the shard's writes for up to a second: the next try waits
        // 10 s, then twice as long each time (up to 160 s).
        for (shard, to, e) in failed.into_iter().flatten() {
            if let Some(entry) = led.get_mut(&shard) {
                let wait = HAND_OVER_RETRY * 2u32.pow(entry.failures.min(4));
                entry.failures += 1;
                entry.not_before = Instant::now() + wait;
                info!(shard, to, cause = %e, retry_in_s = wait.as_secs(), "leadership not handed over");
            }
        }
    }

    /// Hands `shard`'s leadership to `to` (see the impl's doc). Returns once this node no
    /// longer leads it, or with why not.
    async fn hand_over(&self, shard: u32, to: u64) -> Result<()> {
        let raft = self.raft(shard)?;
        let gate = self
            .gates
            .get(shard as usize)
            .ok_or_else(|| Error::BadRequest(format!("no shard {shard}")))?;
        let started = Instant::now();
        // Writes in flight finish first; new ones wait.
        let _paused = tokio::time::timeout(HAND_OVER_WITHIN, gate.write())
            .await
            .map_err(|_| Error::Unavailable("writes in flight did not finish".into()))?;
        if self.being_changed(shard) {
            return Err(Error::Unavailable("its replicas are being moved".into()));
        }
        let mut metrics = raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(self.node_id) {
                    return Err(Error::Unavailable("no longer the leader".into()));
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to).copied().flatten())
                    .map(|l| l.index);
                if matched.is_some() && matched == m.last_log_index {
                    break;
                }
            }
            let left = HAND_OVER_WITHIN.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, metrics.changed()).await.is_err() {
                return Err(Error::Unavailable(format!("node {to} did not catch up")));
            }
        }
        let addr: SocketAddr = self
            .address(to)
            .and_then(|m| m.quic.parse().ok())
            .ok_or_else(|| Error::Unavailable(format!("no address for node {to}")))?;
        let request = Request {
            channel: Channel::TakeLead,
            group: shard,
            body: Vec::new(),
        };
        let left = HAND_OVER_WITHIN.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.transport.call(addr, &request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Error::Unavailable(format!("node {to}: {e}"))),
            Err(_) => return Err(Error::Unavailable(format!("node {to} did not answer"))),
        }
        // Its vote request is on the way; the writes stay paused until it is decided.
        let left = HAND_OVER_WITHIN
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(200));
        if tokio::time::timeout(left, leader_changes(raft, self.node_id))
            .await
            .is_err()
        {
            return Err(Error::Unavailable(format!(
                "node {to} was asked to take the lead but has not yet"
            )));
        }
        info!(
            shard,
            to,
            paused_ms = started.elapsed().as_millis() as u64,
            "shard leadership handed over"
        );
        Ok(())
    }

    /// `Channel::TakeLead`: this node's replica of `shard` calls an election, if it votes in
    /// the group and does not lead it.
    pub async fn take_lead(&self, shard: u32) -> Response {
        let Ok(raft) = self.raft(shard) else {
            return Response::Err {
                message: format!("no shard {shard}"),
                retry: false,
            };
        };
        let voter = {
            let m = raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.node_id)
        };
        if !voter {
            return Response::Err {
                message: format!("node {} is not a voter of shard {shard}", self.node_id),
                retry: false,
            };
        }
        info!(shard, "asked to take the lead; calling an election");
        GroupRpc::elect(raft).await;
        Response::Ok(Vec::new())
    }
}

/// Counts a membership change of a shard while it lives (see [`RaftGroups::being_changed`]).
struct Changing<'a>(&'a std::sync::atomic::AtomicU32);

impl<'a> Changing<'a> {
    fn new(count: &'a std::sync::atomic::AtomicU32) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How long a leader may go without hearing from a majority before it sheds writes: two
/// election timeouts (by then the others have elected a new leader).
const QUORUM_SILENCE_MS: u64 = 1_000;

/// The error for a write to `shard`, which this node leads but whose majority it has not
/// heard from for `silent` ms.
fn leader_cut_off(shard: u32, silent: u64) -> Error {
    Error::Unavailable(format!(
        "shard {shard}: this node leads it but has not heard from a majority of its replicas for {silent} ms (cut off?); retry on another node"
    ))
}

/// How long a write in flight at a leader that lost its leadership waits for openraft's own
/// answer before the client is told to retry.
const DEPOSED_GRACE: Duration = Duration::from_millis(500);

/// How long a peer may leave this node's probes unanswered before this node stops forwarding
/// writes to it (and gives up on those in flight): as long as a leader waits for a majority.
/// A node whose messages to the others are lost hears the others, and so goes on taking its
/// clients' writes; without this it would hold each until its forward timed out.
const PEER_SILENCE: Duration = Duration::from_millis(QUORUM_SILENCE_MS);

/// The error for a write whose shard's leader `leader` has not answered this node for
/// `silent`.
fn unanswered(shard: u32, leader: u64, silent: Duration) -> Error {
    Error::Unavailable(format!(
        "shard {shard}: its leader, node {leader}, has not answered this node for {} ms (this node may be cut off from it); retry on another node",
        silent.as_millis()
    ))
}

/// `Some(ms)` if this node leads the group but has not heard from a majority for longer than
/// [`QUORUM_SILENCE_MS`] (it is cut off, or its peers are down).
fn cut_off(raft: &dyn GroupRpc) -> Option<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.membership_config.membership().voter_ids().count() < 2 {
        return None;
    }
    m.millis_since_quorum_ack
        .filter(|&ms| ms > QUORUM_SILENCE_MS)
}

impl RaftGroups {
    /// How long to wait before calling an election in `shard`: at least 100 ms, so the voters'
    /// leases (0.5 s from the last heartbeat they got, which may be a little after our last
    /// probe) have run out; then the remaining voters take turns 200 ms apart, longest log
    /// first (as last reported), ties in an order that rotates with the shard (so new leaders
    /// spread over the nodes). A candidate with a shorter log is refused, and openraft 0.9's
    /// voter does not take up the refused candidate's term, so two survivors calling at once
    /// can refuse each other round after round: the turns keep them apart.
    fn election_delay(
        &self,
        raft: &dyn GroupRpc,
        shard: u32,
        leader: Option<u64>,
        logs: &BTreeMap<(u64, u32), u64>,
    ) -> Duration {
        let (mut voters, mine): (Vec<u64>, u64) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| Some(*v) != leader)
                    .collect(),
                m.last_log_index.unwrap_or(0),
            )
        };
        voters.sort_unstable();
        let n = voters.len().max(1);
        let mut order: Vec<(std::cmp::Reverse<u64>, usize, u64)> = voters
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let last = if v == self.node_id {
                    mine
                } else {
                    logs.get(&(v, shard)).copied().unwrap_or(0)
                };
                (std::cmp::Reverse(last), (i + shard as usize) % n, v)
            })
            .collect();
        order.sort_unstable();
        let turn = order
            .iter()
            .position(|(_, _, v)| *v == self.node_id)
            .unwrap_or(0);
        Duration::from_millis(100 + 200 * turn as u64 + rand::random_range(0..50))
    }
}

/// The group's leader as this node knows it, and its address when it is a member. Reads the
/// metrics in place (this runs for every shard of every write).
pub fn leader_of(raft: &dyn GroupRpc) -> Option<(u64, Option<Member>)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader?;
    let node = m.membership_config.membership().get_node(&leader).cloned();
    Some((leader, node))
}

/// Resolves once this node's replica of the group sees another leader than `leader` (or
/// none): a write forwarded to `leader` stops waiting for a node that was deposed or died
/// (the election that replaces it is a sooner sign than the call's timeout).
pub async fn leader_changes(raft: &dyn GroupRpc, leader: u64) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        if metrics.borrow().current_leader != Some(leader) {
            return;
        }
    }
}

pub fn write_error(shard: u32, e: WriteError) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::Unavailable(format!(
            "shard {shard}: this node is not its leader (leader: {}); retry",
            f.leader_id
                .map_or_else(|| "being elected".to_string(), |l| l.to_string())
        )),
        RaftError::APIError(e) => Error::Internal(format!("shard {shard}: {e}")),
        RaftError::Fatal(e) => Error::Unavailable(format!("shard {shard}: {e}")),
    }
}

/// How often the failure detector looks at the groups and pings each node leading one.
const PING_EVERY: Duration = Duration::from_millis(100);
/// A leader that has answered no probe for this long is suspected dead (or cut off, or
/// paused), and a group without a leader for this long calls an election: the leader lease
/// openraft's voters hold (`election_timeout_max`), after which they grant votes.
const SUSPECT_AFTER: Duration = Duration::from_millis(500);

impl RaftGroups {
    /// The only caller of elections (openraft's own election timer is off: `enable_elect`).
    /// openraft 0.9 elects when a follower misses heartbeats, and heartbeats are
    /// append-entries RPCs with a timeout of one heartbeat interval that back off for 0.5 s
    /// after a miss; on two busy cores that made followers with stale logs call elections
    /// whose higher term deposed healthy leaders (0.9 has no pre-vote), several times over.
    /// Here a node calls an election in a group only when its leader has answered no probe
    /// (`Channel::Groups`: which groups do you lead, how long are their logs?) for
    /// [`SUSPECT_AFTER`], or answers that
    /// it no longer leads the group (it restarted), or the group has had no leader that long;
    /// the remaining voters take turns (`election_delay`), and call again at most every
    /// 0.5–1 s while the group stays leaderless. The vote rules are openraft's: a voter
    /// refuses a candidate with a shorter log or while it still grants its leader's lease.
    pub fn spawn_failure_detector(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut heard: BTreeMap<u64, Instant> = BTreeMap::new();
            let mut leaderless: BTreeMap<u32, Instant> = BTreeMap::new();
            let mut next_call: BTreeMap<u32, Instant> = BTreeMap::new();
            // Last log index of each peer's replica of each group, from its latest answer.
            let mut logs: BTreeMap<(u64, u32), u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                // Whom we believe leads what, and every peer sharing a group with us.
                let mut leaders: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
                let mut peers: BTreeMap<u64, SocketAddr> = BTreeMap::new();
                let mut suspects: Vec<(u32, Option<u64>)> = Vec::new();
                // Every node of the cluster: the directory covers groups this node does not
                // serve too.
                for (id, node) in &me.placement().nodes {
                    me.known
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*id, node.clone());
                    if *id != me.node_id {
                        if let Ok(addr) = node.quic.parse::<SocketAddr>() {
                            peers.insert(*id, addr);
                        }
                    }
                }
                // And nodes that still lead or replicate groups after leaving the cluster.
                for seen in me.seen_all().values() {
                    for id in seen.leader.iter().chain(&seen.replicas) {
                        if *id != me.node_id && !peers.contains_key(id) {
                            if let Some(addr) = me
                                .address(*id)
                                .and_then(|m| m.quic.parse::<SocketAddr>().ok())
                            {
                                peers.insert(*id, addr);
                            }
                        }
                    }
                }
                for (shard, raft) in &me.groups {
                    let (shard, raft) = (*shard, raft.as_ref());
                    // A copy the shard map no longer places here is not this node's to
                    // elect (its group's leader is about to remove it).
                    if !me.serves(shard) {
                        continue;
                    }
                    // (Never borrow the metrics twice at once: a waiting writer between the
                    // two read locks deadlocks the runtime.)
                    let (voter, voters) = {
                        let m = raft.metrics();
                        let m = m.borrow();
                        let membership = m.membership_config.membership();
                        let mut known = me.known.write().unwrap_or_else(|p| p.into_inner());
                        for (id, node) in membership.nodes() {
                            known.insert(*id, node.clone());
                            if *id != me.node_id {
                                if let Ok(addr) = node.quic.parse::<SocketAddr>() {
                                    peers.insert(*id, addr);
                                }
                            }
                        }
                        let voters = membership.voter_ids().count();
                        (membership.voter_ids().any(|v| v == me.node_id), voters)
                    };
                    let leader = leader_of(raft);
                    if !voter {
                        continue;
                    }
                    match leader {
                        Some((l, _)) if l == me.node_id => {
                            leaderless.remove(&shard);
                        }
                        Some((l, Some(_))) => {
                            leaderless.remove(&shard);
                            leaders.entry(l).or_default().push(shard);
                        }
                        _ => {
                            let since = *leaderless.entry(shard).or_insert(now);
                            // Alone in the group: nobody to wait for.
                            if voters == 1 || since.elapsed() >= SUSPECT_AFTER {
                                suspects.push((shard, None));
                            }
                        }
                    }
                }
                heard.retain(|id, _| peers.contains_key(id));
                logs.retain(|(id, _), _| peers.contains_key(id));
                let probes = peers.iter().map(|(&id, &addr)| {
                    let transport = me.transport.clone();
                    let request = Request {
                        channel: Channel::Groups,
                        group: 0,
                        body: Vec::new(),
                    };
                    async move {
                        let answer =
                            tokio::time::timeout(SUSPECT_AFTER, transport.call(addr, &request))
                                .await;
                        let status = match answer {
                            Ok(Ok(body)) => {
                                protocol::codec::decode::<Vec<(u32, u64, bool)>>(&body).ok()
                            }
                            _ => None,
                        };
                        (id, status)
                    }
                });
                let mut directory: HashMap<u32, Seen> = HashMap::new();
                for (shard, _, leads) in me.status() {
                    let seen = directory.entry(shard).or_default();
                    seen.replicas.insert(me.node_id);
                    if leads {
                        seen.leader = Some(me.node_id);
                    }
                }
                for (id, status) in futures_util::future::join_all(probes).await {
                    let last = heard.entry(id).or_insert(now);
                    let Some(status) = status else { continue };
                    *last = Instant::now();
                    let mut led = BTreeSet::new();
                    for (shard, last_log, leads) in status {
                        let seen = directory.entry(shard).or_default();
                        seen.replicas.insert(id);
                        if leads {
                            seen.leader = Some(id);
                        }
                        logs.insert((id, shard), last_log);
                        if leads {
                            led.insert(shard);
                        }
                    }
                    // Alive, but no longer leading some groups we think it leads (it restarted,
                    // or was deposed and we missed the news): those need an election now.
                    if let Some(shards) = leaders.get_mut(&id) {
                        let (gone, kept): (Vec<u32>, Vec<u32>) =
                            shards.iter().partition(|s| !led.contains(s));
                        suspects.extend(gone.into_iter().map(|s| (s, Some(id))));
                        *shards = kept;
                    }
                }
                *me.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(directory);
                me.heard
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone_from(&heard.iter().map(|(&id, &t)| (id, t)).collect());
                for (id, shards) in &leaders {
                    if heard.get(id).is_some_and(|t| t.elapsed() >= SUSPECT_AFTER) {
                        suspects.extend(shards.iter().map(|&s| (s, Some(*id))));
                    }
                }
                for (shard, leader) in suspects {
                    if next_call.get(&shard).is_some_and(|t| Instant::now() < *t) {
                        continue;
                    }
                    let again = Duration::from_millis(500 + rand::random_range(0..500));
                    next_call.insert(shard, Instant::now() + again);
                    let Ok(raft) = me.group(shard) else { continue };
                    let delay = me.election_delay(raft, shard, leader, &logs);
                    let me = me.clone();
                    tokio::spawn(async move {
                        let Ok(raft) = me.group(shard) else { return };
                        tokio::time::sleep(delay).await;
                        // Still the same leader (or still none: a leader that removed itself
                        // from the group counts as none)?
                        let current = leader_of(raft).and_then(|(l, node)| node.map(|_| l));
                        if current != leader {
                            return;
                        }
                        match leader {
                            Some(l) => info!(
                                shard,
                                leader = l,
                                "leader not answering; calling an election"
                            ),
                            None => info!(shard, "no leader; calling an election"),
                        }
                        raft.elect().await;
                    });
                }
            }
        })
    }
}
