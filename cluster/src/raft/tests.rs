//! openraft's storage test suite against [`LogStore`], plus the log store's own edge cases.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::RaftLogReader;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{LogStore, Member};
use crate::log::{LogConfig, SharedLog};

openraft::declare_raft_types!(
    pub TestConfig:
        D = u64,
        R = u64,
        Node = Member,
);

type NodeId = u64;

pub(super) fn open_log(dir: &std::path::Path) -> Arc<SharedLog> {
    let cfg = LogConfig {
        segment_bytes: 4096,
        ..LogConfig::new(dir)
    };
    let (log, _) = SharedLog::open(cfg).expect("open");
    Arc::new(log)
}

/// A state machine that records the values applied, in order.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct Sum {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    pub(super) values: Vec<u64>,
}

pub(super) type Stored = Option<(SnapshotMeta<NodeId, Member>, Vec<u8>)>;

/// The builder shares `snapshot` with its machine, so a built snapshot becomes the current one;
/// `state` is shared with the test that made the machine.
#[derive(Default)]
pub(super) struct SumMachine {
    pub(super) state: Arc<std::sync::Mutex<Sum>>,
    pub(super) snapshot: Arc<std::sync::Mutex<Stored>>,
}

impl SumMachine {
    /// A machine restarted from its last snapshot (what a real one reads from disk).
    pub(super) fn restart(snapshot: Arc<std::sync::Mutex<Stored>>) -> Self {
        let state = match &*snapshot.lock().expect("snapshot") {
            Some((_, bytes)) => protocol::codec::decode(bytes).expect("decode"),
            None => Sum::default(),
        };
        Self {
            state: Arc::new(std::sync::Mutex::new(state)),
            snapshot,
        }
    }

    fn sum(&self) -> std::sync::MutexGuard<'_, Sum> {
        self.state.lock().expect("state")
    }
}

impl RaftSnapshotBuilder<TestConfig> for SumMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<NodeId>> {
        let state = self.sum().clone();
        let bytes = protocol::codec::encode(&state).expect("encode");
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{:?}", state.last_applied),
        };
        *self.snapshot.lock().expect("lock") = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TestConfig> for SumMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let s = self.sum();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TestConfig>> + Send,
    {
        let mut out = Vec::new();
        let mut s = self.sum();
        for e in entries {
            s.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(v) => s.values.push(v),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(e.log_id), m)
                }
            }
            out.push(s.values.len() as u64);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        SumMachine {
            state: Arc::new(std::sync::Mutex::new(self.sum().clone())),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        *self.sum() = protocol::codec::decode(&bytes).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Snapshot(None),
                openraft::ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        })?;
        *self.snapshot.lock().expect("lock") = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TestConfig>>, StorageError<NodeId>> {
        let stored = self.snapshot.lock().expect("lock").clone();
        Ok(stored.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, SumMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, SumMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_log(dir.path());
        Ok((dir, LogStore::new(log, 7), SumMachine::default()))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

fn entry(term: u64, index: u64, v: u64) -> openraft::Entry<TestConfig> {
    openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(v),
    }
}

async fn append(store: &mut LogStore<TestConfig>, entries: Vec<openraft::Entry<TestConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    store.blocking_append(entries).await.expect("append");
}

/// Entries, truncation, purge, vote and committed position survive a reopen, including after
/// segments rolled and the oldest were deleted; old entries are read back from disk.
#[tokio::test]
async fn reopen_keeps_entries_vote_purge_and_truncation() {
    use openraft::{CommittedLeaderId, Vote};
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = open_log(dir.path());
        let mut a = LogStore::<TestConfig>::new(log.clone(), 1);
        let mut b = LogStore::<TestConfig>::new(log.clone(), 2);
        a.save_vote(&Vote::new(3, 9)).await.expect("vote");
        // Enough entries to roll many 4 KiB segments.
        append(&mut a, (1..=400).map(|i| entry(1, i, i)).collect()).await;
        append(&mut b, (1..=10).map(|i| entry(1, i, 100 + i)).collect()).await;
        // A follower's conflicting suffix replaced by a new leader's entries.
        a.truncate(LogId::new(CommittedLeaderId::new(1, 0), 391))
            .await
            .expect("truncate");
        append(&mut a, (391..=395).map(|i| entry(2, i, 1000 + i)).collect()).await;
        a.purge(LogId::new(CommittedLeaderId::new(1, 0), 300))
            .await
            .expect("purge");
        b.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 0), 10)))
            .await
            .expect("committed");
        // More writes roll segments, and the purge lets the oldest go.
        append(&mut b, (11..=300).map(|i| entry(1, i, i)).collect()).await;
        let segments = std::fs::read_dir(dir.path()).expect("ls").count();
        assert!(
            segments < 30,
            "released segments are deleted ({segments} left)"
        );
    }
    let log = open_log(dir.path());
    let mut a = LogStore::<TestConfig>::new(log.clone(), 1);
    let mut b = LogStore::<TestConfig>::new(log.clone(), 2);
    assert_eq!(a.read_vote().await.expect("vote"), Some(Vote::new(3, 9)));
    let state = a.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(300));
    assert_eq!(
        state.last_log_id,
        Some(LogId::new(CommittedLeaderId::new(2, 0), 395))
    );
    let got: BTreeMap<u64, u64> = a
        .try_get_log_entries(301..)
        .await
        .expect("read")
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(v) => (e.log_id.index, v),
            _ => panic!("unexpected payload"),
        })
        .collect();
    assert_eq!(got.len(), 95);
    assert_eq!(got[&390], 390);
    assert_eq!(got[&391], 1391);
    assert_eq!(
        b.read_committed()
            .await
            .expect("committed")
            .map(|l| l.index),
        Some(10)
    );
    assert_eq!(b.try_get_log_entries(..).await.expect("read").len(), 300);
}

