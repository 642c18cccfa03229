//! Live watches: the incremental partial aggregates a shard emits as it applies batches.
//!
//! A watch is registered with the shard actor in the same message that answers its initial
//! query, so the snapshot covers exactly the batches applied before it and every later batch
//! arrives as a delta: nothing is counted twice or missed. Deltas are computed from the
//! batch's points alone (never by re-reading history) and handed to the watch's sink.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::ShardBatch;

use super::cell::Cell;
use super::state::{group_key, matches, Partial, ShardQuery};

/// Receives one delta per applied batch that touched the watch: `(shard, partial)`.
pub type DeltaSink = Arc<dyn Fn(u32, Partial) + Send + Sync>;

pub struct Watch {
    pub id: u64,
    /// Metric, filters, group_by, bucketing and whether sketches are needed; the range is
    /// only used for the initial answer.
    pub query: ShardQuery,
    pub sink: DeltaSink,
}

#[derive(Default)]
pub struct Watchers {
    by_metric: HashMap<String, Vec<Arc<Watch>>>,
}

impl Watchers {
    pub fn add(&mut self, w: Arc<Watch>) {
        self.by_metric
            .entry(w.query.metric.clone())
            .or_default()
            .push(w);
    }

    pub fn remove(&mut self, id: u64) {
        self.by_metric.retain(|_, list| {
            list.retain(|w| w.id != id);
            !list.is_empty()
        });
    }

    /// Folds `batch` into one partial per interested watch and hands each to its sink.
    /// Sequence numbers are the batch's arrival stamps, as in `ShardState::apply`.
    pub fn emit(&self, shard: u32, batch: &ShardBatch) {
        if self.by_metric.is_empty() {
            return;
        }
        let base = (batch.received_ms.max(0) as u64) << 21;
        let mut out: HashMap<u64, (Arc<Watch>, Partial)> = HashMap::new();
        for (pos, p) in batch.points.iter().enumerate() {
            let Some(list) = self.by_metric.get(p.metric) else {
                continue;
            };
            let seq = base | (pos as u64 & 0x1F_FFFF);
            for w in list {
                if !matches(p.dims, &w.query.filters) {
                    continue;
                }
                let label = w.query.label(p.timestamp_ms);
                let (_, partial) = out
                    .entry(w.id)
                    .or_insert_with(|| (w.clone(), Partial::new()));
                let run = partial
                    .entry(group_key(p.dims, &w.query.group_by))
                    .or_default();
                match run.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, cell)) => cell.add_with(p.value, p.timestamp_ms, seq, w.query.sketch),
                    None => run.push((label, Cell::new(p.value, p.timestamp_ms, seq))),
                }
            }
        }
        for (_, (w, mut partial)) in out {
            for run in partial.values_mut() {
                run.sort_by_key(|c| c.0);
            }
            (w.sink)(shard, partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::state::{Bucketing, Filter, Source};
    use protocol::DataPoint;

    #[test]
    fn a_batch_as_received_emits_what_the_batch_made_here_does() {
        // A leader sent a forward applies the points where they lie in the received bytes;
        // live watches must see the same deltas as from a batch parsed on the node.
        let got: Arc<std::sync::Mutex<Vec<Partial>>> = Default::default();
        let sink_got = got.clone();
        let mut watchers = Watchers::default();
        watchers.add(Arc::new(Watch {
            id: 1,
            query: ShardQuery {
                metric: "clicks".into(),
                filters: vec![Filter {
                    key: "os".into(),
                    value: "ios".into(),
                    negate: true,
                }],
                group_by: vec!["country".into()],
                start_ms: 0,
                end_ms: i64::MAX,
                bucketing: Bucketing::Aligned(1_000),
                source: Source::Raw,
                sketch: true,
            },
            sink: Arc::new(move |_, p| sink_got.lock().expect("lock").push(p)),
        }));
        let points: Vec<DataPoint> = (0..60)
            .map(|i| DataPoint {
                metric: if i % 10 == 0 { "other" } else { "clicks" }.into(),
                timestamp_ms: i * 250,
                value: i as f64,
                dimensions: vec![
                    ("country".into(), ["de", "fr", "jp"][i as usize % 3].into()),
                    ("os".into(), ["ios", "android"][i as usize % 2].into()),
                ],
            })
            .collect();
        let made = ShardBatch {
            shard: 0,
            received_ms: 5,
            points: points.into(),
            batch_id: None,
            hashes: Default::default(),
            encoded: Default::default(),
        };
        let bytes = protocol::codec::encode(&made).expect("encode");
        let received = protocol::codec::decode_shard_batch(&bytes).expect("decode");
        watchers.emit(0, &made);
        watchers.emit(0, &received);
        let got = got.lock().expect("lock");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), 3, "three countries, iOS filtered out");
        assert_eq!(got[0], got[1]);
    }
}
