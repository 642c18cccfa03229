//! The deterministic state of one virtual shard: its series, their raw rings and rollups.
//!
//! `ShardState` changes only through [`ShardState::apply`], which takes a batch that is
//! already durable in the log together with its log index. `apply` reads no clock and draws
//! no random number: replaying the same log onto the same snapshot gives the same state, which
//! is what lets a Raft group per shard own the log and this state machine later.
//! Retention (dropping old cells) is a separate step, [`ShardState::evict`], driven by the
//! actor's tick: it changes only data that queries would no longer return anyway.

use std::collections::HashMap;

use protocol::batch::{Dims, PointRef};
use protocol::{Dimensions, ShardBatch, ShardEntry};
use serde::{Deserialize, Serialize};

use super::cell::Cell;
use super::ring::Ring;
use super::rollup::{LevelSpec, Rollup};

/// Storage layout of a shard, fixed when the shard is created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Layout {
    /// How long raw points stay in each series' ring.
    pub raw_retention_ms: i64,
    /// Rollup levels, finest first.
    pub levels: Vec<LevelSpec>,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            raw_retention_ms: 6 * 3_600_000,
            levels: super::rollup::default_levels(),
        }
    }
}

/// One series: a metric plus one exact set of dimensions.
#[derive(Serialize, Deserialize)]
pub struct Series {
    pub metric: protocol::Name,
    pub dimensions: Dimensions,
    pub ring: Ring,
    pub rollups: Vec<Rollup>,
}

/// A condition on one dimension. Positive filters on the same key are alternatives
/// (`country:de` or `country:fr`); filters on different keys and all negative filters must
/// all hold. A negative filter passes a series that lacks the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub key: String,
    pub value: String,
    pub negate: bool,
}

/// Where a query reads its cells from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Rollup level `i` of the layout.
    Level(usize),
    /// The raw ring (for granularities finer than a materialised level).
    Raw,
    /// Sliding windows: whole cells of level `i` for the part of the range they tile, raw
    /// points for the two partial edges — never a rescan of the whole window's raw history.
    Window(usize),
}

/// How the cells found in the range are grouped in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bucketing {
    /// Buckets of this many ms, aligned to the epoch.
    Aligned(i64),
    /// One cell for the whole range, labelled by the range start (sliding windows).
    Whole,
}

/// The part of a query one shard answers: partial aggregates, merged by the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardQuery {
    pub metric: String,
    pub filters: Vec<Filter>,
    pub group_by: Vec<String>,
    /// Inclusive start, exclusive end, event time in ms.
    pub start_ms: i64,
    pub end_ms: i64,
    pub bucketing: Bucketing,
    pub source: Source,
    /// Whether quantile sketches are needed (only for p50…p99): merging them is most of the
    /// cost of a query that does not ask for quantiles.
    pub sketch: bool,
}

/// Dimension values of a group: only the `group_by` keys the series has.
pub type GroupKey = Vec<(String, String)>;

/// Cells of one group, sorted by bucket start, one per bucket.
pub type Run = Vec<(i64, Cell)>;

/// Partial aggregates of one shard: per group, its buckets.
pub type Partial = HashMap<GroupKey, Run>;

/// Figures for `/metrics` and the memory-per-point bench.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub series: u64,
    pub raw_points: u64,
    pub raw_bytes: u64,
    pub rollup_cells: u64,
    pub rollup_bytes: u64,
    pub applied_index: u64,
    /// Shard copies held on disk only (see `ShardMsg::Hibernate`): 1 for an asleep shard.
    pub asleep: u64,
}

/// What a snapshot holds: everything but the derived indexes.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub shard: u32,
    pub applied_index: u64,
    /// The Raft group's bookkeeping (last applied log id, membership), opaque here.
    pub raft_meta: Vec<u8>,
    pub layout: Layout,
    pub series: Vec<Series>,
    pub batches: Vec<(String, BatchRecord)>,
}

/// What a shard remembers of a request with an idempotency key: how many of its points
/// this shard applied, and when the request arrived (for expiry).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub points: u32,
    pub received_ms: i64,
}

/// How long idempotency keys are remembered.
pub const BATCH_ID_RETENTION_MS: i64 = 24 * 3_600_000;