openraft::declare_raft_types!(
    pub BatchConfig:
        D = protocol::ShardEntry,
        R = (),
        Node = Member,
);

fn batch_entry(term: u64, index: u64, batch: protocol::ShardBatch) -> openraft::Entry<BatchConfig> {
    openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(batch.into()),
    }
}

#[test]
fn an_entry_is_encoded_once_and_its_bytes_travel_with_it() {
    use super::EncodedEntry;
    let batch = protocol::ShardBatch {
        shard: 3,
        received_ms: 42,
        points: vec![protocol::DataPoint {
            metric: "m".into(),
            timestamp_ms: 1,
            value: 2.5,
            dimensions: vec![("k".into(), "v".into())],
        }]
        .into(),
        batch_id: Some("key".into()),
        hashes: Default::default(),
        encoded: Default::default(),
    };
    let first = batch_entry(1, 5, batch.clone());
    let bytes = first.encoded().expect("encode");
    assert_eq!(
        &*bytes,
        protocol::codec::encode(&first).expect("encode").as_slice()
    );
    // Kept: the same allocation the next time.
    assert!(Arc::ptr_eq(&bytes, &first.encoded().expect("again")));
    // The same batch proposed again is another entry: never the first one's bytes.
    let again = batch_entry(2, 6, batch.clone());
    assert_eq!(
        &*again.encoded().expect("encode"),
        protocol::codec::encode(&again).expect("encode").as_slice()
    );
    // A batch whose own encoding was kept (by the node that split the request, or received
    // with a forward) makes an entry of exactly the bytes serde writes, for any log id.
    for (term, index) in [(1, 5), (300, 70_000), (u64::MAX, u64::MAX)] {
        let fresh = protocol::ShardBatch {
            encoded: Default::default(),
            ..batch.clone()
        };
        let kept = fresh.batch_bytes().expect("batch bytes");
        assert_eq!(
            &*kept,
            protocol::codec::encode(&fresh).expect("encode").as_slice()
        );
        let entry = batch_entry(term, index, fresh);
        assert_eq!(
            &*entry.encoded().expect("encode"),
            protocol::codec::encode(&entry).expect("encode").as_slice()
        );
    }

    let rpc = openraft::raft::AppendEntriesRequest::<BatchConfig> {
        vote: openraft::Vote::new_committed(2, 1),
        prev_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 4)),
        entries: vec![batch_entry(1, 5, batch.clone()), batch_entry(2, 6, batch)],
        leader_commit: None,
    };
    let body = super::encode_append(&rpc).expect("encode");
    let back = super::decode_append::<BatchConfig>(&body).expect("decode");
    assert_eq!(back.vote, rpc.vote);
    assert_eq!(back.prev_log_id, rpc.prev_log_id);
    assert_eq!(back.leader_commit, rpc.leader_commit);
    assert_eq!(back.entries, rpc.entries);
    for (got, sent) in back.entries.iter().zip(&rpc.entries) {
        assert_eq!(got.encoded().expect("kept"), sent.encoded().expect("kept"));
    }
    // Every kind of entry decodes as serde would decode it: the batch through its own
    // decoder, the others through serde.
    let log_id = LogId::new(openraft::CommittedLeaderId::new(3, 2), 9);
    let kinds: Vec<openraft::Entry<BatchConfig>> = vec![
        rpc.entries[0].clone(),
        openraft::Entry {
            log_id,
            payload: EntryPayload::Blank,
        },
        openraft::Entry {
            log_id,
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![std::collections::BTreeSet::from([1, 2, 3])],
                None,
            )),
        },
    ];
    for entry in kinds {
        let bytes = protocol::codec::encode(&entry).expect("encode");
        let back = openraft::Entry::<BatchConfig>::decode(&bytes.clone().into()).expect("decode");
        assert_eq!(back, entry);
        assert!(openraft::Entry::<BatchConfig>::decode(&bytes[..bytes.len() - 1].into()).is_err());
    }
    // A cut or garbled body is an error, never a panic.
    for cut in 0..body.len() {
        let _ = super::decode_append::<BatchConfig>(&body[..cut]);
    }
    assert!(super::decode_append::<BatchConfig>(&body[..body.len() - 1]).is_err());
    assert!(super::decode_append::<BatchConfig>(&[]).is_err());
}
