//! The shard actor: owns one [`ShardState`] and serialises everything that touches it.
//!
//! Messages come from four places: the log writer thread (`Apply`, in log order, only after
//! the batch is durable), the query coordinator (`Query`, `Metrics`, `Dimensions`, `Stats`),
//! live subscriptions (`Watch`, `Unwatch`), and the actor's own timer (`Tick`: retention and periodic snapshots). Every message that
//! carries points carries a whole batch, never a single point.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::ShardBatch;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::snapshot;
use super::state::{Partial, ShardQuery, ShardState, ShardStats};
use super::watch::{Watch, Watchers};

pub type ShardRef = ActorRef<ShardMsg>;

/// Called once a snapshot covering `index` is durable: the log may drop what it covers.
pub type ReleaseFn = Arc<dyn Fn(u32, u64) + Send + Sync>;

pub enum ShardMsg {
    /// A durable batch at log `index`; `done` fires once it is applied (read-your-writes).
    Apply {
        index: u64,
        batch: ShardBatch,
        done: Option<oneshot::Sender<()>>,
    },
    Query(Arc<ShardQuery>, RpcReplyPort<Partial>),
    Metrics(RpcReplyPort<HashMap<String, u64>>),
    Dimensions(String, RpcReplyPort<HashMap<String, HashMap<String, u64>>>),
    Stats(RpcReplyPort<ShardStats>),
    /// The idempotency keys this shard remembers, with its share of each request's points.
    BatchIds(RpcReplyPort<Vec<(String, u32)>>),
    /// Retention and periodic snapshots; sent by the actor's own timer.
    Tick,
    /// Registers a live watch and answers its query as of now: later batches reach the
    /// watch as deltas (see `watch`).
    Watch(Arc<Watch>, RpcReplyPort<Partial>),
    Unwatch(u64),
    /// Write a snapshot now (shutdown); replies with the covered index.
    Snapshot(RpcReplyPort<Result<u64, String>>),
}

pub struct ShardArgs {
    pub state: ShardState,
    pub snapshot_dir: PathBuf,
    pub snapshot_every: Duration,
    pub tick: Duration,
    pub release: ReleaseFn,
}

pub struct Shard;

pub struct ShardActorState {
    state: ShardState,
    watchers: Watchers,
    snapshot_dir: PathBuf,
    snapshot_every: Duration,
    release: ReleaseFn,
    last_snapshot_index: u64,
    last_snapshot_at: Instant,
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
        let last = args.state.applied_index();
        Ok(ShardActorState {
            state: args.state,
            watchers: Watchers::default(),
            snapshot_dir: args.snapshot_dir,
            snapshot_every: args.snapshot_every,
            release: args.release,
            last_snapshot_index: last,
            last_snapshot_at: Instant::now(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Apply { index, batch, done } => {
                if index > st.state.applied_index() {
                    st.state.apply(index, &batch);
                    // Before the acknowledgement: a live dashboard hears of the point no
                    // later than the client that wrote it.
                    st.watchers.emit(st.state.shard(), &batch);
                }
                if let Some(done) = done {
                    // The requester may have gone (client hung up): the batch is applied anyway.
                    let _ = done.send(());
                }
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
            ShardMsg::BatchIds(reply) => {
                let _ = reply.send(st.state.batch_ids());
            }
            ShardMsg::Watch(w, reply) => {
                let partial = st.state.query(&w.query);
                st.watchers.add(w);
                let _ = reply.send(partial);
            }
            ShardMsg::Unwatch(id) => st.watchers.remove(id),
            ShardMsg::Tick => handle_tick(st).await,
            ShardMsg::Snapshot(reply) => {
                let _ = reply.send(take_snapshot(st).await);
            }
        }
        Ok(())
    }
}

async fn handle_tick(st: &mut ShardActorState) {
    st.state.evict(crate::now_ms());
    let due = st.last_snapshot_at.elapsed() >= st.snapshot_every;
    if due && st.state.applied_index() > st.last_snapshot_index {
        if let Err(err) = take_snapshot(st).await {
            // Not fatal: the log still holds everything; the next tick tries again.
            warn!(shard = st.state.shard(), cause = %err, "snapshot failed");
        }
    }
}

async fn take_snapshot(st: &mut ShardActorState) -> Result<u64, String> {
    let index = st.state.applied_index();
    let shard = st.state.shard();
    if index == st.last_snapshot_index {
        return Ok(index);
    }
    let started = Instant::now();
    let bytes = snapshot::encode(&st.state).map_err(|e| e.to_string())?;
    let dir = st.snapshot_dir.clone();
    let size = bytes.len();
    tokio::task::spawn_blocking(move || snapshot::write(&dir, shard, &bytes))
        .await
        .map_err(|e| format!("snapshot writer task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    st.last_snapshot_index = index;
    st.last_snapshot_at = Instant::now();
    (st.release)(shard, index);
    info!(
        shard,
        index,
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(index)
}
