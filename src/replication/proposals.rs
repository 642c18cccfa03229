//! Batches proposed to a shard this node leads, written together: while one entry of the
//! shard's log is being committed, the batches proposed meanwhile wait, and go as the next
//! entry, all of them (a [`ShardEntry`]).
//!
//! Under load many requests touch every shard at once. One log entry per request's share cost
//! each replica of the shard an append, a message, a log record and an apply per request —
//! work a replicated shard pays on three nodes, a single node once. Under 32 connections of
//! 1 000-point requests, entries of about five shares let one node take 39 % more points a
//! second and three nodes 45 % more (measured by hand, see the README; `cargo bench --bench
//! cluster` prints the shares per entry). A batch alone on an idle shard goes at once, as
//! before; only a busy shard's wait for its entry in flight is spent gathering the next.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use openraft::error::{Fatal, RaftError};
use openraft::Raft;
use protocol::{ShardBatch, ShardEntry};
use tokio::sync::{oneshot, RwLock};

use super::WriteError;
use crate::shard::group::ShardRaft;

/// The most points an entry gathers (a batch larger than this goes alone): entries stay far
/// below the log's and the transport's 64 MiB caps, and a follower that must catch up
/// receives them a few at a time.
const ENTRY_POINTS: usize = 100_000;

/// Entries of one shard in flight at once. One: the batches proposed while a shard's entry
/// waits for its followers go together as the next, rather than a second entry carrying
/// whichever batch came first. Against two (`cargo bench --bench cluster`, both binaries
/// alternating, twice): entries of 1.6 requests' shares instead of 1.2 under four
/// connections of 10 000 points, 13 instead of 7 under 32 of 1 000; with every leader on the
/// entry node the cluster's CPU per point 2.55–2.59x one node's instead of 2.69x (2.22–2.34x
/// instead of 2.39–2.50x); leaders balanced, no change; one node no slower.
const IN_FLIGHT: usize = 1;

/// One shard's proposals as its leader (this node) gathers them.
pub struct Queue {
    raft: Raft<ShardRaft>,
    /// The shard's gate (see `RaftGroups::gates`): held shared while an entry is written.
    gate: Arc<RwLock<()>>,
    waiting: Mutex<Waiting>,
    /// Entries written here (committed and applied), and the batches they carried.
    written: [AtomicU64; 2],
}

#[derive(Default)]
struct Waiting {
    batches: Vec<(ShardBatch, oneshot::Sender<Result<(), WriteError>>)>,
    /// Writer tasks running (each writes entries until nothing waits), at most
    /// [`IN_FLIGHT`].
    writers: usize,
}

impl Queue {
    pub fn new(raft: Raft<ShardRaft>, gate: Arc<RwLock<()>>) -> Arc<Self> {
        Arc::new(Self {
            raft,
            gate,
            waiting: Mutex::default(),
            written: Default::default(),
        })
    }

    /// Entries written here, and the batches they carried: (entries, batches).
    pub fn written(&self) -> (u64, u64) {
        (self.written[0].load(Relaxed), self.written[1].load(Relaxed))
    }

    /// Writes `batch` to the shard's log with the batches proposed beside it and returns
    /// once their entry is applied here, or openraft's answer why not (`ForwardToLeader`
    /// when this node does not lead the shard), the same for all of them. A caller that
    /// stops waiting before its batch is written takes it out: a write no one waits for is
    /// not made (it was never acknowledged, and its client retries).
    pub async fn write(self: &Arc<Self>, batch: ShardBatch) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.batches.push((batch, done));
            let start = w.writers < IN_FLIGHT;
            w.writers += start as usize;
            start
        };
        if start {
            // Its own task: a caller that gives up must not stop the others' writes.
            tokio::spawn(self.clone().run());
        }
        answer
            .await
            .unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }

    /// Writes entries while batches wait: each entry all that waited, up to
    /// [`ENTRY_POINTS`], in the order they came.
    async fn run(self: Arc<Self>) {
        loop {
            let (parts, dones): (Vec<ShardBatch>, Vec<_>) = {
                let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                w.batches.retain(|(_, done)| !done.is_closed());
                if w.batches.is_empty() {
                    w.writers -= 1;
                    return;
                }
                let mut points = 0;
                let take = w
                    .batches
                    .iter()
                    .take_while(|(b, _)| {
                        points += b.points.len();
                        points <= ENTRY_POINTS
                    })
                    .count()
                    .max(1);
                w.batches.drain(..take).unzip()
            };
            let shares = parts.len() as u64;
            let result = {
                let _gate = self.gate.read().await;
                self.raft
                    .client_write(ShardEntry::new(parts))
                    .await
                    .map(|_| ())
            };
            if result.is_ok() {
                self.written[0].fetch_add(1, Relaxed);
                self.written[1].fetch_add(shares, Relaxed);
            }
            for done in dones {
                let _ = done.send(result.clone());
            }
        }
    }
}
