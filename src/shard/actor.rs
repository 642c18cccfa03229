//! The shard actor: owns one [`ShardState`] and serialises everything that touches it.
//!
//! Messages come from four places: the shard's Raft state machine (`ApplyEntries` in log
//! order, once committed; `Snapshot`, `Install`, `RaftMeta`), the query coordinator (`Query`,
//! `Metrics`, `Dimensions`, `Stats`), live subscriptions (`Watch`, `Unwatch`), and the actor's
//! own timer (`Tick`: retention). Every message that carries points carries whole batches,
//! never a single point.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::ShardEntry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::info;

use super::snapshot;
use super::state::{Partial, ShardQuery, ShardState, ShardStats};
use super::watch::{Watch, Watchers};

pub type ShardRef = ActorRef<ShardMsg>;

pub enum ShardMsg {
    /// Committed Raft entries, in log order: batches, or `None` for an entry without points
    /// (blank, membership). `raft_meta` is the group's bookkeeping after the last of them.
    /// `done` fires once they are applied (read-your-writes).
    ApplyEntries {
        entries: Vec<(u64, Option<ShardEntry>)>,
        raft_meta: Vec<u8>,
        done: oneshot::Sender<()>,
    },
    Query(Arc<ShardQuery>, RpcReplyPort<Partial>),
    Metrics(RpcReplyPort<HashMap<String, u64>>),
    Dimensions(String, RpcReplyPort<HashMap<String, HashMap<String, u64>>>),
    Stats(RpcReplyPort<ShardStats>),
    /// Every series' metric and hash (for the cardinality limit at start).
    SeriesHashes(RpcReplyPort<Vec<(String, u64)>>),
    /// The group's bookkeeping as of the applied index.
    RaftMeta(RpcReplyPort<Vec<u8>>),
    /// Retention; sent by the actor's own timer.
    Tick,
    /// Registers a live watch and answers its query as of now: later batches reach the
    /// watch as deltas (see `watch`).
    Watch(Arc<Watch>, RpcReplyPort<Partial>),
    Unwatch(u64),
    /// Writes a snapshot of the state as applied now and replies with the Raft bookkeeping
    /// it holds.
    Snapshot(RpcReplyPort<Result<Vec<u8>, String>>),
    /// Replaces the state with one received from the group's leader (written to disk first).
    Install(Box<ShardState>, RpcReplyPort<Result<(), String>>),
    /// Writes a snapshot and drops the state from memory, keeping only its position (applied
    /// index, Raft bookkeeping): for a copy of a shard this node no longer serves (see
    /// `RaftGroups::hibernate_idle`). Any message that needs the state reads it back from the
    /// snapshot first. Replies whether the shard is asleep.
    Hibernate(RpcReplyPort<Result<(), String>>),
}

pub struct ShardArgs {
    pub state: ShardState,
    pub snapshot_dir: PathBuf,
    pub tick: Duration,
}

pub struct Shard;

pub struct ShardActorState {
    /// While `asleep`, a stand-in that holds only the applied index and Raft bookkeeping of
    /// the snapshot on disk, which holds the rest.
    state: ShardState,
    asleep: bool,
    watchers: Watchers,
    snapshot_dir: PathBuf,
    /// The applied index of the snapshot this actor last wrote (or installed): asked again
    /// at that index — a clean stop asks through Raft, then once more — it writes nothing.
    written: Option<u64>,
}

