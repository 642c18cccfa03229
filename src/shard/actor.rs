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

use protocol::ShardBatch;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::info;

use super::snapshot;
use super::state::{Partial, ShardQuery, ShardState, ShardStats};
use super::watch::{Watch, Watchers};

pub type ShardRef = ActorRef<ShardMsg>;

pub enum ShardMsg {
    /// Committed Raft entries, in log order: a batch, or `None` for an entry without points
    /// (blank, membership). `raft_meta` is the group's bookkeeping after the last of them.
    /// `done` fires once they are applied (read-your-writes).
    ApplyEntries {
        entries: Vec<(u64, Option<ShardBatch>)>,
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
}

pub struct ShardArgs {
    pub state: ShardState,
    pub snapshot_dir: PathBuf,
    pub tick: Duration,
}

pub struct Shard;

pub struct ShardActorState {
    state: ShardState,
    watchers: Watchers,
    snapshot_dir: PathBuf,
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
            watchers: Watchers::default(),
            snapshot_dir: args.snapshot_dir,
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
                for (index, batch) in entries {
                    match batch {
                        Some(batch) => {
                            if st.state.apply(index, &batch) {
                                // Before the acknowledgement: a live dashboard hears of the
                                // point no later than the client that wrote it.
                                st.watchers.emit(st.state.shard(), &batch);
                            }
                        }
                        None => st.state.advance(index),
                    }
                }
                st.state.set_raft_meta(raft_meta);
                // The requester may have gone: the entries are applied anyway.
                let _ = done.send(());
            }
            ShardMsg::Query(q, reply) => {
                let _ = reply.send(st.state.query(&q));
            }
            ShardMsg::Metrics(reply) => {
                let _ = reply.send(st.state.metrics());
            }
            ShardMsg::Dimensions(metric, reply) => {
                let _ = reply.send(st.state.dimensions(&metric));
            }
            ShardMsg::Stats(reply) => {
                let _ = reply.send(st.state.stats());
            }
            ShardMsg::SeriesHashes(reply) => {
                let hashes = st
                    .state
                    .series_hashes()
                    .map(|(m, h)| (m.to_owned(), h))
                    .collect();
                let _ = reply.send(hashes);
            }
            ShardMsg::RaftMeta(reply) => {
                let _ = reply.send(st.state.raft_meta().to_vec());
            }
            ShardMsg::Watch(w, reply) => {
                let partial = st.state.query(&w.query);
                st.watchers.add(w);
                let _ = reply.send(partial);
            }
            ShardMsg::Unwatch(id) => st.watchers.remove(id),
            ShardMsg::Tick => st.state.evict(crate::now_ms()),
            ShardMsg::Snapshot(reply) => {
                let _ = reply.send(take_snapshot(st).await);
            }
            ShardMsg::Install(state, reply) => {
                let _ = reply.send(install(st, *state).await);
            }
        }
        Ok(())
    }
}

/// Streams `state` to its temporary file on the actor (the actor owns the state), then makes
/// it durable off the runtime's threads. Returns the snapshot's size.
async fn write_snapshot(dir: &Path, shard: u32, state: &ShardState) -> Result<u64, String> {
    let pending = snapshot::write_tmp(dir, shard, state).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || pending.commit())
        .await
        .map_err(|e| format!("snapshot writer task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Writes the shard's snapshot; answers the Raft bookkeeping it records.
async fn take_snapshot(st: &mut ShardActorState) -> Result<Vec<u8>, String> {
    let index = st.state.applied_index();
    let shard = st.state.shard();
    let started = Instant::now();
    let size = write_snapshot(&st.snapshot_dir, shard, &st.state).await?;
    info!(
        shard,
        index,
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(st.state.raft_meta().to_vec())
}

async fn install(st: &mut ShardActorState, state: ShardState) -> Result<(), String> {
    let shard = st.state.shard();
    if state.shard() != shard {
        return Err(format!(
            "snapshot of shard {} sent to shard {shard}",
            state.shard()
        ));
    }
    write_snapshot(&st.snapshot_dir, shard, &state).await?;
    info!(
        shard,
        index = state.applied_index(),
        "installed a snapshot from the leader"
    );
    st.state = state;
    Ok(())
}