pub struct ShardState {
    shard: u32,
    applied_index: u64,
    raft_meta: Vec<u8>,
    layout: Layout,
    series: Vec<Series>,
    /// series hash → id. The key is already a hash, so it is not hashed again.
    by_hash: HashMap<u64, u32, nohash_hasher::BuildNoHashHasher<u64>>,
    /// Further series whose hash collides with one in `by_hash` (practically never used;
    /// collisions are resolved by comparing metric and dimensions).
    collisions: HashMap<u64, Vec<u32>>,
    /// metric → ids of its series.
    by_metric: HashMap<String, Vec<u32>>,
    /// Idempotency keys of applied requests (see `BatchRecord`).
    batches: HashMap<String, BatchRecord>,
    /// Points applied to their series' rings but not yet to their rollups, in apply order;
    /// [`ShardState::settle`] adds them series by series. Adding each point as it came
    /// touched a different series' cells every time, from memory rather than cache: a
    /// fifth of a follower's time. Everything that reads rollups settles first, so no one
    /// sees the difference (see `PENDING_MAX`).
    pending: Vec<PendingPoint>,
}

/// The most points a shard holds back from its rollups (32 bytes each): enough that a series
/// written every second or more often has several points added at once.
const PENDING_MAX: usize = 8192;

#[derive(Clone, Copy, Default)]
struct PendingPoint {
    series: u32,
    ts: i64,
    value: f64,
    seq: u64,
}

impl ShardState {
    pub fn new(shard: u32, layout: Layout) -> Self {
        Self {
            shard,
            applied_index: 0,
            raft_meta: Vec::new(),
            layout,
            series: Vec::new(),
            by_hash: HashMap::default(),
            collisions: HashMap::new(),
            by_metric: HashMap::new(),
            batches: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let mut state = Self::new(snapshot.shard, snapshot.layout);
        state.applied_index = snapshot.applied_index;
        state.raft_meta = snapshot.raft_meta;
        for series in snapshot.series {
            state.index_series(series);
        }
        state.batches = snapshot.batches.into_iter().collect();
        state
    }

    /// The snapshot is taken from a consistent state: everything up to `applied_index`.
    pub fn to_snapshot(&mut self) -> SnapshotRef<'_> {
        self.settle();
        SnapshotRef {
            shard: self.shard,
            applied_index: self.applied_index,
            raft_meta: &self.raft_meta,
            layout: &self.layout,
            series: &self.series,
            batches: self.batches.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        }
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The Raft group's bookkeeping as of the applied index (see `shard::group`).
    pub fn raft_meta(&self) -> &[u8] {
        &self.raft_meta
    }

    /// Records a log position that carries no points (a Raft blank or membership entry).
    pub fn advance(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    pub fn set_raft_meta(&mut self, raft_meta: Vec<u8>) {
        self.raft_meta = raft_meta;
    }

    /// Applies a committed entry at log `index`, its batches in order. Indices at or below
    /// the applied one are ignored, so replaying a log that overlaps the snapshot is
    /// harmless; a batch whose idempotency key this shard already applied is skipped (a
    /// client's retry after a failover, even in the same entry), so its points count once.
    /// Returns the batches whose points were applied.
    pub fn apply<'e>(&mut self, index: u64, entry: &'e ShardEntry) -> Vec<&'e ShardBatch> {
        if index <= self.applied_index {
            return Vec::new();
        }
        let applied = entry
            .parts
            .iter()
            .filter(|batch| self.apply_batch(batch))
            .collect();
        self.applied_index = index;
        applied
    }

    fn apply_batch(&mut self, batch: &ShardBatch) -> bool {
        if batch
            .batch_id
            .as_ref()
            .is_some_and(|id| self.batches.contains_key(id))
        {
            return false;
        }
        // Arrival order: the ingesting node's clock, then the position in the batch. Fits in
        // 64 bits: 43 bits of ms (until year 2248) and 21 bits of position (batches are
        // capped far below 2^21 points).
        let base = (batch.received_ms.max(0) as u64) << 21;
        for (pos, point) in batch.points.iter().enumerate() {
            let seq = base | (pos as u64 & 0x1F_FFFF);
            let id = self.series_id_or_insert(&point, batch.series_hash(pos, &point));
            self.series[id as usize]
                .ring
                .push(point.timestamp_ms, point.value);
            self.pending.push(PendingPoint {
                series: id,
                ts: point.timestamp_ms,
                value: point.value,
                seq,
            });
            if self.pending.len() >= PENDING_MAX {
                self.settle();
            }
        }
        if let Some(id) = &batch.batch_id {
            self.batches.insert(
                id.clone(),
                BatchRecord {
                    points: batch.points.len() as u32,
                    received_ms: batch.received_ms,
                },
            );
        }
        true
    }

