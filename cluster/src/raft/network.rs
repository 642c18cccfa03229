//! openraft's network over the node's [`Transport`], and the router that hands other nodes'
//! Raft RPCs to the right local group.
//!
//! Every group's RPCs to a peer share the transport's one connection to it.

use super::EncodedEntry;
use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::responder::OneshotResponder;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Raft, RaftMetrics, RaftTypeConfig};
use protocol::cluster::{Channel, Request, Response};
use protocol::codec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::transport::{Reply, Transport, TransportError};

/// A cluster member as Raft groups know it: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's QUIC address (node-to-node traffic).
    pub quic: String,
    /// The node's HTTP address (what clients are told to use).
    pub http: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (http {})", self.quic, self.http)
    }
}

/// Makes per-peer clients for one group.
pub struct Network<C> {
    transport: Arc<Transport>,
    group: u32,
    _c: PhantomData<fn() -> C>,
}

impl<C> Network<C> {
    pub fn new(transport: Arc<Transport>, group: u32) -> Self {
        Self {
            transport,
            group,
            _c: PhantomData,
        }
    }
}

impl<C> RaftNetworkFactory<C> for Network<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = Member>,
    C::Entry: EncodedEntry,
{
    type Network = PeerClient<C>;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient<C> {
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.quic.parse().map_err(|e| format!("{}: {e}", node.quic)),
            _c: PhantomData,
        }
    }
}

