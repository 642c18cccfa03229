//! The subscription actor: one per distinct live query. It holds the query's buckets,
//! merges the shards' deltas into them, and sends every joined socket the same snapshot and
//! the same numbered updates.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc::error::TrySendError, oneshot};
use tracing::{debug, warn};

use super::{LiveQuery, LiveStats, Outgoing, Resume, Subscriber};
use crate::engine::ShardSet;
use crate::shard::cell::Cell;
use crate::shard::state::{GroupKey, Partial};
use crate::shard::Watch;

/// Updates kept for clients that resume after a reconnect.
const HISTORY: usize = 512;

pub enum SubMsg {
    Join {
        sub: Subscriber,
        resume: Option<Resume>,
        /// Fires once the socket has its snapshot (or replay) queued.
        ack: oneshot::Sender<()>,
    },
    Leave {
        socket: u64,
        id: Arc<str>,
    },
    /// A shard's partial aggregate of one applied batch, for the watch with this id.
    Delta(u64, Partial),
    /// Part of the watch with this id ended (a remote link): watch again.
    Lost(u64),
    /// Send the changed buckets (coalescing timer).
    Flush,
    /// Slide the window; stop when nobody has listened for a while.
    Tick,
}

pub struct SubArgs {
    pub query: LiveQuery,
    pub shards: ShardSet,
    pub registry: Arc<DashMap<String, ActorRef<SubMsg>>>,
    pub stats: Arc<LiveStats>,
    pub linger: Duration,
}

pub struct Subscription;

pub struct SubState {
    q: LiveQuery,
    shards: ShardSet,
    registry: Arc<DashMap<String, ActorRef<SubMsg>>>,
    stats: Arc<LiveStats>,
    linger: Duration,
    watch_id: u64,
    /// Identifies this actor's sequence numbers: a resume from another stream gets a snapshot.
    stream: u64,
    seq: u64,
    buckets: HashMap<GroupKey, BTreeMap<i64, Cell>>,
    changed: BTreeSet<(GroupKey, i64)>,
    /// Groups whose window lost buckets as time passed: their totals changed without data.
    slid: BTreeSet<GroupKey>,
    /// The newest bucket any update has carried: changes to older buckets are corrections.
    high_water: i64,
    history: VecDeque<(u64, Arc<str>)>,
    subscribers: Vec<Subscriber>,
    flush_pending: bool,
    last_flush: Instant,
    empty_since: Option<Instant>,
}

