//! A rollup cell: the mergeable aggregate of the points of one bucket (of one series, or of
//! many after merging), and the aggregations answered from it.
//!
//! Every field merges exactly: count, min, max, `last` (by event time, then arrival order) and
//! the sketch; `sum` up to floating-point rounding. So a query can merge the cells of many
//! series, shards and finer buckets and get the answer it would get from the raw points.

use serde::{Deserialize, Serialize};

use super::sketch::Sketch;

/// An aggregation a query may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Last,
    Rate,
    P50,
    P90,
    P95,
    P99,
}

impl Agg {
    pub const ALL: [Agg; 11] = [
        Agg::Sum,
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Count,
        Agg::Last,
        Agg::Rate,
        Agg::P50,
        Agg::P90,
        Agg::P95,
        Agg::P99,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::Last => "last",
            Agg::Rate => "rate",
            Agg::P50 => "p50",
            Agg::P90 => "p90",
            Agg::P95 => "p95",
            Agg::P99 => "p99",
        }
    }

    pub fn quantile(self) -> Option<f64> {
        match self {
            Agg::P50 => Some(0.5),
            Agg::P90 => Some(0.9),
            Agg::P95 => Some(0.95),
            Agg::P99 => Some(0.99),
            _ => None,
        }
    }
}

impl std::str::FromStr for Agg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Agg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Agg::ALL.iter().map(|a| a.as_str()).collect();
                format!(
                    "{s:?} is not an aggregation; use one of {}",
                    names.join(", ")
                )
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_ts: i64,
    pub last_seq: u64,
    /// Filled from the second value on (empty, it costs no allocation): with one value,
    /// min == max == that value, and most fine-grained cells of sparse series hold one value.
    /// Encoded as an option, absent when empty (the encoding it had as `Option<Box<_>>`).
    #[serde(with = "optional")]
    sketch: Sketch,
}

mod optional {
    use super::Sketch;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sketch: &Sketch, s: S) -> Result<S::Ok, S::Error> {
        (!sketch.is_empty()).then_some(sketch).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sketch, D::Error> {
        Ok(Option::<Sketch>::deserialize(d)?.unwrap_or_default())
    }
}

impl Cell {
    pub fn new(v: f64, ts: i64, seq: u64) -> Self {
        Self {
            count: 1,
            sum: v,
            min: v,
            max: v,
            last: v,
            last_ts: ts,
            last_seq: seq,
            sketch: Sketch::new(),
        }
    }

    fn sketch_mut(&mut self) -> &mut Sketch {
        if self.sketch.is_empty() && self.count == 1 {
            self.sketch.add(self.min);
        }
        &mut self.sketch
    }

    pub fn add(&mut self, v: f64, ts: i64, seq: u64) {
        self.add_with(v, ts, seq, true);
    }

    /// `add`, keeping the quantile sketch only if `sketch` (queries that ask for no quantile
    /// skip its cost; the cell's quantiles are then meaningless and must not be read).
    pub fn add_with(&mut self, v: f64, ts: i64, seq: u64, sketch: bool) {
        if sketch {
            self.sketch_mut().add(v);
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if (ts, seq, v.to_bits()) > (self.last_ts, self.last_seq, self.last.to_bits()) {
            self.last = v;
            self.last_ts = ts;
            self.last_seq = seq;
        }
    }

    pub fn merge(&mut self, other: &Cell) {
        self.merge_with(other, true);
    }

    /// `merge`, merging sketches only if `sketch` (see [`Cell::add_with`]).
    pub fn merge_with(&mut self, other: &Cell, sketch: bool) {
        if sketch {
            if other.sketch.is_empty() {
                self.sketch_mut().add(other.min);
            } else {
                self.sketch_mut().merge(&other.sketch);
            }
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        // Event time, then arrival order; the value's bits only make exact ties (which a
        // real arrival order never has) merge the same way in any order.
        if (other.last_ts, other.last_seq, other.last.to_bits())
            > (self.last_ts, self.last_seq, self.last.to_bits())
        {
            self.last = other.last;
            self.last_ts = other.last_ts;
            self.last_seq = other.last_seq;
        }
    }

    /// A copy, with the sketch only if `sketch`.
    pub fn copy_with(&self, sketch: bool) -> Cell {
        Cell {
            sketch: if sketch {
                self.sketch.clone()
            } else {
                Sketch::new()
            },
            ..*self
        }
    }

    pub fn quantile(&self, q: f64) -> f64 {
        if self.sketch.is_empty() {
            self.min
        } else {
            self.sketch.quantile(q).unwrap_or(f64::NAN)
        }
    }

    /// The aggregation's value for a bucket of `bucket_ms`. `rate` is events per second over
    /// the bucket: `sum / (bucket_ms / 1000)` — the right reading for event streams (clicks,
    /// requests); counter semantics (increase per second) are a later addition.
    pub fn value(&self, agg: Agg, bucket_ms: i64) -> f64 {
        match agg {
            Agg::Sum => self.sum,
            Agg::Avg => self.sum / self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Count => self.count as f64,
            Agg::Last => self.last,
            Agg::Rate => self.sum / (bucket_ms.max(1) as f64 / 1000.0),
            q => self.quantile(q.quantile().unwrap_or(0.5)),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn direct(points: &[(f64, i64, u64)]) -> Cell {
        let mut c = Cell::new(points[0].0, points[0].1, points[0].2);
        for &(v, t, s) in &points[1..] {
            c.add(v, t, s);
        }
        c
    }

    #[test]
    fn names_and_values() {
        assert_eq!("p95".parse::<Agg>(), Ok(Agg::P95));
        assert!("median".parse::<Agg>().unwrap_err().contains("sum, avg"));
        let mut c = Cell::new(2.0, 10, 1);
        c.add(4.0, 10, 0); // same time, earlier arrival: not last
        c.add(6.0, 5, 9);
        assert_eq!(c.value(Agg::Last, 1000), 2.0);
        assert_eq!(c.value(Agg::Sum, 1000), 12.0);
        assert_eq!(c.value(Agg::Avg, 1000), 4.0);
        assert_eq!(c.value(Agg::Rate, 2000), 6.0);
        assert_eq!(c.value(Agg::Count, 1000), 3.0);
        assert_eq!(Cell::new(7.5, 0, 0).value(Agg::P99, 1000), 7.5);
        assert_eq!(Cell::new(7.5, 0, 0).heap_bytes(), 0);
    }

    proptest! {
        #[test]
        fn merging_any_partition_equals_the_direct_cell(
            points in proptest::collection::vec((-1e6f64..1e6, 0i64..50, 0u64..1000), 1..120),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let want = direct(&points);
            let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(points.len())).collect();
            bounds.push(0);
            bounds.push(points.len());
            bounds.sort();
            bounds.dedup();
            let parts: Vec<Cell> = bounds.windows(2).filter(|w| w[0] < w[1]).map(|w| direct(&points[w[0]..w[1]])).collect();
            // Merge in reverse to exercise commutativity too.
            let mut got = parts.last().unwrap().clone();
            for p in parts.iter().rev().skip(1) {
                got.merge(p);
            }
            prop_assert_eq!(got.count, want.count);
            prop_assert_eq!(got.min, want.min);
            prop_assert_eq!(got.max, want.max);
            prop_assert_eq!((got.last, got.last_ts, got.last_seq), (want.last, want.last_ts, want.last_seq));
            prop_assert!((got.sum - want.sum).abs() <= 1e-9 * want.sum.abs().max(1.0));
            for q in [0.5, 0.9, 0.95, 0.99] {
                prop_assert_eq!(got.quantile(q), want.quantile(q));
            }
        }
    }
}