pub struct PeerClient<C> {
    transport: Arc<Transport>,
    group: u32,
    target: u64,
    addr: Result<SocketAddr, String>,
    _c: PhantomData<fn() -> C>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl<C> PeerClient<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = Member>,
    C::Entry: EncodedEntry,
{
    /// One RPC; a `batched` one shares a frame with the other groups' small RPCs to the same
    /// peer (`Transport::call_batched`): heartbeats and votes, which every group sends and
    /// which would otherwise cost a stream each.
    async fn rpc<A, E>(
        &self,
        channel: Channel,
        body: Result<Vec<u8>, codec::CodecError>,
        option: &RPCOption,
        batched: bool,
    ) -> Result<A, RPCError<u64, Member, E>>
    where
        A: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Message(e))))?;
        let body =
            body.map_err(|e| RPCError::Network(NetworkError::new(&Message(e.to_string()))))?;
        let request = Request {
            channel,
            group: self.group,
            body,
        };
        let answer = if batched {
            self.transport
                .call_batched(addr, request, option.hard_ttl())
                .await
        } else {
            self.transport
                .call_within(addr, &request, option.hard_ttl())
                .await
        };
        let answer = answer.map_err(|e| match e {
            TransportError::Connect { .. }
            | TransportError::Refused { .. }
            | TransportError::Timeout { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        })?;
        let result: Result<A, E> = codec::decode(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&Message(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C> RaftNetwork<C> for PeerClient<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = Member>,
    C::Entry: EncodedEntry,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        // A heartbeat carries no entries.
        let batched = rpc.entries.is_empty();
        self.rpc(Channel::RaftAppend, encode_append(&rpc), &option, batched)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(Channel::RaftSnapshot, codec::encode(&rpc), &option, false)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.rpc(Channel::RaftVote, codec::encode(&rpc), &option, true)
            .await
    }
}

/// One local group's Raft, type-erased so groups of different kinds (shards, metadata) share
/// a router, a failure detector and the join procedure.
pub trait GroupRpc: Send + Sync + 'static {
    fn handle(&self, channel: Channel, body: Vec<u8>) -> Reply;
    /// The group as this node sees it.
    fn metrics(&self) -> watch::Receiver<RaftMetrics<u64, Member>>;
    /// Starts an election now (the node's failure detector decides when).
    fn elect(&self) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// At the leader: adds `id` as a learner if it is no member, then as a voter if `voter`.
    /// Errors name the cause (another node leads; the change did not commit).
    fn add_member(
        &self,
        id: u64,
        member: Member,
        voter: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    /// At the leader: removes `id` from the group; if it was a voter, a learner (if any)
    /// becomes a voter first, so the group keeps its number of voters. Refuses to remove the
    /// last voter.
    fn remove_member(&self, id: u64) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    /// At the leader: makes `target` the group's voters and nobody else a member. Nodes not
    /// yet members join as learners and catch up first (one at a time), and only then does one
    /// membership change (joint consensus) swap the voters, so the group never has fewer
    /// up-to-date replicas than before. Returns whether anything changed.
    fn reconcile(
        &self,
        target: Vec<(u64, Member)>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;
}

impl<C> GroupRpc for Raft<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = Member, Responder = OneshotResponder<C>>,
    C::Entry: EncodedEntry,
{
    fn metrics(&self) -> watch::Receiver<RaftMetrics<u64, Member>> {
        Raft::metrics(self)
    }

    fn elect(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let raft = self.clone();
        Box::pin(async move {
            let _ = raft.trigger().elect().await;
        })
    }

    fn add_member(
        &self,
        id: u64,
        member: Member,
        voter: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let raft = self.clone();
        Box::pin(async move {
            let known = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .is_some();
            if !known {
                raft.add_learner(id, member, true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let is_voter = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id);
            if voter && !is_voter {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn remove_member(&self, id: u64) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let raft = self.clone();
        Box::pin(async move {
            let (voters, learners): (BTreeSet<u64>, Vec<u64>) = {
                let m = raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                if membership.get_node(&id).is_none() {
                    return Ok(());
                }
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                let learners = membership
                    .nodes()
                    .map(|(n, _)| *n)
                    .filter(|n| !voters.contains(n) && *n != id)
                    .collect();
                (voters, learners)
            };
            if voters.contains(&id) {
                if voters.len() == 1 {
                    return Err(format!(
                        "node {id} is the group's last voter; add another node first"
                    ));
                }
                if let Some(&stand_in) = learners.first() {
                    raft.change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([stand_in])),
                        true,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn reconcile(
        &self,
        target: Vec<(u64, Member)>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> {
        let raft = self.clone();
        Box::pin(async move {
            if target.is_empty() {
                return Err("no target replicas".into());
            }
            let (voters, members): (BTreeSet<u64>, BTreeSet<u64>) = {
                let m = raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                (
                    membership.voter_ids().collect(),
                    membership.nodes().map(|(n, _)| *n).collect(),
                )
            };
            let wanted: BTreeSet<u64> = target.iter().map(|(id, _)| *id).collect();
            if voters == wanted && members == wanted {
                return Ok(false);
            }
            for (id, member) in target {
                if !members.contains(&id) {
                    raft.add_learner(id, member, true)
                        .await
                        .map_err(|e| format!("adding node {id} as a learner: {e}"))?;
                }
            }
            if voters != wanted {
                raft.change_membership(ChangeMembers::ReplaceAllVoters(wanted.clone()), false)
                    .await
                    .map_err(|e| format!("changing the voters to {wanted:?}: {e}"))?;
            }
            let strays: BTreeSet<u64> = {
                let m = raft.metrics();
                let m = m.borrow();
                if !wanted.contains(&m.id) {
                    // This leader removed itself and steps down; the next one finishes.
                    return Ok(true);
                }
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(n, _)| *n)
                    .filter(|n| !wanted.contains(n))
                    .collect()
            };
            if !strays.is_empty() {
                raft.change_membership(ChangeMembers::RemoveNodes(strays.clone()), false)
                    .await
                    .map_err(|e| format!("removing {strays:?}: {e}"))?;
            }
            Ok(true)
        })
    }

    fn handle(&self, channel: Channel, body: Vec<u8>) -> Reply {
        let raft = self.clone();
        Box::pin(async move {
            let encoded = match channel {
                Channel::RaftAppend => match decode_append::<C>(&body) {
                    Ok(rpc) => codec::encode(&raft.append_entries(rpc).await),
                    Err(e) => return malformed(e),
                },
                Channel::RaftVote => match codec::decode::<VoteRequest<u64>>(&body) {
                    Ok(rpc) => codec::encode(&raft.vote(rpc).await),
                    Err(e) => return malformed(e),
                },
                Channel::RaftSnapshot => match codec::decode::<InstallSnapshotRequest<C>>(&body) {
                    Ok(rpc) => codec::encode(&raft.install_snapshot(rpc).await),
                    Err(e) => return malformed(e),
                },
                other => {
                    return Response::Err {
                        message: format!("{other:?} is not a Raft channel"),
                        retry: false,
                    }
                }
            };
            match encoded {
                Ok(bytes) => Response::Ok(bytes),
                Err(e) => Response::Err {
                    message: e.to_string(),
                    retry: false,
                },
            }
        })
    }
}

/// An append-entries request without its entries.
#[derive(Serialize, Deserialize)]
struct AppendHead {
    vote: openraft::Vote<u64>,
    prev_log_id: Option<openraft::LogId<u64>>,
    leader_commit: Option<openraft::LogId<u64>>,
}

/// `Channel::RaftAppend` body: the request without its entries, then each entry as the
/// encoding its payload keeps (see `EncodedEntry`), each part as a `u32` little-endian length
/// and that many bytes. The leader encodes an entry once for its log and every follower; a
/// follower's log stores the bytes it received.
pub fn encode_append<C>(rpc: &AppendEntriesRequest<C>) -> Result<Vec<u8>, codec::CodecError>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: EncodedEntry,
{
    let head = codec::encode(&AppendHead {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
    })?;
    let mut parts = Vec::with_capacity(rpc.entries.len() + 1);
    parts.push(std::sync::Arc::<[u8]>::from(head));
    for entry in &rpc.entries {
        parts.push(entry.encoded()?);
    }
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        let len = u32::try_from(part.len())
            .map_err(|_| codec::CodecError::Encode("an entry over 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// Reads a body [`encode_append`] wrote; each entry keeps the bytes it came in.
pub fn decode_append<C>(body: &[u8]) -> Result<AppendEntriesRequest<C>, codec::CodecError>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: EncodedEntry + DeserializeOwned,
{
    let mut rest = body;
    let mut next = || -> Result<Option<&[u8]>, codec::CodecError> {
        if rest.is_empty() {
            return Ok(None);
        }
        let short = || codec::CodecError::Decode("append-entries body cut short".into());
        let len: [u8; 4] = rest
            .get(..4)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let len = u32::from_le_bytes(len) as usize;
        let part = rest.get(4..4 + len).ok_or_else(short)?;
        rest = &rest[4 + len..];
        Ok(Some(part))
    };
    let head: AppendHead = codec::decode(
        next()?.ok_or_else(|| codec::CodecError::Decode("empty append-entries body".into()))?,
    )?;
    let mut entries = Vec::new();
    while let Some(bytes) = next()? {
        let bytes: std::sync::Arc<[u8]> = bytes.into();
        let entry = C::Entry::decode(&bytes)?;
        entry.keep(bytes);
        entries.push(entry);
    }
    Ok(AppendEntriesRequest {
        vote: head.vote,
        prev_log_id: head.prev_log_id,
        entries,
        leader_commit: head.leader_commit,
    })
}

fn malformed(e: impl std::fmt::Display) -> Response {
    Response::Err {
        message: format!("malformed Raft RPC: {e}"),
        retry: false,
    }
}

/// The node's Raft groups by number: where Raft RPCs from other nodes go.
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<u32, Arc<dyn GroupRpc>>>,
}

impl Router {
    pub fn insert(&self, group: u32, raft: Arc<dyn GroupRpc>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, raft);
    }

    pub fn remove(&self, group: u32) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    /// The local group numbered `group`.
    pub fn get(&self, group: u32) -> Option<Arc<dyn GroupRpc>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Serves a Raft request; a group this node does not host is a retryable error (it may be
    /// starting, or being added).
    pub fn serve(&self, request: Request) -> Reply {
        let group = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.group)
            .cloned();
        match group {
            Some(g) => g.handle(request.channel, request.body),
            None => Box::pin(async move {
                Response::Err {
                    message: format!("group {} is not hosted here", request.group),
                    retry: true,
                }
            }),
        }
    }
}