impl Actor for Subscription {
    type Msg = SubMsg;
    type State = SubState;
    type Arguments = SubArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SubMsg>,
        args: SubArgs,
    ) -> Result<SubState, ActorProcessingErr> {
        let (watch_id, snapshot) = register(&myself, &args.shards, &args.query).await?;
        myself.send_interval(Duration::from_secs(1), || SubMsg::Tick);
        let mut st = SubState {
            q: args.query,
            shards: args.shards,
            registry: args.registry,
            stats: args.stats,
            linger: args.linger,
            watch_id,
            stream: rand::random::<u64>() >> 11,
            seq: 0,
            buckets: HashMap::new(),
            changed: BTreeSet::new(),
            slid: BTreeSet::new(),
            high_water: i64::MIN,
            history: VecDeque::new(),
            subscribers: Vec::new(),
            flush_pending: false,
            last_flush: Instant::now(),
            empty_since: Some(Instant::now()),
        };
        merge(&mut st, snapshot, false);
        st.high_water = newest_bucket(&st);
        Ok(st)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SubMsg>,
        st: &mut SubState,
    ) -> Result<(), ActorProcessingErr> {
        st.shards.unwatch(st.watch_id);
        st.registry
            .remove_if(&st.q.key, |_, a| a.get_id() == myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SubMsg>,
        msg: SubMsg,
        st: &mut SubState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubMsg::Join { sub, resume, ack } => handle_join(st, sub, resume, ack),
            SubMsg::Leave { socket, id } => {
                st.subscribers
                    .retain(|s| !(s.socket == socket && s.id == id));
                if st.subscribers.is_empty() {
                    st.empty_since = Some(Instant::now());
                }
            }
            SubMsg::Delta(id, partial) => {
                // Deltas of a watch replaced by a resync are in its snapshot already.
                if id == st.watch_id {
                    merge(st, partial, true);
                    schedule_flush(&myself, st);
                }
            }
            SubMsg::Lost(id) => {
                if id == st.watch_id {
                    st.shards.unwatch(st.watch_id);
                    match register(&myself, &st.shards, &st.q).await {
                        Ok((id, snapshot)) => {
                            st.watch_id = id;
                            resync(st, snapshot);
                            schedule_flush(&myself, st);
                        }
                        Err(e) => {
                            warn!(query = %st.q.key, cause = %e, "live query lost part of its shards; watching again in 1 s");
                            myself.send_after(Duration::from_secs(1), move || SubMsg::Lost(id));
                        }
                    }
                }
            }
            SubMsg::Flush => {
                st.flush_pending = false;
                flush(st);
            }
            SubMsg::Tick => {
                slide(st);
                // Window totals change as buckets leave the window, data or not: alert rules
                // on "fewer than" and stat panels depend on hearing it.
                if !st.slid.is_empty() && !st.flush_pending {
                    flush(st);
                }
                if st.empty_since.is_some_and(|t| t.elapsed() >= st.linger) {
                    // Leave the registry first so no new socket joins a stopping actor.
                    st.registry
                        .remove_if(&st.q.key, |_, a| a.get_id() == myself.get_id());
                    debug!(query = %st.q.key, "subscription idle; stopping");
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}

/// Watches every shard for `q` with a fresh watch id; deltas and losses come back to the
/// actor tagged with it.
async fn register(
    myself: &ActorRef<SubMsg>,
    shards: &ShardSet,
    q: &LiveQuery,
) -> crate::error::Result<(u64, Partial)> {
    let id = rand::random::<u64>() >> 1;
    let me = myself.clone();
    let watch = Watch {
        id,
        query: q.shard_query.clone(),
        sink: Arc::new(move |_shard, partial| {
            // The actor may have stopped; its watch is being removed.
            let _ = me.cast(SubMsg::Delta(id, partial));
        }),
    };
    let me = myself.clone();
    let lost = Arc::new(move || {
        let _ = me.cast(SubMsg::Lost(id));
    });
    let snapshot = shards.watch(watch, lost).await?;
    Ok((id, snapshot))
}

/// Flushes the changed buckets now, or schedules it for when `min_interval_ms` has passed
/// since the last flush.
fn schedule_flush(myself: &ActorRef<SubMsg>, st: &mut SubState) {
    if !st.flush_pending && !st.changed.is_empty() {
        let interval = Duration::from_millis(st.q.min_interval_ms);
        let since = st.last_flush.elapsed();
        if since >= interval {
            flush(st);
        } else {
            st.flush_pending = true;
            myself.send_after(interval - since, || SubMsg::Flush);
        }
    }
}

/// Replaces the buckets with a fresh watch's snapshot and marks every bucket whose value
/// differs (or is new) as changed, so the next update carries what happened while part of
/// the watch was lost.
fn resync(st: &mut SubState, snapshot: Partial) {
    let old = std::mem::take(&mut st.buckets);
    merge(st, snapshot, false);
    for (group, buckets) in &st.buckets {
        for (ts, cell) in buckets {
            if old.get(group).and_then(|b| b.get(ts)) != Some(cell) {
                st.changed.insert((group.clone(), *ts));
            }
        }
    }
}

fn window_start(st: &SubState) -> i64 {
    let g = st.q.granularity_ms;
    (crate::now_ms() - st.q.window_ms).div_euclid(g) * g
}

fn newest_bucket(st: &SubState) -> i64 {
    st.buckets
        .values()
        .filter_map(|b| b.keys().next_back().copied())
        .max()
        .unwrap_or(i64::MIN)
}

/// Merges partial cells into the buckets; `track` marks them changed (deltas, not the
/// snapshot). Buckets that already slid out of the window are ignored.
fn merge(st: &mut SubState, partial: Partial, track: bool) {
    let oldest = window_start(st);
    let sketch = st.q.shard_query.sketch;
    for (group, run) in partial {
        let buckets = st.buckets.entry(group.clone()).or_default();
        for (ts, cell) in run {
            if ts < oldest {
                continue;
            }
            match buckets.get_mut(&ts) {
                Some(acc) => acc.merge_with(&cell, sketch),
                None => {
                    buckets.insert(ts, cell);
                }
            }
            if track {
                st.changed.insert((group.clone(), ts));
            }
        }
    }
}

fn slide(st: &mut SubState) {
    let oldest = window_start(st);
    let slid = &mut st.slid;
    st.buckets.retain(|group, b| {
        if b.first_key_value().is_some_and(|(ts, _)| *ts < oldest) {
            *b = b.split_off(&oldest);
            slid.insert(group.clone());
        }
        !b.is_empty()
    });
    st.changed.retain(|(_, ts)| *ts >= oldest);
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn push_dimensions(out: &mut String, group: &GroupKey) {
    out.push('{');
    for (i, (k, v)) in group.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
        out.push(':');
        push_json_str(out, v);
    }
    out.push('}');
}

/// `,{"dimensions":{...}` (no comma before the first).
fn open_group(out: &mut String, first: &mut bool, group: &GroupKey) {
    if !*first {
        out.push(',');
    }
    *first = false;
    out.push_str("{\"dimensions\":");
    push_dimensions(out, group);
}

fn push_number(out: &mut String, v: f64) {
    // Callers skip non-finite values (JSON has no NaN); Display never uses an exponent.
    let _ = write!(out, "{v}");
}

/// `[{"dimensions": {...}, "points": [[ts, v], ...]}, ...]` for the given buckets.
fn push_series<'a>(
    out: &mut String,
    st: &SubState,
    items: impl Iterator<Item = (&'a GroupKey, Vec<(i64, &'a Cell)>)>,
) {
    out.push('[');
    let mut first = true;
    for (group, cells) in items {
        let values: Vec<(i64, f64)> = cells
            .into_iter()
            .map(|(ts, c)| (ts, c.value(st.q.aggregation, st.q.granularity_ms)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        if values.is_empty() {
            continue;
        }
        open_group(out, &mut first, group);
        out.push_str(",\"points\":[");
        for (i, (ts, v)) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{ts},");
            push_number(out, *v);
            out.push(']');
        }
        out.push_str("]}");
    }
    out.push(']');
}

/// The whole window's value per group (`"totals"`): what stat, gauge, pie and table panels
/// show.
fn push_totals<'a>(out: &mut String, st: &SubState, groups: impl Iterator<Item = &'a GroupKey>) {
    let sketch = st.q.shard_query.sketch;
    out.push('[');
    let mut first = true;
    for group in groups {
        let Some(buckets) = st.buckets.get(group) else {
            // The group's last bucket left the window: it has no value any more.
            open_group(out, &mut first, group);
            out.push_str(",\"value\":null}");
            continue;
        };
        let mut cells = buckets.values();
        let Some(first_cell) = cells.next() else {
            continue;
        };
        let mut acc = first_cell.copy_with(sketch);
        for c in cells {
            acc.merge_with(c, sketch);
        }
        let v = acc.value(st.q.aggregation, st.q.window_ms);
        if !v.is_finite() {
            continue;
        }
        open_group(out, &mut first, group);
        out.push_str(",\"value\":");
        push_number(out, v);
        out.push('}');
    }
    out.push(']');
}

fn snapshot_body(st: &SubState) -> String {
    let mut groups: Vec<&GroupKey> = st.buckets.keys().collect();
    groups.sort();
    let mut out = String::new();
    let _ = write!(
        out,
        "\"seq\":{},\"stream\":{},\"granularity_ms\":{},\"window_ms\":{},\"aggregation\":\"{}\",\"series\":",
        st.seq,
        st.stream,
        st.q.granularity_ms,
        st.q.window_ms,
        st.q.aggregation.as_str()
    );
    push_series(
        &mut out,
        st,
        groups
            .iter()
            .map(|g| (*g, st.buckets[*g].iter().map(|(t, c)| (*t, c)).collect())),
    );
    out.push_str(",\"totals\":");
    push_totals(&mut out, st, groups.iter().copied());
    out
}

fn handle_join(
    st: &mut SubState,
    sub: Subscriber,
    resume: Option<Resume>,
    ack: oneshot::Sender<()>,
) {
    st.subscribers
        .retain(|s| !(s.socket == sub.socket && s.id == sub.id));
    let replay = resume.and_then(|r| {
        let same_stream = r.stream.is_none_or(|s| s == st.stream);
        let oldest = st.history.front().map_or(st.seq + 1, |(s, _)| *s);
        // Everything after `after_seq` must still be in the history.
        (same_stream && r.after_seq <= st.seq && r.after_seq + 1 >= oldest).then_some(r.after_seq)
    });
    let mut queued = true;
    match replay {
        Some(after) => {
            for (seq, body) in st.history.iter().filter(|(s, _)| *s > after) {
                let _ = seq;
                queued &= sub
                    .tx
                    .try_send(Outgoing::Shared {
                        kind: "update",
                        id: sub.id.clone(),
                        body: body.clone(),
                    })
                    .is_ok();
            }
        }
        None => {
            queued = sub
                .tx
                .try_send(Outgoing::Shared {
                    kind: "snapshot",
                    id: sub.id.clone(),
                    body: snapshot_body(st).into(),
                })
                .is_ok();
        }
    }
    if queued {
        st.subscribers.push(sub);
        st.empty_since = None;
    } else {
        // Its queue is already full: it asks again once it has drained.
        st.stats.lagged.fetch_add(1, Ordering::Relaxed);
        sub.lagged.push(sub.id.clone());
    }
    let _ = ack.send(());
}

fn flush(st: &mut SubState) {
    st.last_flush = Instant::now();
    if st.changed.is_empty() && st.slid.is_empty() {
        return;
    }
    let changed = std::mem::take(&mut st.changed);
    let slid = std::mem::take(&mut st.slid);
    let high_water = st.high_water;
    let mut fresh: BTreeMap<&GroupKey, Vec<(i64, &Cell)>> = BTreeMap::new();
    let mut corrections: BTreeMap<&GroupKey, Vec<(i64, &Cell)>> = BTreeMap::new();
    let mut newest = high_water;
    for (group, ts) in &changed {
        let Some(cell) = st.buckets.get(group).and_then(|b| b.get(ts)) else {
            continue;
        };
        let into = if *ts < high_water {
            &mut corrections
        } else {
            &mut fresh
        };
        into.entry(group).or_default().push((*ts, cell));
        newest = newest.max(*ts);
    }
    let mut groups: Vec<&GroupKey> = changed.iter().map(|(g, _)| g).chain(slid.iter()).collect();
    groups.sort();
    groups.dedup();
    let mut body = String::new();
    let _ = write!(body, "\"seq\":{},\"stream\":{}", st.seq + 1, st.stream);
    if !fresh.is_empty() {
        body.push_str(",\"points\":");
        push_series(&mut body, st, fresh.into_iter());
    }
    if !corrections.is_empty() {
        body.push_str(",\"corrections\":");
        push_series(&mut body, st, corrections.into_iter());
    }
    body.push_str(",\"totals\":");
    push_totals(&mut body, st, groups.into_iter());
    st.seq += 1;
    st.high_water = newest;
    let body: Arc<str> = body.into();
    st.history.push_back((st.seq, body.clone()));
    while st.history.len() > HISTORY {
        st.history.pop_front();
    }
    let stats = st.stats.clone();
    st.subscribers.retain(|s| {
        match s.tx.try_send(Outgoing::Shared {
            kind: "update",
            id: s.id.clone(),
            body: body.clone(),
        }) {
            Ok(()) => {
                stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                // Too slow: leave the stream; the socket rejoins with a fresh snapshot once
                // it has drained its queue.
                stats.lagged.fetch_add(1, Ordering::Relaxed);
                s.lagged.push(s.id.clone());
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    });
    if st.subscribers.is_empty() && st.empty_since.is_none() {
        st.empty_since = Some(Instant::now());
    }
}
