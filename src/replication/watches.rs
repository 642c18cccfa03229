//! Live watches over every shard, wherever its replicas are. A shard this node hosts gets the
//! watch directly (`ShardMsg::Watch`); the shards it does not host are watched through a node
//! that does — a streaming request (`Channel::Watch`) whose first answer is the query's
//! result as of registration and whose later answers are the deltas of applied batches.
//!
//! A remote watch ends when its node dies, falls behind (its queue of deltas overflows: it
//! never holds up the shard that emits them), or stops hosting a shard (rebalanced away).
//! The watcher then hears `lost` and watches again from scratch: a new snapshot replaces what
//! the lost link had contributed, so nothing is missed or counted twice.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use protocol::cluster::{Channel, Request, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use super::{unwrap_call, RaftGroups};
use crate::error::{Error, Result};
use crate::shard::{Partial, ShardMsg, ShardQuery, Watch};

/// Told when a watch lost part of its shards (a remote link ended); the watcher registers
/// again.
pub type LostSink = Arc<dyn Fn() + Send + Sync>;

/// `Channel::Watch` body.
#[derive(Debug, Serialize, Deserialize)]
struct WatchRequest {
    shards: Vec<u32>,
    query: ShardQuery,
}

/// Deltas a remote watch may have waiting to be sent before it gives up (and the watcher
/// starts over).
const WATCH_QUEUE: usize = 4096;
/// How often a node serving a remote watch checks that it still hosts the watched shards.
const HOSTING_CHECK: Duration = Duration::from_secs(1);
/// How long opening a remote watch may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The shards for live subscriptions: cheap to clone, and holding it does not keep the
/// engine from shutting down.
#[derive(Clone)]
pub struct ShardSet {
    groups: Weak<RaftGroups>,
    /// The tasks reading each watch's remote links, by watch id.
    links: Arc<DashMap<u64, Vec<tokio::task::AbortHandle>>>,
}

impl ShardSet {
    pub fn new(groups: &Arc<RaftGroups>) -> Self {
        Self {
            groups: Arc::downgrade(groups),
            links: Arc::new(DashMap::new()),
        }
    }

    /// Registers a live watch on every shard and returns the merged answer to its query as
    /// of registration; from then on every shard's deltas reach `watch.sink`. If a remote
    /// part of the watch ends, `lost` is called once (after which the caller unwatches and
    /// watches again).
    pub async fn watch(&self, watch: Watch, lost: LostSink) -> Result<Partial> {
        let groups = self
            .groups
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the node is shutting down".into()))?;
        let sketch = watch.query.sketch;
        let (local, remote): (Vec<u32>, Vec<u32>) =
            (0..groups.rafts.len() as u32).partition(|&s| groups.hosts(s));
        let w = Arc::new(watch);
        let mut merged = match groups.watch_local(&local, &w).await {
            Ok(p) => p,
            Err(e) => {
                self.unwatch(w.id);
                return Err(e);
            }
        };
        // A shard watched here that this node stops hosting (rebalanced away) stops applying
        // batches: that is a lost link too.
        if !local.is_empty() {
            let weak = self.groups.clone();
            let lost = lost.clone();
            let task = tokio::spawn(async move {
                let mut check = tokio::time::interval(HOSTING_CHECK);
                loop {
                    check.tick().await;
                    let Some(groups) = weak.upgrade() else { return };
                    if local.iter().any(|&s| !groups.hosts(s)) {
                        lost();
                        return;
                    }
                }
            });
            self.links
                .entry(w.id)
                .or_default()
                .push(task.abort_handle());
        }
        if !remote.is_empty() {
            match self.watch_remote(&groups, remote, &w, lost).await {
                Ok(partials) => {
                    for p in partials {
                        merge_into(&mut merged, p, sketch);
                    }
                }
                Err(e) => {
                    self.unwatch(w.id);
                    return Err(e);
                }
            }
        }
        Ok(merged)
    }