impl ShardActorState {
    /// The state, read back from its snapshot if the shard is asleep.
    fn awake(&mut self) -> Result<&mut ShardState, String> {
        if self.asleep {
            let shard = self.state.shard();
            let state = snapshot::read(&self.snapshot_dir, shard)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("shard {shard} is asleep but has no snapshot"))?;
            if state.applied_index() != self.state.applied_index() {
                return Err(format!(
                    "shard {shard} fell asleep at index {} but its snapshot is at {}",
                    self.state.applied_index(),
                    state.applied_index()
                ));
            }
            self.state = state;
            self.asleep = false;
            info!(shard, "shard woke up (read back from its snapshot)");
        }
        Ok(&mut self.state)
    }
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardActorState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.tick, || ShardMsg::Tick);
        Ok(ShardActorState {
            state: args.state,
            asleep: false,
            watchers: Watchers::default(),
            snapshot_dir: args.snapshot_dir,
            written: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::ApplyEntries {
                entries,
                raft_meta,
                done,
            } => {
                st.awake()?;
                let state = &mut st.state;
                for (index, entry) in entries {
                    match entry {
                        Some(entry) => {
                            // Before the acknowledgement: a live dashboard hears of the point
                            // no later than the client that wrote it.
                            for batch in state.apply(index, &entry) {
                                st.watchers.emit(state.shard(), batch);
                            }
                        }
                        None => state.advance(index),
                    }
                }
                state.set_raft_meta(raft_meta);
                // The requester may have gone: the entries are applied anyway.
                let _ = done.send(());
            }
            ShardMsg::Query(q, reply) => {
                let _ = reply.send(st.awake()?.query(&q));
            }
            ShardMsg::Metrics(reply) => {
                let _ = reply.send(st.awake()?.metrics());
            }
            ShardMsg::Dimensions(metric, reply) => {
                let _ = reply.send(st.awake()?.dimensions(&metric));
            }
            ShardMsg::Stats(reply) => {
                // Asleep, the stand-in counts nothing held in memory: what the stats are for.
                let mut stats = st.state.stats();
                stats.asleep = st.asleep as u64;
                let _ = reply.send(stats);
            }
            ShardMsg::SeriesHashes(reply) => {
                let hashes = st
                    .awake()?
                    .series_hashes()
                    .map(|(m, h)| (m.to_owned(), h))
                    .collect();
                let _ = reply.send(hashes);
            }
            ShardMsg::RaftMeta(reply) => {
                let _ = reply.send(st.state.raft_meta().to_vec());
            }
            ShardMsg::Watch(w, reply) => {
                let partial = st.awake()?.query(&w.query);
                st.watchers.add(w);
                let _ = reply.send(partial);
            }
            ShardMsg::Unwatch(id) => st.watchers.remove(id),
            ShardMsg::Tick => {
                if !st.asleep {
                    st.state.evict(crate::now_ms());
                }
            }
            ShardMsg::Snapshot(reply) => {
                let _ = reply.send(if st.asleep {
                    // The snapshot it fell asleep on is the state as applied.
                    Ok(st.state.raft_meta().to_vec())
                } else {
                    take_snapshot(st).await
                });
            }
            ShardMsg::Install(state, reply) => {
                let _ = reply.send(install(st, *state).await);
            }
            ShardMsg::Hibernate(reply) => {
                let _ = reply.send(hibernate(st).await);
            }
        }
        Ok(())
    }
}