    /// Adds the points held back (see `ShardState::pending`) to their rollups: grouped by
    /// series (a counting sort on the series id; each series' points stay in apply order), so
    /// a series' current cells are fetched once for all its points.
    pub fn settle(&mut self) {
        let n = self.pending.len();
        if n == 0 {
            return;
        }
        let mut starts = vec![0u32; self.series.len() + 1];
        for p in &self.pending {
            starts[p.series as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut grouped = vec![PendingPoint::default(); n];
        for p in &self.pending {
            let at = &mut starts[p.series as usize];
            grouped[*at as usize] = *p;
            *at += 1;
        }
        for p in &grouped {
            for rollup in &mut self.series[p.series as usize].rollups {
                rollup.add(p.ts, p.value, p.seq);
            }
        }
        // A shard written slowly gives its buffer back (it settles on every tick).
        if n < PENDING_MAX / 4 {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
    }

    /// Drops raw points and cells older than each level's retention, as of `now_ms`.
    /// Settles first.
    pub fn evict(&mut self, now_ms: i64) {
        self.settle();
        self.batches
            .retain(|_, r| r.received_ms >= now_ms - BATCH_ID_RETENTION_MS);
        let raw_cutoff = now_ms - self.layout.raw_retention_ms;
        for series in &mut self.series {
            series.ring.evict_before(raw_cutoff);
            for (rollup, spec) in series.rollups.iter_mut().zip(&self.layout.levels) {
                rollup.evict_before(now_ms - spec.retention_ms);
            }
        }
    }

    /// The series of `point`, whose series hash is `hash`.
    fn series_id_or_insert(&mut self, point: &PointRef<'_>, hash: u64) -> u32 {
        let same = |s: &Series| s.metric == point.metric && point.dims.same_as(&s.dimensions);
        if let Some(&id) = self.by_hash.get(&hash) {
            if same(&self.series[id as usize]) {
                return id;
            }
            for &id in self.collisions.get(&hash).map(Vec::as_slice).unwrap_or(&[]) {
                if same(&self.series[id as usize]) {
                    return id;
                }
            }
        }
        let series = Series {
            metric: point.metric.into(),
            dimensions: point.dims.to_owned(),
            ring: Ring::new(),
            rollups: self
                .layout
                .levels
                .iter()
                .map(|l| Rollup::new(l.resolution_ms))
                .collect(),
        };
        self.index_series(series)
    }

    fn index_series(&mut self, series: Series) -> u32 {
        let id = self.series.len() as u32;
        let hash = protocol::point::series_hash(&series.metric, &series.dimensions);
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.entry(hash).or_default().push(id);
            }
        }
        self.by_metric
            .entry(series.metric.to_string())
            .or_default()
            .push(id);
        self.series.push(series);
        id
    }

    /// Every series as (metric, series hash): to rebuild the admission registry at start.
    pub fn series_hashes(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.by_hash
            .iter()
            .map(|(h, id)| (*h, *id))
            .chain(
                self.collisions
                    .iter()
                    .flat_map(|(h, ids)| ids.iter().map(move |id| (*h, *id))),
            )
            .map(move |(h, id)| (self.series[id as usize].metric.as_str(), h))
    }

    /// Series count per metric.
    pub fn metrics(&self) -> HashMap<String, u64> {
        self.by_metric
            .iter()
            .map(|(m, ids)| (m.clone(), ids.len() as u64))
            .collect()
    }

    /// For each dimension key of `metric`: value → number of series.
    pub fn dimensions(&self, metric: &str) -> HashMap<String, HashMap<String, u64>> {
        let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
        for &id in self.by_metric.get(metric).map(Vec::as_slice).unwrap_or(&[]) {
            for (k, v) in &self.series[id as usize].dimensions {
                *out.entry(k.to_string())
                    .or_default()
                    .entry(v.to_string())
                    .or_default() += 1;
            }
        }
        out
    }

    /// Partial aggregates of the matching series of this shard.
    pub fn query(&mut self, q: &ShardQuery) -> Partial {
        self.settle();
        let mut out: Partial = HashMap::new();
        let ids = self
            .by_metric
            .get(&q.metric)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut raw = Vec::new();
        let mut run: Run = Vec::new();
        for &id in ids {
            let series = &self.series[id as usize];
            if !matches((&series.dimensions).into(), &q.filters) {
                continue;
            }
            run.clear();
            match q.source {
                Source::Level(level) => {
                    if let Some(rollup) = series.rollups.get(level) {
                        level_run(rollup, q, q.start_ms, q.end_ms, &mut run);
                    }
                }
                Source::Raw => raw_run(&series.ring, q, q.start_ms, q.end_ms, &mut raw, &mut run),
                Source::Window(level) => {
                    let res = self.layout.levels.get(level).map_or(1, |l| l.resolution_ms);
                    let mid_start = (q.start_ms + res - 1).div_euclid(res) * res;
                    let mid_end = q.end_ms.div_euclid(res) * res;
                    if mid_start < mid_end {
                        raw_run(&series.ring, q, q.start_ms, mid_start, &mut raw, &mut run);
                        if let Some(rollup) = series.rollups.get(level) {
                            level_run(rollup, q, mid_start, mid_end, &mut run);
                        }
                        raw_run(&series.ring, q, mid_end, q.end_ms, &mut raw, &mut run);
                        fold_run(&mut run, q.sketch);
                    } else {
                        raw_run(&series.ring, q, q.start_ms, q.end_ms, &mut raw, &mut run);
                    }
                }
            }
            if run.is_empty() {
                continue;
            }
            let key = group_key((&series.dimensions).into(), &q.group_by);
            let acc = out.entry(key).or_default();
            merge_runs(acc, std::mem::take(&mut run), q.sketch);
        }
        out
    }

    pub fn stats(&mut self) -> ShardStats {
        self.settle();
        let mut s = ShardStats {
            series: self.series.len() as u64,
            applied_index: self.applied_index,
            ..ShardStats::default()
        };
        for series in &self.series {
            s.raw_points += series.ring.len() as u64;
            s.raw_bytes += series.ring.heap_bytes() as u64;
            for rollup in &series.rollups {
                s.rollup_cells += rollup.len() as u64;
                s.rollup_bytes += rollup.heap_bytes() as u64;
            }
        }
        s
    }
}

/// Borrowed view of a snapshot, so taking one does not clone the state.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    pub shard: u32,
    pub applied_index: u64,
    pub raft_meta: &'a [u8],
    pub layout: &'a Layout,
    pub series: &'a [Series],
    pub batches: Vec<(&'a str, BatchRecord)>,
}

impl ShardQuery {
    /// The bucket label of a point or cell starting at `ts`.
    pub fn label(&self, ts: i64) -> i64 {
        match self.bucketing {
            Bucketing::Aligned(g) => ts.div_euclid(g) * g,
            Bucketing::Whole => self.start_ms,
        }
    }
}

fn label(q: &ShardQuery, ts: i64) -> i64 {
    q.label(ts)
}

/// Appends one series' level cells in `[start, end)` to `run`, folded into query buckets.
fn level_run(rollup: &super::rollup::Rollup, q: &ShardQuery, start: i64, end: i64, run: &mut Run) {
    for (bucket, cell) in rollup.range(start, end) {
        let l = label(q, *bucket);
        match run.last_mut() {
            Some((last, acc)) if *last == l => acc.merge_with(cell, q.sketch),
            _ => run.push((l, cell.copy_with(q.sketch))),
        }
    }
}

/// Appends one series' raw points in `[start, end)` to `run`, folded into query buckets. Points
/// are taken in event-time order (stable: arrival order breaks ties, so `last` is right).
fn raw_run(
    ring: &super::ring::Ring,
    q: &ShardQuery,
    start: i64,
    end: i64,
    raw: &mut Vec<(i64, f64)>,
    run: &mut Run,
) {
    raw.clear();
    ring.range(start, end, raw);
    raw.sort_by_key(|p| p.0);
    for (i, &(ts, v)) in raw.iter().enumerate() {
        let l = label(q, ts);
        match run.last_mut() {
            Some((last, acc)) if *last == l => acc.add_with(v, ts, i as u64, q.sketch),
            _ => run.push((l, Cell::new(v, ts, i as u64))),
        }
    }
}

/// Folds neighbouring cells with the same label (a run built from several sources).
fn fold_run(run: &mut Run, sketch: bool) {
    run.sort_by_key(|c| c.0);
    let mut out: Run = Vec::with_capacity(run.len());
    for (l, cell) in run.drain(..) {
        match out.last_mut() {
            Some((last, acc)) if *last == l => acc.merge_with(&cell, sketch),
            _ => out.push((l, cell)),
        }
    }
    *run = out;
}

/// Merges the sorted run `other` into the sorted run `acc` (two-pointer merge).
pub fn merge_runs(acc: &mut Run, other: Run, sketch: bool) {
    if acc.is_empty() {
        *acc = other;
        return;
    }
    // The common case: both cover the same buckets, so merge in place.
    if acc.len() == other.len() && acc.iter().zip(&other).all(|(a, b)| a.0 == b.0) {
        for (a, b) in acc.iter_mut().zip(&other) {
            a.1.merge_with(&b.1, sketch);
        }
        return;
    }
    let mut out: Run = Vec::with_capacity(acc.len().max(other.len()));
    let mut a = std::mem::take(acc).into_iter().peekable();
    let mut b = other.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                if let (Some(mut x), Some(y)) = (a.next(), b.next()) {
                    x.1.merge_with(&y.1, sketch);
                    out.push(x);
                }
                continue;
            }
            (Some(x), Some(y)) => x.0 < y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next);
    }
    *acc = out;
}