    /// Opens one link per node for the shards this node does not host (each at its leader
    /// if known, else another replica), and starts a task per link relaying its deltas.
    async fn watch_remote(
        &self,
        groups: &Arc<RaftGroups>,
        shards: Vec<u32>,
        watch: &Arc<Watch>,
        lost: LostSink,
    ) -> Result<Vec<Partial>> {
        let placement = groups.placement();
        let mut by_node: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for s in shards {
            let seen = groups.seen(s).unwrap_or_default();
            let node = seen
                .leader
                .into_iter()
                .chain(seen.replicas.iter().copied())
                .chain(
                    placement
                        .targets
                        .get(s as usize)
                        .into_iter()
                        .flatten()
                        .copied(),
                )
                .find(|n| *n != groups.node_id)
                .ok_or_else(|| Error::Unavailable(format!("shard {s}: no node hosts it; retry")))?;
            by_node.entry(node).or_default().push(s);
        }
        let opens = by_node.into_iter().map(|(node, shards)| {
            let addr = groups
                .address(node)
                .and_then(|m| m.quic.parse::<SocketAddr>().ok());
            let transport = groups.transport.clone();
            let query = watch.query.clone();
            async move {
                let addr =
                    addr.ok_or_else(|| Error::Unavailable(format!("node {node} has no address")))?;
                let body = protocol::codec::encode(&WatchRequest { shards, query })
                    .map_err(|e| Error::Internal(e.to_string()))?;
                let request = Request {
                    channel: Channel::Watch,
                    group: 0,
                    body,
                };
                let (first, incoming) = transport
                    .open_stream(addr, &request, OPEN_TIMEOUT)
                    .await
                    .map_err(|e| {
                    Error::Unavailable(format!("live watch at node {node}: {e}"))
                })?;
                let snapshot: Partial = protocol::codec::decode(&first)
                    .map_err(|e| Error::Internal(format!("live watch answer: {e}")))?;
                Ok::<_, Error>((snapshot, incoming))
            }
        });
        let mut partials = Vec::new();
        let mut failed = None;
        let once = Arc::new(AtomicBool::new(false));
        for opened in futures_util::future::join_all(opens).await {
            match opened {
                Ok((snapshot, mut incoming)) => {
                    partials.push(snapshot);
                    let sink = watch.sink.clone();
                    let lost = lost.clone();
                    let once = once.clone();
                    let task = tokio::spawn(async move {
                        let ended = loop {
                            match incoming.next().await {
                                Ok(Some(bytes)) => match protocol::codec::decode::<Partial>(&bytes)
                                {
                                    Ok(delta) => sink(u32::MAX, delta),
                                    Err(e) => break format!("bad delta: {e}"),
                                },
                                Ok(None) => break "ended by the node".to_string(),
                                Err(e) => break e.to_string(),
                            }
                        };
                        debug!(cause = %ended, "remote live watch ended");
                        if !once.swap(true, Ordering::Relaxed) {
                            lost();
                        }
                    });
                    self.links
                        .entry(watch.id)
                        .or_default()
                        .push(task.abort_handle());
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(partials),
        }
    }

    pub fn unwatch(&self, id: u64) {
        if let Some((_, links)) = self.links.remove(&id) {
            for link in links {
                link.abort();
            }
        }
        if let Some(groups) = self.groups.upgrade() {
            groups.unwatch_local(id);
        }
    }
}

fn merge_into(acc: &mut Partial, partial: Partial, sketch: bool) {
    for (group, run) in partial {
        crate::shard::state::merge_runs(acc.entry(group).or_default(), run, sketch);
    }
}

impl RaftGroups {
    /// Registers `watch` on this node's replicas of `shards`; their answers merged.
    async fn watch_local(&self, shards: &[u32], watch: &Arc<Watch>) -> Result<Partial> {
        let calls = shards
            .iter()
            .filter_map(|&s| self.shards.get(s as usize))
            .map(|actor| {
                let w = watch.clone();
                actor.call(|reply| ShardMsg::Watch(w, reply), Some(self.query_timeout))
            });
        let mut merged: Partial = HashMap::new();
        let mut failed = None;
        for answer in futures_util::future::join_all(calls).await {
            match unwrap_call(answer) {
                Ok(partial) => merge_into(&mut merged, partial, watch.query.sketch),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(merged),
        }
    }

    fn unwatch_local(&self, id: u64) {
        for s in &self.shards {
            // A stopped shard has no watches left to remove.
            let _ = s.cast(ShardMsg::Unwatch(id));
        }
    }

    /// Serves another node's live watch (`Channel::Watch`): the snapshot, then each delta,
    /// until the caller goes away, the deltas back up past [`WATCH_QUEUE`], or this node
    /// stops hosting one of the shards; each end but the first is an error the caller
    /// answers by watching again.
    pub async fn serve_watch(&self, body: &[u8], out: mpsc::Sender<Response>) {
        let refuse = |message: String, retry: bool| Response::Err { message, retry };
        let req: WatchRequest = match protocol::codec::decode(body) {
            Ok(r) => r,
            Err(e) => {
                let _ = out
                    .send(refuse(format!("malformed watch request: {e}"), false))
                    .await;
                return;
            }
        };
        if req.shards.len() > self.rafts.len() {
            let _ = out
                .send(refuse(
                    format!(
                        "a watch names {} shards; there are {}",
                        req.shards.len(),
                        self.rafts.len()
                    ),
                    false,
                ))
                .await;
            return;
        }
        if let Some(s) = req.shards.iter().find(|&&s| !self.hosts(s)) {
            let _ = out
                .send(refuse(format!("this node does not host shard {s}"), true))
                .await;
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Partial>(WATCH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let full = overflow.clone();
        let watch = Arc::new(Watch {
            id: rand::random::<u64>() >> 1,
            query: req.query,
            // Called on the shard actor: never waits.
            sink: Arc::new(move |_shard, partial| {
                if tx.try_send(partial).is_err() {
                    full.store(true, Ordering::Relaxed);
                }
            }),
        });
        let first = match self.watch_local(&req.shards, &watch).await {
            Ok(snapshot) => protocol::codec::encode(&snapshot)
                .map(Response::Ok)
                .unwrap_or_else(|e| refuse(e.to_string(), false)),
            Err(e) => refuse(e.to_string(), true),
        };
        let registered = matches!(first, Response::Ok(_));
        if out.send(first).await.is_ok() && registered {
            let mut check = tokio::time::interval(HOSTING_CHECK);
            check.tick().await;
            loop {
                tokio::select! {
                    delta = rx.recv() => {
                        let Some(delta) = delta else { break };
                        let Ok(bytes) = protocol::codec::encode(&delta) else { break };
                        if out.send(Response::Ok(bytes)).await.is_err() {
                            break;
                        }
                        if overflow.load(Ordering::Relaxed) {
                            let _ = out.send(refuse("the watch fell behind; watch again".into(), true)).await;
                            break;
                        }
                    }
                    _ = check.tick() => {
                        if let Some(s) = req.shards.iter().find(|&&s| !self.hosts(s)) {
                            let _ = out.send(refuse(format!("this node no longer hosts shard {s}"), true)).await;
                            break;
                        }
                    }
                    () = out.closed() => break,
                }
            }
        }
        self.unwatch_local(watch.id);
    }
}
