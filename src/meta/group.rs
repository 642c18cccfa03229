//! The metadata Raft group: users, sessions, API keys, dashboards and alert rules, replicated
//! to every node's SQLite store.
//!
//! Its log is a group of the node's shared write-ahead log, like every shard's
//! ([`protocol::cluster::META_GROUP`]); its state machine is the [`MetaStore`]: an entry is
//! applied in one SQLite transaction together with the group's bookkeeping (last applied log
//! id, membership), so the store and the position it reflects always agree. A Raft snapshot is
//! a copy of the store file (`VACUUM INTO`), installed table by table in one transaction.
//!
//! Any node proposes: at the leader a command goes straight to Raft; elsewhere it travels to
//! the leader (`Channel::MetaWrite`), and the proposer waits until its own replica applied
//! it, so a node reads its own writes. Reads are local; [`MetaGroup::sync`] is the barrier
//! that makes a read linearizable (the leader confirms its leadership and names the index to
//! wait for).

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::raft::{storage_error, AppliedMark, Member, RaftMeta};
use cluster::transport::{Transport, TransportError};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, Raft, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use protocol::cluster::{Channel, MetaWritten, Refusal, Request, Response, META_GROUP};

use super::command::{MetaCommand, MetaOutcome};
use super::store::{MetaError, MetaStore};
use crate::replication::{leader_changes, leader_of};

openraft::declare_raft_types!(
    /// The type configuration of the metadata group: commands in, refusals out.
    pub MetaRaft:
        D = MetaCommand,
        R = Option<Refusal>,
        Node = Member,
);

/// How long a forwarded change still waits for the old leader's answer once another node
/// leads the group.
const DEPOSED_GRACE: Duration = Duration::from_secs(1);

/// How long a metadata change waits for the group to have a leader and commit it.
const WRITE_WAIT: Duration = Duration::from_secs(5);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MetaError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("metadata store task: {e}")),
    }
}

/// openraft's state machine over the store.
pub struct MetaMachine {
    store: Arc<MetaStore>,
    meta: RaftMeta,
    applied: AppliedMark<openraft::Entry<MetaRaft>>,
}

impl MetaMachine {
    pub fn new(
        store: Arc<MetaStore>,
        applied: AppliedMark<openraft::Entry<MetaRaft>>,
    ) -> Result<Self, MetaError> {
        let meta = RaftMeta::decode(&store.raft_meta()?).map_err(|reason| MetaError::Invalid {
            field: "raft_state",
            reason,
        })?;
        Ok(Self {
            store,
            meta,
            applied,
        })
    }
}

fn snapshot_meta(meta: &RaftMeta) -> SnapshotMeta<u64, Member> {
    SnapshotMeta {
        last_log_id: meta.last_applied,
        last_membership: meta.membership.clone(),
        snapshot_id: format!("meta-{}", meta.last_applied.map_or(0, |l| l.index)),
    }
}

/// A copy of the store as it is now, or `None` before anything was applied.
async fn current_snapshot(
    store: &Arc<MetaStore>,
) -> Result<Option<Snapshot<MetaRaft>>, StorageError<u64>> {
    let err = |e: String| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
    let s = store.clone();
    let (bytes, raft) = blocking(move || s.snapshot()).await.map_err(err)?;
    let meta = RaftMeta::decode(&raft).map_err(err)?;
    if meta.last_applied.is_none() {
        return Ok(None);
    }
    Ok(Some(Snapshot {
        meta: snapshot_meta(&meta),
        snapshot: Box::new(Cursor::new(bytes)),
    }))
}

pub struct MetaSnapshotBuilder {
    store: Arc<MetaStore>,
}

impl RaftSnapshotBuilder<MetaRaft> for MetaSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<MetaRaft>, StorageError<u64>> {
        current_snapshot(&self.store).await?.ok_or_else(|| {
            storage_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                "nothing applied yet",
            )
        })
    }
}

