//! The node's Raft groups as a whole (every shard's, and the metadata group): proposing a
//! batch wherever its shard's leader is, serving batches other nodes forward, the failure
//! detector that calls elections, adding a joining node to the groups, and the cluster as the
//! groups see it (`GET /api/v1/cluster`).
//!
//! A joining node asks any member, which adds it to the groups it leads and passes the others
//! on to their leaders.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::raft::{GroupRpc, Member};
use cluster::transport::{Transport, TransportError};
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

/// How long a write waits for its shard to have a reachable leader (an election after a
/// leader dies takes 0.5–1 s) before it fails with 503.
const LEADER_WAIT: Duration = Duration::from_secs(5);

pub struct RaftGroups {
    rafts: Vec<Raft<ShardRaft>>,
    meta: Arc<MetaGroup>,
    /// Every group, shards and metadata, by group number: what elections, joins and the
    /// cluster view go over.
    groups: Vec<(u32, Arc<dyn GroupRpc>)>,
    node_id: u64,
    transport: Arc<Transport>,
    replication_factor: usize,
}

type WriteError = RaftError<u64, ClientWriteError<u64, Member>>;

impl RaftGroups {
    pub fn new(
        rafts: Vec<Raft<ShardRaft>>,
        meta: Arc<MetaGroup>,
        node_id: u64,
        transport: Arc<Transport>,
        replication_factor: usize,
    ) -> Self {
        let mut groups: Vec<(u32, Arc<dyn GroupRpc>)> = rafts
            .iter()
            .enumerate()
            .map(|(shard, raft)| (shard as u32, Arc::new(raft.clone()) as Arc<dyn GroupRpc>))
            .collect();
        groups.push((META_GROUP, Arc::new(meta.raft().clone())));
        Self {
            rafts,
            meta,
            groups,
            node_id,
            transport,
            replication_factor,
        }
    }