/// See [`Filter`] for the semantics.
pub fn matches(dims: Dims<'_>, filters: &[Filter]) -> bool {
    let mut positive_keys_seen: Vec<(&str, bool)> = Vec::new();
    for f in filters {
        let actual = dims.get(&f.key);
        if f.negate {
            if actual == Some(f.value.as_str()) {
                return false;
            }
        } else {
            let hit = actual == Some(f.value.as_str());
            match positive_keys_seen.iter_mut().find(|(k, _)| *k == f.key) {
                Some((_, any)) => *any |= hit,
                None => positive_keys_seen.push((&f.key, hit)),
            }
        }
    }
    positive_keys_seen.iter().all(|(_, any)| *any)
}

pub fn group_key(dims: Dims<'_>, group_by: &[String]) -> GroupKey {
    group_by
        .iter()
        .filter_map(|k| dims.get(k).map(|v| (k.clone(), v.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::DataPoint;

    fn point(metric: &str, ts: i64, v: f64, dims: &[(&str, &str)]) -> DataPoint {
        let mut d: Dimensions = dims
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        d.sort();
        DataPoint {
            metric: metric.into(),
            timestamp_ms: ts,
            value: v,
            dimensions: d,
        }
    }

    fn one(b: &ShardBatch) -> ShardEntry {
        b.clone().into()
    }

    fn batch(points: Vec<DataPoint>) -> ShardBatch {
        ShardBatch {
            shard: 0,
            received_ms: 1_000_000,
            points: points.into(),
            batch_id: None,
            hashes: Default::default(),
            encoded: Default::default(),
        }
    }

    fn query(metric: &str, filters: Vec<Filter>, group_by: &[&str]) -> ShardQuery {
        ShardQuery {
            metric: metric.into(),
            filters,
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            start_ms: 0,
            end_ms: 100_000,
            bucketing: Bucketing::Aligned(10_000),
            source: Source::Raw,
            sketch: false,
        }
    }

    #[test]
    fn apply_is_idempotent_per_index_and_buckets_by_event_time() {
        let mut s = ShardState::new(0, Layout::default());
        let b = batch(vec![
            point("clicks", 9_999, 1.0, &[("country", "de")]),
            point("clicks", 10_000, 2.0, &[("country", "de")]),
            point("clicks", 1_000, 4.0, &[("country", "fr")]),
        ]);
        s.apply(1, &one(&b));
        s.apply(1, &one(&b));
        assert_eq!(s.applied_index(), 1);
        let p = s.query(&query("clicks", vec![], &[]));
        let buckets = &p[&vec![]];
        assert_eq!(buckets[0].0, 0);
        assert_eq!(buckets[0].1.count, 2);
        assert_eq!(buckets[0].1.sum, 5.0);
        assert_eq!((buckets[1].0, buckets[1].1.sum), (10_000, 2.0));
    }

    /// Raw points, the 1 m level and a sliding window over both answer alike.
    #[test]
    fn raw_levels_and_windows_agree() {
        let mut s = ShardState::new(0, Layout::default());
        let pts: Vec<DataPoint> = (0..600)
            .map(|i| {
                point(
                    "m",
                    1_000_000 + i * 997,
                    (i % 17) as f64,
                    &[("h", if i % 2 == 0 { "a" } else { "b" })],
                )
            })
            .collect();
        s.apply(1, &one(&batch(pts.clone())));
        let mut q = query("m", vec![], &[]);
        q.start_ms = 0;
        q.end_ms = 3_000_000;
        q.bucketing = Bucketing::Aligned(60_000);
        q.sketch = true;
        let raw = s.query(&q);
        q.source = Source::Level(0);
        let level = s.query(&q);
        let (r, l) = (&raw[&vec![]], &level[&vec![]]);
        assert_eq!(r.len(), l.len());
        for (a, b) in r.iter().zip(l) {
            assert_eq!(a.0, b.0);
            assert_eq!(
                (a.1.count, a.1.min, a.1.max, a.1.last),
                (b.1.count, b.1.min, b.1.max, b.1.last)
            );
            assert!((a.1.sum - b.1.sum).abs() < 1e-9);
            assert_eq!(a.1.quantile(0.9), b.1.quantile(0.9));
        }
        // A window with ragged edges: raw edges + whole minutes in the middle.
        let (start, end) = (1_000_000 + 30_123, 1_000_000 + 500_456);
        q.start_ms = start;
        q.end_ms = end;
        q.bucketing = Bucketing::Whole;
        q.source = Source::Window(0);
        let w = &s.query(&q)[&vec![]];
        let want: Vec<f64> = pts
            .iter()
            .filter(|p| p.timestamp_ms >= start && p.timestamp_ms < end)
            .map(|p| p.value)
            .collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].1.count, want.len() as u64);
        assert_eq!(w[0].1.sum, want.iter().sum::<f64>());
    }

    #[test]
    fn an_entry_applies_its_batches_in_order_and_a_key_once_even_twice_in_one_entry() {
        let mut s = ShardState::new(0, Layout::default());
        let keyed = |id: &str, v: f64| ShardBatch {
            batch_id: Some(id.into()),
            ..batch(vec![point("m", 1, v, &[("a", "b")])])
        };
        let entry = ShardEntry::new(vec![keyed("k1", 1.0), keyed("k2", 2.0), keyed("k1", 4.0)]);
        let applied: Vec<f64> = s
            .apply(1, &entry)
            .iter()
            .map(|b| b.points.iter().next().unwrap().value)
            .collect();
        assert_eq!(applied, [1.0, 2.0]);
        assert_eq!(s.applied_index(), 1);
        // The same entry again (a replayed log): nothing.
        assert!(s.apply(1, &entry).is_empty());
        // The key in a later entry: skipped; a new key: applied.
        let later = ShardEntry::new(vec![keyed("k2", 8.0), keyed("k3", 16.0)]);
        assert_eq!(s.apply(2, &later).len(), 1);
        let sum: f64 = s.query(&query("m", vec![], &[]))[&vec![]]
            .iter()
            .map(|c| c.1.sum)
            .sum();
        assert_eq!(sum, 1.0 + 2.0 + 16.0);
    }

    #[test]
    fn filters_and_group_by() {
        let mut s = ShardState::new(0, Layout::default());
        s.apply(
            1,
            &ShardEntry::from(batch(vec![
                point("c", 1, 1.0, &[("country", "de"), ("os", "ios")]),
                point("c", 1, 2.0, &[("country", "fr"), ("os", "ios")]),
                point("c", 1, 4.0, &[("country", "us")]),
            ])),
        );
        let f = |k: &str, v: &str, n| Filter {
            key: k.into(),
            value: v.into(),
            negate: n,
        };
        let sum = |p: Partial| {
            p.values()
                .flat_map(|b| b.iter())
                .map(|c| c.1.sum)
                .sum::<f64>()
        };
        assert_eq!(
            sum(s.query(&query("c", vec![f("country", "de", false)], &[]))),
            1.0
        );
        assert_eq!(
            sum(s.query(&query(
                "c",
                vec![f("country", "de", false), f("country", "fr", false)],
                &[]
            ))),
            3.0
        );
        assert_eq!(
            sum(s.query(&query("c", vec![f("os", "ios", true)], &[]))),
            4.0
        );
        let grouped = s.query(&query("c", vec![], &["os"]));
        assert_eq!(grouped.len(), 2, "series without `os` form their own group");
        assert_eq!(sum(s.query(&query("nope", vec![], &[]))), 0.0);
    }

    #[test]
    fn snapshot_round_trip_keeps_state() {
        let mut s = ShardState::new(3, Layout::default());
        s.apply(7, &one(&batch(vec![point("m", 5, 1.5, &[("a", "b")])])));
        let bytes = protocol::codec::encode(&s.to_snapshot()).expect("encode");
        let back: Snapshot = protocol::codec::decode(&bytes).expect("decode");
        let r = ShardState::from_snapshot(back);
        assert_eq!(r.applied_index(), 7);
        assert_eq!(r.shard(), 3);
        assert_eq!(r.metrics()["m"], 1);
        s.apply(8, &one(&batch(vec![point("m", 6, 1.0, &[("a", "b")])])));
        assert_eq!(s.stats().series, 1);
    }

    #[test]
    fn a_batch_as_received_applies_like_the_batch_made_here() {
        // A follower applies the points where they lie in the bytes its leader sent; its
        // state must come out exactly as the leader's, series, rollups and all.
        let made: Vec<ShardBatch> = (0..4)
            .map(|round| {
                batch(
                    (0..50)
                        .map(|i| {
                            let host = format!("h{}", i % 7);
                            let os = if i % 3 == 0 { "ios" } else { "android" };
                            point(
                                "m",
                                round * 700 + i,
                                i as f64,
                                &[("host", &host), ("os", os)],
                            )
                        })
                        .chain([point("other", round, 1.0, &[])])
                        .collect(),
                )
            })
            .collect();
        let mut here = ShardState::new(1, Layout::default());
        let mut there = ShardState::new(1, Layout::default());
        for (i, b) in made.iter().enumerate() {
            let bytes = protocol::codec::encode(b).expect("encode");
            let received = protocol::codec::decode_shard_batch(&bytes).expect("decode");
            assert!(matches!(
                received.points,
                protocol::batch::Points::Encoded(_)
            ));
            assert_eq!(here.apply(i as u64 + 1, &one(b)).len(), 1);
            assert_eq!(there.apply(i as u64 + 1, &one(&received)).len(), 1);
        }
        let snap = |s: &mut ShardState| protocol::codec::encode(&s.to_snapshot()).expect("encode");
        assert_eq!(snap(&mut here), snap(&mut there));
        assert_eq!(there.stats().series, 7 * 2 + 1);
    }

    #[test]
    fn rollups_come_out_the_same_however_long_points_are_held_back() {
        // Settled after every batch, or only when the buffer fills or something reads the
        // rollups: the same state, and every read sees every point applied.
        let mut eager = ShardState::new(2, Layout::default());
        let mut lazy = ShardState::new(2, Layout::default());
        let mut total = 0.0;
        for round in 0..40i64 {
            let pts: Vec<DataPoint> = (0..500i64)
                .map(|i| {
                    let host = format!("h{}", (i * 7 + round) % 37);
                    // Out of order within and across batches, spanning several minutes.
                    let ts = 1_000_000 + ((i * 7919 + round * 104_729) % 600) * 1_000;
                    let v = ((i * 31 + round) % 97) as f64 - 40.5;
                    point("m", ts, v, &[("host", &host)])
                })
                .collect();
            total += pts.iter().map(|p| p.value).sum::<f64>();
            let b = batch(pts);
            eager.apply(round as u64 + 1, &one(&b));
            eager.settle();
            lazy.apply(round as u64 + 1, &one(&b));
        }
        assert!(
            !lazy.pending.is_empty(),
            "the last points are still held back"
        );
        let q = ShardQuery {
            start_ms: 0,
            end_ms: 10_000_000,
            bucketing: Bucketing::Aligned(10_000_000),
            source: Source::Level(0),
            ..query("m", vec![], &[])
        };
        let got: f64 = lazy.query(&q)[&vec![]].iter().map(|(_, c)| c.sum).sum();
        assert!((got - total).abs() < 1e-6, "{got} != {total}");
        let snap = |s: &mut ShardState| protocol::codec::encode(&s.to_snapshot()).expect("encode");
        assert_eq!(snap(&mut eager), snap(&mut lazy));
    }
}
