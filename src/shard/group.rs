//! A shard as a Raft group: openraft's state machine over the shard actor.
//!
//! The group's log is its share of the node's shared write-ahead log (`cluster::raft::LogStore`);
//! applying a committed entry sends it to the actor; a Raft snapshot is the shard's snapshot
//! file, which also carries the group's bookkeeping (last applied log id and membership), so
//! the state and the position it reflects are always written together.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use cluster::raft::{storage_error, AppliedMark, Member, RaftMeta};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use protocol::ShardEntry;
use tokio::sync::oneshot;

use super::actor::{ShardMsg, ShardRef};
use super::snapshot;

openraft::declare_raft_types!(
    /// The type configuration of every shard group.
    pub ShardRaft:
        D = ShardEntry,
        R = (),
        Node = Member,
);

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

async fn call<T: Send + 'static>(
    actor: &ShardRef,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg + Send,
) -> Result<T, String> {
    match actor.call(msg, Some(CALL_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(_) => Err("the shard actor did not answer".into()),
        Err(e) => Err(format!("the shard actor is gone: {e}")),
    }
}

pub struct ShardMachine {
    shard: u32,
    actor: ShardRef,
    snapshot_dir: PathBuf,
    meta: RaftMeta,
    applied: AppliedMark<openraft::Entry<ShardRaft>>,
}

impl ShardMachine {
    /// A machine over a started actor; reads the bookkeeping of the state it loaded.
    pub async fn new(
        shard: u32,
        actor: ShardRef,
        snapshot_dir: PathBuf,
        applied: AppliedMark<openraft::Entry<ShardRaft>>,
    ) -> Result<Self, String> {
        let bytes = call(&actor, ShardMsg::RaftMeta).await?;
        Ok(Self {
            shard,
            actor,
            snapshot_dir,
            meta: RaftMeta::decode(&bytes)?,
            applied,
        })
    }
}

fn snapshot_meta(shard: u32, meta: &RaftMeta) -> SnapshotMeta<u64, Member> {
    SnapshotMeta {
        last_log_id: meta.last_applied,
        last_membership: meta.membership.clone(),
        snapshot_id: format!("shard-{shard}-{}", meta.last_applied.map_or(0, |l| l.index)),
    }
}

pub struct ShardSnapshotBuilder {
    shard: u32,
    actor: ShardRef,
}

impl RaftSnapshotBuilder<ShardRaft> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardRaft>, StorageError<u64>> {
        let snap_err = |e: String| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let meta = call(&self.actor, ShardMsg::Snapshot)
            .await
            .and_then(|r| r)
            .map_err(snap_err)?;
        let meta = RaftMeta::decode(&meta).map_err(snap_err)?;
        // The snapshot is on disk; openraft (0.9) keeps only the metadata of a snapshot it
        // asked us to build, and reads the data back through `get_current_snapshot` when a
        // follower needs it, so no copy of the data is handed over here.
        Ok(Snapshot {
            meta: snapshot_meta(self.shard, &meta),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<ShardRaft> for ShardMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<ShardRaft>> + Send,
    {
        let mut batch = Vec::new();
        for e in entries {
            self.meta.last_applied = Some(e.log_id);
            let index = e.log_id.index;
            match e.payload {
                EntryPayload::Blank => batch.push((index, None)),
                EntryPayload::Normal(b) => batch.push((index, Some(b))),
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(e.log_id), m);
                    batch.push((index, None));
                }
            }
        }
        let n = batch.len();
        let (done, wait) = oneshot::channel();
        let msg = ShardMsg::ApplyEntries {
            entries: batch,
            raft_meta: self.meta.encode(),
            done,
        };
        let apply_err = |e: String| storage_error(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        self.actor
            .cast(msg)
            .map_err(|e| apply_err(format!("the shard actor is gone: {e}")))?;
        wait.await
            .map_err(|_| apply_err("the shard actor stopped while applying".into()))?;
        if let Some(last) = self.meta.last_applied {
            self.applied.set(last.index);
        }
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> ShardSnapshotBuilder {
        ShardSnapshotBuilder {
            shard: self.shard,
            actor: self.actor.clone(),
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
        let bytes = snapshot.into_inner();
        let state = snapshot::decode(&bytes, self.shard).map_err(err)?;
        let carried = RaftMeta::decode(state.raft_meta()).map_err(err)?;
        if carried.last_applied != meta.last_log_id {
            return Err(err(format!(
                "snapshot data is at {:?}, its metadata says {:?}",
                carried.last_applied, meta.last_log_id
            )));
        }
        call(&self.actor, |r| ShardMsg::Install(Box::new(state), r))
            .await
            .and_then(|r| r)
            .map_err(err)?;
        self.meta = carried;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ShardRaft>>, StorageError<u64>> {
        let err = |e: String| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        let dir = self.snapshot_dir.clone();
        let shard = self.shard;
        let raw = tokio::task::spawn_blocking(move || snapshot::read_raw(&dir, shard))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(e.to_string()))?;
        let Some((bytes, meta)) = raw else {
            return Ok(None);
        };
        let meta = RaftMeta::decode(&meta).map_err(err)?;
        if meta.last_applied.is_none() {
            // A snapshot written before the group applied anything is no snapshot to Raft.
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta: snapshot_meta(self.shard, &meta),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