    /// Every group this node hosts: `(group, last log index, whether this node leads it)`
    /// (the answer to `Channel::Groups`).
    pub fn status(&self) -> Vec<(u32, u64, bool)> {
        self.groups
            .iter()
            .map(|(id, g)| {
                let last = g.metrics().borrow().last_log_index.unwrap_or(0);
                let leads = leader_of(g.as_ref()).is_some_and(|(l, _)| l == self.node_id);
                (*id, last, leads)
            })
            .collect()
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
        let mut encoded: Option<Vec<u8>> = None;
        loop {
            let leader = match leader_of(raft) {
                Some((l, _)) if l == self.node_id => {
                    if let Some(silent) = cut_off(raft) {
                        // Nothing proposed yet: the client can go to another node at once
                        // instead of waiting for a commit that cannot come.
                        return Err(Error::Unavailable(format!(
                            "shard {shard}: this node leads it but has not heard from a majority of its replicas for {silent} ms (cut off?); retry on another node"
                        )));
                    }
                    // Cloning a batch shares its points.
                    let write = raft.client_write(batch.clone());
                    // A leader cut off from its peers cannot commit; it finds out only when
                    // the partition heals. The client hears of it well before then.
                    let Ok(written) = tokio::time::timeout(LEADER_WAIT, write).await else {
                        return Err(Error::Unavailable(format!(
                            "shard {shard}: not committed within {} s (this node may be cut off from its peers); retry",
                            LEADER_WAIT.as_secs()
                        )));
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
                    let addr: SocketAddr = node.quic.parse().map_err(|e| {
                        Error::Internal(format!("leader address {}: {e}", node.quic))
                    })?;
                    if encoded.is_none() {
                        encoded = Some(
                            protocol::codec::encode(&batch)
                                .map_err(|e| Error::Internal(e.to_string()))?,
                        );
                    }
                    let request = Request {
                        channel: Channel::Ingest,
                        group: shard,
                        body: encoded.clone().unwrap_or_default(),
                    };
                    // A dead leader does not answer until its connection times out; the
                    // election that replaces it is the sooner sign. Waiting for either:
                    let mut metrics = raft.metrics();
                    let deposed = async move {
                        loop {
                            if metrics.changed().await.is_err() {
                                return;
                            }
                            if metrics.borrow().current_leader != Some(l) {
                                return;
                            }
                        }
                    };
                    let answer = tokio::select! {
                        answer = self.transport.call(addr, &request) => answer,
                        () = deposed => {
                            // It may have committed before it lost leadership: only the client
                            // can retry safely.
                            return Err(Error::Unavailable(format!(
                                "shard {shard}: its leader changed while the write was in flight; retry"
                            )));
                        }
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
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A batch another node forwarded: commit it here if this node leads its shard.
    pub async fn serve_ingest(&self, shard: u32, body: &[u8]) -> Response {
        let batch: ShardBatch = match protocol::codec::decode(body) {
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
        let Ok(raft) = self.raft(shard) else {
            return Response::Err {
                message: format!("no shard {shard}"),
                retry: false,
            };
        };
        match raft.client_write(batch).await {
            Ok(_) => Response::Ok(Vec::new()),
            Err(e) => Response::Err {
                message: write_error(shard, e).to_string(),
                retry: true,
            },
        }
    }

    /// Carries out a membership change in the groups this node leads — a joining node
    /// becomes a replica (a voter while a group has fewer than the replication factor, else a
    /// learner); a leaving one stops being one — and passes the rest on to their leaders.
    pub async fn change_membership(&self, req: MembershipRequest) -> Result<MembershipAnswer> {
        let hops = req.hops;
        let wanted: Vec<u32> = req
            .groups
            .clone()
            .unwrap_or_else(|| self.groups.iter().map(|(id, _)| *id).collect());
        let mut done = Vec::new();
        let mut elsewhere: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for id in wanted {
            let group = self.group(id)?;
            let (leads, voters) = {
                let m = group.metrics();
                let m = m.borrow();
                (
                    m.current_leader == Some(self.node_id),
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .collect::<BTreeSet<u64>>(),
                )
            };
            if !leads {
                match leader_of(group).and_then(|(_, node)| node) {
                    Some(leader) if hops < 2 => elsewhere.entry(leader.quic).or_default().push(id),
                    _ => {
                        return Err(Error::Unavailable(format!(
                            "group {id} has no reachable leader; retry"
                        )))
                    }
                }
                continue;
            }
            let changed = match &req.change {
                MemberChange::Join { quic, http } => {
                    let member = Member {
                        quic: quic.clone(),
                        http: http.clone(),
                    };
                    let voter =
                        voters.contains(&req.node_id) || voters.len() < self.replication_factor;
                    group.add_member(req.node_id, member, voter).await
                }
                MemberChange::Leave => group.remove_member(req.node_id).await,
            };
            changed.map_err(|e| Error::Unavailable(format!("group {id}: {e}")))?;
            done.push(id);
        }
        for (leader, groups) in elsewhere {
            let addr: SocketAddr = leader
                .parse()
                .map_err(|e| Error::Internal(format!("leader address {leader}: {e}")))?;
            let body = protocol::codec::encode(&MembershipRequest {
                groups: Some(groups),
                hops: hops + 1,
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
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| Error::Unavailable(format!("passing the change on: {e}")))?;
            let answer: MembershipAnswer = protocol::codec::decode(&answer)
                .map_err(|e| Error::Internal(format!("membership answer: {e}")))?;
            done.extend(answer.groups);
        }
        done.sort_unstable();
        info!(node = req.node_id, change = ?req.change, groups = done.len(), "membership changed");
        Ok(MembershipAnswer { groups: done })
    }

    /// Removes node `id` from every group (admin: `DELETE /api/v1/cluster/nodes/{id}`).
    /// Refused for an unknown node, and for the last voter of a group.
    pub async fn remove_node(&self, id: u64) -> Result<MembershipAnswer> {
        let known = self.groups.iter().any(|(_, g)| {
            g.metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .is_some()
        });
        if !known {
            return Err(Error::NotFound {
                what: format!("node {id}"),
            });
        }
        for (group, g) in &self.groups {
            let alone = g
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .eq([id]);
            if alone {
                return Err(Error::Meta(crate::meta::MetaError::Conflict(format!(
                    "node {id} is the only voter of group {group}; add another node first"
                ))));
            }
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
        for (group, g) in &self.groups {
            let m = g.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            for (id, node) in membership.nodes() {
                let e = nodes.entry(*id).or_insert((node.clone(), false));
                e.1 |= voters.contains(id);
            }
            if *group == META_GROUP {
                meta_leader = m.current_leader.unwrap_or(0);
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

/// How long a leader may go without hearing from a majority before it sheds writes: two
/// election timeouts (by then the others have elected a new leader).
const QUORUM_SILENCE_MS: u64 = 1_000;

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
                for (shard, raft) in &me.groups {
                    let (shard, raft) = (*shard, raft.as_ref());
                    // (Never borrow the metrics twice at once: a waiting writer between the
                    // two read locks deadlocks the runtime.)
                    let (voter, voters) = {
                        let m = raft.metrics();
                        let m = m.borrow();
                        let membership = m.membership_config.membership();
                        for (id, node) in membership.nodes() {
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
                for (id, status) in futures_util::future::join_all(probes).await {
                    let last = heard.entry(id).or_insert(now);
                    let Some(status) = status else { continue };
                    *last = Instant::now();
                    let mut led = BTreeSet::new();
                    for (shard, last_log, leads) in status {
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
                        // Still the same leader (or still none)?
                        if leader_of(raft).map(|(l, _)| l) != leader {
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