impl RaftStateMachine<MetaRaft> for MetaMachine {
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<Refusal>>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<MetaRaft>> + Send,
    {
        let mut steps = Vec::new();
        for e in entries {
            self.meta.last_applied = Some(e.log_id);
            let cmd = match e.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(cmd),
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(e.log_id), m);
                    None
                }
            };
            steps.push((e.log_id.index, cmd, self.meta.encode()));
        }
        let last = steps.last().map(|s| s.0);
        let store = self.store.clone();
        let outcomes = blocking(move || {
            steps
                .into_iter()
                .map(|(index, cmd, raft)| {
                    Ok(match store.apply(index, cmd.as_ref(), &raft)? {
                        MetaOutcome::Refused(e) => Some(Refusal::from(e)),
                        MetaOutcome::Done | MetaOutcome::AlreadyApplied => None,
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        if let Some(last) = last {
            self.applied.set(last);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> MetaSnapshotBuilder {
        MetaSnapshotBuilder {
            store: self.store.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let err = |e: String| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let store = self.store.clone();
        let bytes = snapshot.into_inner();
        let raft = blocking(move || store.install(&bytes)).await.map_err(err)?;
        let carried = RaftMeta::decode(&raft).map_err(err)?;
        if carried.last_applied != meta.last_log_id {
            return Err(err(format!(
                "snapshot data is at {:?}, its metadata says {:?}",
                carried.last_applied, meta.last_log_id
            )));
        }
        self.meta = carried;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<MetaRaft>>, StorageError<u64>> {
        current_snapshot(&self.store).await
    }
}

/// The node's handle on the metadata group: propose a command, a read barrier, and what it
/// serves to other nodes.
pub struct MetaGroup {
    raft: Raft<MetaRaft>,
    node_id: u64,
    transport: Arc<Transport>,
}

type WriteError = RaftError<u64, ClientWriteError<u64, Member>>;

fn unavailable(e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

impl MetaGroup {
    pub fn new(raft: Raft<MetaRaft>, node_id: u64, transport: Arc<Transport>) -> Self {
        Self {
            raft,
            node_id,
            transport,
        }
    }

    pub fn raft(&self) -> &Raft<MetaRaft> {
        &self.raft
    }

    /// Whether this node leads the group now (it runs the cluster's alert evaluation).
    pub fn is_leader(&self) -> bool {
        leader_of(&self.raft).is_some_and(|(l, _)| l == self.node_id)
    }

    /// Commits `cmd` in the group and returns once this node's replica applied it: `Ok` if
    /// it was applied, the refusal as an error if not. Waits through an election (up to
    /// [`WRITE_WAIT`]).
    pub async fn write(&self, cmd: MetaCommand) -> Result<(), MetaError> {
        let started = Instant::now();
        let mut body: Option<Vec<u8>> = None;
        loop {
            let leader = match leader_of(&self.raft) {
                Some((l, _)) if l == self.node_id => {
                    let Ok(written) =
                        tokio::time::timeout(WRITE_WAIT, self.raft.client_write(cmd.clone())).await
                    else {
                        return Err(unavailable(format!(
                            "not committed within {} s (this node may be cut off from its peers); retry",
                            WRITE_WAIT.as_secs()
                        )));
                    };
                    match written {
                        Ok(r) => return r.data.map_or(Ok(()), |refusal| Err(refusal.into())),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            f.leader_id.map(|l| (l, f.leader_node))
                        }
                        Err(e) => return Err(write_error(e)),
                    }
                }
                other => other,
            };
            if let Some((l, Some(node))) = leader.filter(|(l, _)| *l != self.node_id) {
                let addr: SocketAddr = node.quic.parse().map_err(|e| {
                    MetaError::Failed(format!("leader {l} address {}: {e}", node.quic))
                })?;
                if body.is_none() {
                    body = Some(
                        protocol::codec::encode(&cmd)
                            .map_err(|e| MetaError::Failed(e.to_string()))?,
                    );
                }
                let request = Request {
                    channel: Channel::MetaWrite,
                    group: META_GROUP,
                    body: body.clone().unwrap_or_default(),
                };
                let call = self.transport.call_within(addr, &request, WRITE_WAIT);
                tokio::pin!(call);
                let answer = tokio::select! {
                    answer = &mut call => answer,
                    () = leader_changes(&self.raft, l) => {
                        // A deposed leader that is alive still answers what became of the
                        // change (commands such as "create a dashboard" are not idempotent:
                        // an exact answer beats a fast one); a dead one never will, and
                        // waiting out the whole timeout for it would only delay the 503.
                        match tokio::time::timeout(DEPOSED_GRACE, &mut call).await {
                            Ok(answer) => answer,
                            Err(_) => {
                                return Err(unavailable(
                                    "the metadata group's leader changed and the old one did not answer; retry",
                                ))
                            }
                        }
                    }
                };
                match answer {
                    Ok(answer) => {
                        let written: MetaWritten = protocol::codec::decode(&answer)
                            .map_err(|e| MetaError::Failed(format!("leader's answer: {e}")))?;
                        self.applied(written.index).await?;
                        return written.refused.map_or(Ok(()), |r| Err(r.into()));
                    }
                    // Not delivered, or refused by a node that no longer leads: nothing was
                    // applied, so trying again cannot apply it twice.
                    Err(TransportError::Connect { .. })
                    | Err(TransportError::Remote { retry: true, .. })
                        if started.elapsed() <= WRITE_WAIT => {}
                    Err(e) => return Err(unavailable(e)),
                }
            } else if started.elapsed() > WRITE_WAIT {
                return Err(unavailable(format!(
                    "no leader within {} s; retry",
                    WRITE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this node's replica applied `index`.
    async fn applied(&self, index: u64) -> Result<(), MetaError> {
        self.raft
            .wait(Some(WRITE_WAIT))
            .applied_index_at_least(Some(index), "metadata replica catching up")
            .await
            .map(|_| ())
            .map_err(|e| unavailable(format!("this node's replica did not catch up: {e}")))
    }

    /// A read barrier: once it returns, this node's replica holds every change committed
    /// before it was called (the leader confirms its leadership with a majority and names
    /// the index to wait for).
    pub async fn sync(&self) -> Result<(), MetaError> {
        let started = Instant::now();
        loop {
            match leader_of(&self.raft) {
                Some((l, _)) if l == self.node_id => {
                    return match tokio::time::timeout(WRITE_WAIT, self.raft.ensure_linearizable())
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(unavailable(e)),
                        Err(_) => Err(unavailable("leadership not confirmed in time")),
                    };
                }
                Some((_, Some(node))) => {
                    let addr: SocketAddr = node
                        .quic
                        .parse()
                        .map_err(|e| MetaError::Failed(format!("leader address: {e}")))?;
                    let request = Request {
                        channel: Channel::MetaReadIndex,
                        group: META_GROUP,
                        body: Vec::new(),
                    };
                    match self.transport.call_within(addr, &request, WRITE_WAIT).await {
                        Ok(answer) => {
                            let index: u64 = protocol::codec::decode(&answer)
                                .map_err(|e| MetaError::Failed(format!("read index: {e}")))?;
                            return self.applied(index).await;
                        }
                        Err(e) if !e.retryable() || started.elapsed() > WRITE_WAIT => {
                            return Err(unavailable(e))
                        }
                        Err(_) => {}
                    }
                }
                _ if started.elapsed() > WRITE_WAIT => {
                    return Err(unavailable("no leader; retry"));
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A command another node forwarded (`Channel::MetaWrite`): commit it if this node leads.
    pub async fn serve_write(&self, body: &[u8]) -> Response {
        let cmd: MetaCommand = match protocol::codec::decode(body) {
            Ok(c) => c,
            Err(e) => {
                return Response::Err {
                    message: format!("malformed metadata command: {e}"),
                    retry: false,
                }
            }
        };
        match self.raft.client_write(cmd).await {
            Ok(r) => encoded(&MetaWritten {
                index: r.log_id.index,
                refused: r.data,
            }),
            Err(e) => Response::Err {
                message: write_error(e).to_string(),
                retry: true,
            },
        }
    }

    /// `Channel::MetaReadIndex`: at the leader, the index a linearizable read waits for.
    pub async fn serve_read_index(&self) -> Response {
        match self.raft.ensure_linearizable().await {
            Ok(id) => encoded(&id.map_or(0, |l| l.index)),
            Err(e) => Response::Err {
                message: e.to_string(),
                retry: true,
            },
        }
    }
}

fn encoded<T: serde::Serialize>(v: &T) -> Response {
    match protocol::codec::encode(v) {
        Ok(b) => Response::Ok(b),
        Err(e) => Response::Err {
            message: e.to_string(),
            retry: false,
        },
    }
}

fn write_error(e: WriteError) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => unavailable(format!(
            "this node does not lead the metadata group (leader: {}); retry",
            f.leader_id
                .map_or_else(|| "being elected".to_string(), |l| l.to_string())
        )),
        RaftError::APIError(e) => MetaError::Failed(e.to_string()),
        RaftError::Fatal(e) => unavailable(e),
    }
}
