//! Live updates (SPEC §4): subscription actors fed by the shards' incremental partial
//! aggregates, fanned out to WebSocket clients.
//!
//! One [`subscription::Subscription`] actor runs per distinct normalized query (and update
//! rate); every socket that asks for that query joins it. The actor registers a watch on
//! every shard, which answers with the current buckets (the snapshot) and from then on
//! sends the delta of each applied batch; the actor merges deltas into its buckets and, at
//! most once per `min_interval_ms`, sends the changed buckets' absolute values with the next
//! sequence number. Each socket has a bounded queue: when it is full the socket is dropped
//! from the subscription and rejoins with a fresh snapshot once it has caught up, so a slow
//! client never slows ingestion or other clients. The actor keeps its recent updates so a
//! client that reconnects can resume after the last `seq` it saw.

pub mod subscription;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::engine::ShardSet;
use crate::query::{DataRequest, PanelQuery};
use crate::shard::cell::Agg;
use crate::shard::{Layout, ShardQuery};
use subscription::{SubArgs, SubMsg, Subscription};

/// The fastest update rate a client may ask for, and the default.
pub const DEFAULT_MIN_INTERVAL_MS: u64 = 20;
/// The slowest (off-screen panels ask for about one update a second).
pub const MAX_MIN_INTERVAL_MS: u64 = 60_000;

/// A normalized live query: equal queries share one subscription actor.
#[derive(Clone, Debug)]
pub struct LiveQuery {
    /// The normalized form, also the registry key.
    pub key: String,
    pub metric: String,
    pub aggregation: Agg,
    pub granularity_ms: i64,
    pub window_ms: i64,
    pub min_interval_ms: u64,
    /// What the shards watch (the range is the initial snapshot's).
    pub shard_query: ShardQuery,
}

impl LiveQuery {
    /// Parses a subscribe message's `query` (see [`PanelQuery`]); errors name the field.
    pub fn parse(
        query: &Value,
        min_interval_ms: Option<u64>,
        layout: &Layout,
        now_ms: i64,
    ) -> Result<Self, String> {
        let pq: PanelQuery =
            serde_json::from_value(query.clone()).map_err(|e| format!("query: {e}"))?;
        if pq.offset.is_some() {
            return Err(
                "query.offset: past periods do not change; read them with GET /api/v1/metrics/{metric}/data?offset=".into(),
            );
        }
        let req: DataRequest = pq.to_request(now_ms).map_err(|e| e.to_string())?;
        let min_interval_ms = min_interval_ms.unwrap_or(DEFAULT_MIN_INTERVAL_MS);
        if !(DEFAULT_MIN_INTERVAL_MS..=MAX_MIN_INTERVAL_MS).contains(&min_interval_ms) {
            return Err(format!(
                "min_interval_ms: {min_interval_ms} is outside {DEFAULT_MIN_INTERVAL_MS}..={MAX_MIN_INTERVAL_MS}"
            ));
        }
        let shard_query = req.plan(layout, now_ms).map_err(|e| e.to_string())?;
        let window_ms = req.end_ms - req.start_ms;
        let mut filters: Vec<String> = req
            .filters
            .iter()
            .map(|f| format!("{}:{}{}", f.key, if f.negate { "!" } else { "" }, f.value))
            .collect();
        filters.sort();
        let mut group_by = req.group_by.clone();
        group_by.sort();
        let key = format!(
            "{}|{}|{}|{}|{}|{}|{}",
            req.metric,
            req.aggregation.as_str(),
            req.granularity_ms,
            window_ms,
            filters.join("&"),
            group_by.join(","),
            min_interval_ms
        );
        Ok(Self {
            key,
            metric: req.metric,
            aggregation: req.aggregation,
            granularity_ms: req.granularity_ms,
            window_ms,
            min_interval_ms,
            shard_query,
        })
    }
}

/// A message on its way to one socket. Updates are rendered once per subscription and
/// shared; only the client's own subscription id is spliced in.
#[derive(Debug)]
pub enum Outgoing {
    /// `{"type": kind, "id": id, <body>}` where `body` is JSON members without braces.
    Shared {
        kind: &'static str,
        id: Arc<str>,
        body: Arc<str>,
    },
    /// A whole JSON text.
    Text(String),
}

impl Outgoing {
    pub fn render(&self) -> String {
        match self {
            Outgoing::Shared { kind, id, body } => {
                let mut s = String::with_capacity(body.len() + id.len() + 32);
                s.push_str("{\"type\":\"");
                s.push_str(kind);
                s.push_str("\",\"id\":");
                s.push_str(id);
                if !body.is_empty() {
                    s.push(',');
                    s.push_str(body);
                }
                s.push('}');
                s
            }
            Outgoing::Text(t) => t.clone(),
        }
    }
}