/// Streams `state` to its temporary file on the actor (the actor owns the state), then makes
/// it durable off the runtime's threads. Returns the snapshot's size.
async fn write_snapshot(dir: &Path, shard: u32, state: &mut ShardState) -> Result<u64, String> {
    let pending = snapshot::write_tmp(dir, shard, state).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || pending.commit())
        .await
        .map_err(|e| format!("snapshot writer task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Writes the shard's snapshot; answers the Raft bookkeeping it records.
async fn take_snapshot(st: &mut ShardActorState) -> Result<Vec<u8>, String> {
    let index = st.state.applied_index();
    if st.written == Some(index) {
        return Ok(st.state.raft_meta().to_vec());
    }
    let shard = st.state.shard();
    let started = Instant::now();
    let size = write_snapshot(&st.snapshot_dir, shard, &mut st.state).await?;
    st.written = Some(index);
    info!(
        shard,
        index,
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(st.state.raft_meta().to_vec())
}

async fn install(st: &mut ShardActorState, mut state: ShardState) -> Result<(), String> {
    let shard = st.state.shard();
    if state.shard() != shard {
        return Err(format!(
            "snapshot of shard {} sent to shard {shard}",
            state.shard()
        ));
    }
    write_snapshot(&st.snapshot_dir, shard, &mut state).await?;
    st.written = Some(state.applied_index());
    info!(
        shard,
        index = state.applied_index(),
        "installed a snapshot from the leader"
    );
    st.state = state;
    st.asleep = false;
    Ok(())
}

/// See [`ShardMsg::Hibernate`].
async fn hibernate(st: &mut ShardActorState) -> Result<(), String> {
    if st.asleep {
        return Ok(());
    }
    take_snapshot(st).await?;
    let stats = st.state.stats();
    let mut stand_in = ShardState::new(st.state.shard(), st.state.layout().clone());
    stand_in.advance(st.state.applied_index());
    stand_in.set_raft_meta(st.state.raft_meta().to_vec());
    st.state = stand_in;
    st.asleep = true;
    info!(
        shard = st.state.shard(),
        series = stats.series,
        bytes = stats.raw_bytes + stats.rollup_bytes,
        "shard asleep: this node no longer serves it; its copy stays on disk only"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::state::Layout;
    use protocol::{DataPoint, ShardBatch};

    fn batch(shard: u32, host: &str, ts: i64) -> ShardBatch {
        ShardBatch {
            shard,
            received_ms: ts,
            points: vec![DataPoint {
                metric: "cpu".into(),
                timestamp_ms: ts,
                value: 1.0,
                dimensions: vec![("host".into(), host.into())],
            }]
            .into(),
            batch_id: None,
            hashes: Default::default(),
            encoded: Default::default(),
        }
    }

    async fn apply(actor: &ShardRef, index: u64, b: ShardBatch) {
        let (done, wait) = oneshot::channel();
        actor
            .cast(ShardMsg::ApplyEntries {
                entries: vec![(index, Some(b.into()))],
                raft_meta: format!("meta-{index}").into_bytes(),
                done,
            })
            .expect("cast");
        wait.await.expect("applied");
    }

    /// A shard actor for `shard` keeping its snapshots in `dir` (no ticks during a test).
    async fn spawn(shard: u32, dir: &Path) -> ShardRef {
        let args = ShardArgs {
            state: ShardState::new(shard, Layout::default()),
            snapshot_dir: dir.to_path_buf(),
            tick: Duration::from_secs(3600),
        };
        Actor::spawn(None, Shard, args).await.expect("spawn").0
    }

    async fn ask<T: Send + 'static>(
        actor: &ShardRef,
        msg: impl FnOnce(RpcReplyPort<T>) -> ShardMsg,
    ) -> T {
        match actor.call(msg, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(v)) => v,
            _ => panic!("the shard did not answer"),
        }
    }

    #[tokio::test]
    async fn an_asleep_shard_holds_nothing_in_memory_and_wakes_with_every_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actor = spawn(3, dir.path()).await;
        apply(&actor, 1, batch(3, "a", 1_000)).await;
        apply(&actor, 2, batch(3, "b", 2_000)).await;
        assert_eq!(ask(&actor, ShardMsg::Stats).await.series, 2);

        ask(&actor, ShardMsg::Hibernate).await.expect("hibernate");
        let stats = ask(&actor, ShardMsg::Stats).await;
        assert_eq!((stats.series, stats.asleep, stats.applied_index), (0, 1, 2));
        assert_eq!(ask(&actor, ShardMsg::RaftMeta).await, b"meta-2");
        // Asleep, a snapshot request leaves the snapshot it fell asleep on as it is.
        let file = snapshot::path(dir.path(), 3);
        let before = std::fs::read(&file).expect("snapshot file");
        assert_eq!(
            ask(&actor, ShardMsg::Snapshot).await.expect("snapshot"),
            b"meta-2"
        );
        assert_eq!(std::fs::read(&file).expect("snapshot file"), before);

        // A read wakes it with everything it had.
        let metrics = ask(&actor, ShardMsg::Metrics).await;
        assert_eq!(metrics.get("cpu"), Some(&2));
        ask(&actor, ShardMsg::Hibernate).await.expect("hibernate");
        // So does an entry its group applies: nothing from before sleep is lost.
        apply(&actor, 3, batch(3, "c", 3_000)).await;
        let stats = ask(&actor, ShardMsg::Stats).await;
        assert_eq!((stats.series, stats.asleep, stats.applied_index), (3, 0, 3));
        assert_eq!(ask(&actor, ShardMsg::RaftMeta).await, b"meta-3");

        // A damaged snapshot is an error, not an empty shard.
        ask(&actor, ShardMsg::Hibernate).await.expect("hibernate");
        std::fs::write(&file, b"garbage").expect("damage");
        assert!(actor
            .call(ShardMsg::Metrics, Some(Duration::from_secs(10)))
            .await
            .map(|r| !r.is_success())
            .unwrap_or(true));
    }

    #[tokio::test]
    async fn a_snapshot_asked_for_twice_at_one_index_is_written_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actor = spawn(4, dir.path()).await;
        apply(&actor, 1, batch(4, "a", 1_000)).await;
        let file = snapshot::path(dir.path(), 4);
        assert_eq!(
            ask(&actor, ShardMsg::Snapshot).await.expect("snapshot"),
            b"meta-1"
        );
        assert!(snapshot::read(dir.path(), 4).expect("read").is_some());
        // A clean stop asks through Raft, then once more: the second writes nothing.
        std::fs::write(&file, b"stands for the snapshot at index 1").expect("mark");
        assert_eq!(
            ask(&actor, ShardMsg::Snapshot).await.expect("snapshot"),
            b"meta-1"
        );
        assert_eq!(
            std::fs::read(&file).expect("snapshot file"),
            b"stands for the snapshot at index 1"
        );
        // One applied entry later, it is written again.
        apply(&actor, 2, batch(4, "b", 2_000)).await;
        assert_eq!(
            ask(&actor, ShardMsg::Snapshot).await.expect("snapshot"),
            b"meta-2"
        );
        let back = snapshot::read(dir.path(), 4)
            .expect("read")
            .expect("a snapshot");
        assert_eq!(back.applied_index(), 2);
    }
}
