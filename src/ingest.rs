//! Ingestion: admission of validated points before they reach the log.
//!
//! Parsing and per-point validation live in `protocol` (JSON and line protocol). What needs
//! node state is here: the per-metric cardinality limit. A batch is admitted whole or not at
//! all, before anything is written, so a refused batch leaves no trace in the log.

use dashmap::{DashMap, DashSet};
use protocol::DataPoint;

use crate::error::{Error, Result};

/// Known series (by their 64-bit hash, used as is: hashing a hash again per point cost more
/// than the lookup) and series counts per metric.
///
/// Counting by hash means two series whose hashes collide count as one; at 64 bits that is
/// one chance in ~10^19 per pair, and the only effect is admitting one series more.
pub struct Admission {
    known: DashSet<u64, nohash_hasher::BuildNoHashHasher<u64>>,
    per_metric: DashMap<String, u64>,
    limit: u64,
    refused: std::sync::atomic::AtomicU64,
}

impl Admission {
    pub fn new(limit: u64) -> Self {
        Self {
            known: DashSet::default(),
            per_metric: DashMap::new(),
            limit,
            refused: Default::default(),
        }
    }

    /// Registers the series a recovered shard already holds.
    pub fn register_existing<'a>(&self, series: impl IntoIterator<Item = (&'a str, u64)>) {
        for (metric, hash) in series {
            if self.known.insert(hash) {
                *self.per_metric.entry(metric.to_owned()).or_insert(0) += 1;
            }
        }
    }

    /// Admits the batch if no metric would pass its cardinality limit; registers its new series.
    pub fn admit(&self, points: &[DataPoint], hashes: &[u64]) -> Result<()> {
        // First pass: count the new series per metric without registering anything.
        let mut new: Vec<(&str, u64, usize)> = Vec::new(); // metric, new series, first index
        let mut seen_in_batch = std::collections::HashSet::new();
        for (i, (p, h)) in points.iter().zip(hashes).enumerate() {
            if self.known.contains(h) || !seen_in_batch.insert(*h) {
                continue;
            }
            match new.iter_mut().find(|(m, _, _)| *m == p.metric) {
                Some(entry) => entry.1 += 1,
                None => new.push((&p.metric, 1, i)),
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        for &(metric, count, index) in &new {
            let have = self.per_metric.get(metric).map_or(0, |c| *c);
            if have + count > self.limit {
                self.refused
                    .fetch_add(points.len() as u64, std::sync::atomic::Ordering::Relaxed);
                return Err(Error::Cardinality {
                    index,
                    metric: metric.to_owned(),
                    limit: self.limit,
                });
            }
        }
        for (p, h) in points.iter().zip(hashes) {
            if self.known.insert(*h) {
                *self.per_metric.entry(p.metric.to_string()).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    pub fn series(&self) -> u64 {
        self.known.len() as u64
    }

    /// Points refused for the cardinality limit since start.
    pub fn refused_points(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(metric: &str, host: &str) -> DataPoint {
        DataPoint {
            metric: metric.into(),
            timestamp_ms: 0,
            value: 1.0,
            dimensions: vec![("host".into(), host.into())],
        }
    }

    #[test]
    fn limit_is_per_metric_and_all_or_nothing() {
        let a = Admission::new(2);
        let pts = vec![p("cpu", "a"), p("cpu", "a"), p("cpu", "b"), p("mem", "a")];
        let h: Vec<u64> = pts
            .iter()
            .map(|p| protocol::point::series_hash(&p.metric, &p.dimensions))
            .collect();
        a.admit(&pts, &h).expect("within the limit");
        assert_eq!(a.series(), 3);
        let more = vec![p("mem", "b"), p("cpu", "c")];
        let h2: Vec<u64> = more
            .iter()
            .map(|p| protocol::point::series_hash(&p.metric, &p.dimensions))
            .collect();
        let err = a.admit(&more, &h2).expect_err("cpu is full");
        assert!(
            matches!(err, Error::Cardinality { index: 1, .. }),
            "{err:?}"
        );
        assert_eq!(a.series(), 3, "a refused batch registers nothing");
        a.admit(&pts, &h).expect("known series are always admitted");
    }
}