/// Subscriptions of one socket that fell behind and need a fresh snapshot.
#[derive(Default)]
pub struct Lagged {
    ids: Mutex<Vec<Arc<str>>>,
    pub notify: Notify,
}

impl Lagged {
    pub fn push(&self, id: Arc<str>) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        self.notify.notify_one();
    }

    pub fn take(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One socket's membership in a subscription.
#[derive(Clone)]
pub struct Subscriber {
    pub socket: u64,
    /// The client's subscription id, as a JSON string literal.
    pub id: Arc<str>,
    pub tx: mpsc::Sender<Outgoing>,
    pub lagged: Arc<Lagged>,
}

/// Where a client wants to resume: the stream it saw and the last `seq` of it.
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    pub stream: Option<u64>,
    pub after_seq: u64,
}

#[derive(Default)]
pub struct LiveStats {
    pub clients: AtomicU64,
    pub updates_sent: AtomicU64,
    pub lagged: AtomicU64,
    pub dropped_clients: AtomicU64,
}

/// The registry of subscription actors, and what sockets call.
pub struct LiveHub {
    shards: ShardSet,
    layout: Layout,
    subs: Arc<DashMap<String, ActorRef<SubMsg>>>,
    next_socket: AtomicU64,
    closing: watch::Sender<bool>,
    pub stats: Arc<LiveStats>,
    linger: Duration,
    /// `alert` messages for every authenticated socket.
    alerts: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl LiveHub {
    pub fn new(shards: ShardSet, layout: Layout, linger: Duration) -> Self {
        Self {
            shards,
            layout,
            subs: Arc::new(DashMap::new()),
            next_socket: AtomicU64::new(1),
            closing: watch::channel(false).0,
            stats: Arc::new(LiveStats::default()),
            linger,
            alerts: tokio::sync::broadcast::channel(1024).0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn new_socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends an `alert` message (JSON text) to every connected socket.
    pub fn publish_alert(&self, text: String) {
        // No receivers (no sockets) is fine.
        let _ = self.alerts.send(text.into());
    }

    pub fn alert_feed(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.alerts.subscribe()
    }

    /// Becomes `true` when the node stops: sockets close.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Joins `sub` to the subscription for `q` (starting it if needed). The socket then
    /// receives a snapshot (or, with `resume`, the updates it missed) and updates.
    pub async fn join(
        &self,
        q: &LiveQuery,
        sub: Subscriber,
        resume: Option<Resume>,
    ) -> Result<(), String> {
        for _ in 0..3 {
            let actor = self.actor_for(q).await?;
            let (ack, acked) = oneshot::channel();
            let msg = SubMsg::Join {
                sub: sub.clone(),
                resume,
                ack,
            };
            if actor.cast(msg).is_ok()
                && tokio::time::timeout(Duration::from_secs(10), acked)
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return Ok(());
            }
            // The actor stopped between lookup and join: forget it and start another.
            self.subs
                .remove_if(&q.key, |_, a| a.get_id() == actor.get_id());
        }
        Err("the subscription could not be started; try again".into())
    }

    pub fn leave(&self, key: &str, socket: u64, id: Arc<str>) {
        if let Some(actor) = self.subs.get(key) {
            let _ = actor.cast(SubMsg::Leave { socket, id });
        }
    }

    async fn actor_for(&self, q: &LiveQuery) -> Result<ActorRef<SubMsg>, String> {
        if let Some(a) = self.subs.get(&q.key) {
            return Ok(a.clone());
        }
        let args = SubArgs {
            query: q.clone(),
            shards: self.shards.clone(),
            registry: self.subs.clone(),
            stats: self.stats.clone(),
            linger: self.linger,
        };
        let (actor, _) = Actor::spawn(None, Subscription, args)
            .await
            .map_err(|e| format!("starting the subscription failed: {e}"))?;
        let winner = self
            .subs
            .entry(q.key.clone())
            .or_insert_with(|| actor.clone())
            .clone();
        if winner.get_id() != actor.get_id() {
            // Another socket started the same subscription meanwhile: use theirs.
            actor.stop(None);
        }
        Ok(winner)
    }

    /// Closes every socket and stops every subscription (node shutdown).
    pub async fn shutdown(&self) {
        let _ = self.closing.send(true);
        let actors: Vec<ActorRef<SubMsg>> = self.subs.iter().map(|e| e.value().clone()).collect();
        self.subs.clear();
        for a in actors {
            let _ = a.stop_and_wait(None, Some(Duration::from_secs(5))).await;
        }
    }
}
