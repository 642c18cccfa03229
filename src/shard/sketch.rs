//! A mergeable quantile sketch in the style of DDSketch (Masson, Rim, Lee; VLDB 2019).
//!
//! Values are mapped to logarithmic bins: bin `k` holds values in `(γ^(k-1), γ^k]` with
//! `γ = (1 + α) / (1 − α)`, and reports `2γ^k / (γ + 1)`, which is within relative error `α`
//! of every value in the bin. Positive and negative values have their own stores (by
//! magnitude); magnitudes below [`MIN_MAGNITUDE`] count as zero.
//!
//! **Guarantee:** with `α = RELATIVE_ACCURACY = 1 %`, `quantile(q)` is within 1 % relative
//! error of the exact order statistic of rank `⌊q·(n−1)⌋` (0-based), for values whose
//! magnitude is at least `MIN_MAGNITUDE` — as long as no store has collapsed (more than
//! [`MAX_BINS`] distinct bins, which takes values spanning about 40 orders of magnitude; the
//! lowest bins then merge, and only quantiles falling in them lose the bound).
//!
//! Bins are stored sparsely, in one sorted list for both signs and zero (8 bytes a bin: an
//! ordering key and a count) behind a single pointer-sized handle (`ThinVec`, whose length
//! and capacity live in the allocation): one rollup cell per series per minute carries a
//! sketch, so an empty sketch costs 8 bytes and no allocation, and a one-bin sketch one
//! 24-byte allocation (it was 96 bytes in two, with a store per sign, each growing from four
//! bins). Keys are `i16`: with
//! 1 % accuracy that covers magnitudes from `MIN_MAGNITUDE` to about 10^284 (larger ones share
//! the top bin). A bin's count saturates at 2^32 − 1 (four billion equal-binned values in one
//! series' bucket). Merging adds counts bin by bin, so merging sketches is exact: the merge of
//! two sketches equals the sketch of the union.
//!
//! Encoded (snapshots, query fragments) as it was before the single list: a positive and a
//! negative store of `(key, count)` bins, the zero count and the total count.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Smaller magnitudes are treated as zero.
pub const MIN_MAGNITUDE: f64 = 1e-9;
/// Distinct bins per sign before the lowest magnitudes are collapsed.
pub const MAX_BINS: usize = 2048;

const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

fn ln_gamma() -> f64 {
    GAMMA.ln()
}

fn key(magnitude: f64) -> i16 {
    // `as` saturates: magnitudes past the i16 range share the extreme bins.
    (magnitude.ln() / ln_gamma()).ceil() as i16
}

fn representative(key: i16) -> f64 {
    2.0 * GAMMA.powi(key as i32) / (GAMMA + 1.0)
}

/// Where a bin sorts: negative values by descending magnitude, then zero, then positive
/// values by ascending magnitude — so the list is in value order. The three ranges are
/// disjoint (`|key| < 2^15`).
const SIDE: i32 = 1 << 16;
const ZERO: i32 = 0;

fn positive(k: i16) -> i32 {
    SIDE + k as i32
}

fn negative(k: i16) -> i32 {
    -SIDE - k as i32
}

/// A bin's key back, with its sign: `None` for the zero bin.
fn decode(slot: i32) -> Option<(bool, i16)> {
    match slot {
        ZERO => None,
        s if s > 0 => Some((true, (s - SIDE) as i16)),
        s => Some((false, (-s - SIDE) as i16)),
    }
}

/// Sorted by slot; counts > 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    bins: ThinVec<(i32, u32)>,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// Adds a finite value (callers validate; a non-finite value is ignored).
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            debug_assert!(false, "non-finite value reached the sketch");
            return;
        }
        let m = v.abs();
        let slot = if m < MIN_MAGNITUDE {
            ZERO
        } else if v > 0.0 {
            positive(key(m))
        } else {
            negative(key(m))
        };
        self.add_bin(slot, 1);
    }

    fn add_bin(&mut self, slot: i32, n: u32) {
        match self.bins.binary_search_by_key(&slot, |b| b.0) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(n),
            Err(i) => {
                if self.bins.len() == self.bins.capacity() {
                    // By half rather than doubling (from one bin, not four): most cells hold
                    // values of a few bins, often one.
                    self.bins.reserve_exact((self.bins.len() / 2).max(1));
                }
                self.bins.insert(i, (slot, n));
                self.collapse();
            }
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.bins = other.bins.clone();
            return;
        }
        let mut out = ThinVec::with_capacity(self.bins.len() + other.bins.len());
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    out.push((x.0, x.1.saturating_add(y.1)));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    out.push(**x);
                    a.next();
                }
                (Some(_), Some(y)) => {
                    out.push(**y);
                    b.next();
                }
                (Some(x), None) => {
                    out.push(**x);
                    a.next();
                }
                (None, Some(y)) => {
                    out.push(**y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.bins = out;
        self.collapse();
    }

    /// Keeps at most MAX_BINS bins per sign by folding the lowest magnitudes of that sign
    /// into one bin (at the largest magnitude folded).
    fn collapse(&mut self) {
        let neg_end = self.bins.partition_point(|b| b.0 < ZERO);
        if neg_end > MAX_BINS {
            // Negative bins run from the largest magnitude down: the lowest are at the end.
            let keep = MAX_BINS - 1;
            let folded = self.bins[keep..neg_end]
                .iter()
                .fold(0u32, |acc, b| acc.saturating_add(b.1));
            self.bins[keep].1 = folded;
            self.bins.drain(keep + 1..neg_end);
        }
        let pos_start = self.bins.partition_point(|b| b.0 <= ZERO);
        let pos = self.bins.len() - pos_start;
        if pos > MAX_BINS {
            let extra = pos - MAX_BINS;
            let at = pos_start + extra;
            let folded = self.bins[pos_start..=at]
                .iter()
                .fold(0u32, |acc, b| acc.saturating_add(b.1));
            self.bins[at].1 = folded;
            self.bins.drain(pos_start..at);
        }
    }

    pub fn count(&self) -> u64 {
        self.bins.iter().map(|b| b.1 as u64).sum()
    }

    /// The value at quantile `q` (clamped to [0, 1]); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        let value = |slot| match decode(slot) {
            None => 0.0,
            Some((true, k)) => representative(k),
            Some((false, k)) => -representative(k),
        };
        for &(slot, n) in &self.bins {
            seen += n as u64;
            if seen > rank {
                return Some(value(slot));
            }
        }
        self.bins.last().map(|b| value(b.0))
    }

    pub fn heap_bytes(&self) -> usize {
        if self.bins.capacity() == 0 {
            0
        } else {
            // ThinVec's header: length and capacity.
            2 * std::mem::size_of::<usize>()
                + self.bins.capacity() * std::mem::size_of::<(i32, u32)>()
        }
    }

    #[cfg(test)]
    fn bins(&self) -> usize {
        self.bins.iter().filter(|b| b.0 != ZERO).count()
    }

    #[cfg(test)]
    fn check_counts(&self) -> bool {
        self.bins.windows(2).all(|w| w[0].0 < w[1].0) && self.bins.iter().all(|b| b.1 > 0)
    }
}

/// The encoded form (see the module's docs).
#[derive(Serialize, Deserialize)]
struct Wire<P, N> {
    positive: Store<P>,
    negative: Store<N>,
    zero: u64,
    count: u64,
}

#[derive(Serialize, Deserialize)]
struct Store<B> {
    bins: B,
}

/// One sign's bins as the encoded form lists them (ascending magnitude), without copying.
struct Side<'a> {
    bins: &'a [(i32, u32)],
    negative: bool,
}

impl Serialize for Side<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bin = |&(slot, n): &(i32, u32)| (decode(slot).map_or(0, |(_, k)| k), n);
        if self.negative {
            // Ours run from the largest magnitude down.
            s.collect_seq(self.bins.iter().rev().map(bin))
        } else {
            s.collect_seq(self.bins.iter().map(bin))
        }
    }
}

impl Serialize for Sketch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let neg_end = self.bins.partition_point(|b| b.0 < ZERO);
        let pos_start = self.bins.partition_point(|b| b.0 <= ZERO);
        Wire {
            positive: Store {
                bins: Side {
                    bins: &self.bins[pos_start..],
                    negative: false,
                },
            },
            negative: Store {
                bins: Side {
                    bins: &self.bins[..neg_end],
                    negative: true,
                },
            },
            zero: self.bins[neg_end..pos_start]
                .first()
                .map_or(0, |b| b.1 as u64),
            count: self.count(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sketch {
    /// Whatever the bytes hold (a damaged snapshot included), the result keeps the list's
    /// rules: sorted, one bin per slot, no empty bin, at most MAX_BINS per sign.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::<Vec<(i16, u32)>, Vec<(i16, u32)>>::deserialize(d)?;
        let zero = (w.zero > 0).then(|| (ZERO, w.zero.min(u32::MAX as u64) as u32));
        let mut bins: Vec<(i32, u32)> = w
            .positive
            .bins
            .into_iter()
            .map(|(k, n)| (positive(k), n))
            .chain(w.negative.bins.into_iter().map(|(k, n)| (negative(k), n)))
            .chain(zero)
            .filter(|b| b.1 > 0)
            .collect();
        bins.sort_by_key(|b| b.0);
        let mut out = Sketch {
            bins: ThinVec::with_capacity(bins.len()),
        };
        for (slot, n) in bins {
            match out.bins.last_mut() {
                Some(last) if last.0 == slot => last.1 = last.1.saturating_add(n),
                _ => out.bins.push((slot, n)),
            }
        }
        out.collapse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v[(q * (v.len() - 1) as f64).floor() as usize]
    }

    fn within(got: f64, want: f64) -> bool {
        if want.abs() < MIN_MAGNITUDE {
            return got.abs() <= MIN_MAGNITUDE * (1.0 + RELATIVE_ACCURACY);
        }
        (got - want).abs() <= RELATIVE_ACCURACY * want.abs() * (1.0 + 1e-9)
    }

    /// The encoding before bins shared one list: snapshots and query fragments written by
    /// either read the same.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct OldStore {
        bins: Vec<(i16, u32)>,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct OldSketch {
        positive: OldStore,
        negative: OldStore,
        zero: u64,
        count: u64,
    }

    #[test]
    fn encodes_as_the_two_store_form() {
        let mut s = Sketch::new();
        for v in [3.0, -2.0, 0.0, 3.0, -50.0, 1e6, 0.0, -2.0] {
            s.add(v);
        }
        let old = OldSketch {
            positive: OldStore {
                bins: vec![(key(3.0), 2), (key(1e6), 1)],
            },
            negative: OldStore {
                bins: vec![(key(2.0), 2), (key(50.0), 1)],
            },
            zero: 2,
            count: 8,
        };
        let bytes = protocol::codec::encode(&s).expect("encode");
        assert_eq!(bytes, protocol::codec::encode(&old).expect("encode"));
        let back: Sketch = protocol::codec::decode(&bytes).expect("decode");
        assert_eq!(back, s);
        assert_eq!(back.quantile(0.0), s.quantile(0.0));
        assert!(within(back.quantile(0.0).unwrap(), -50.0));
        // Damaged input (unsorted, repeated and empty bins) decodes to a well-formed sketch.
        let damaged = OldSketch {
            positive: OldStore {
                bins: vec![(9, 1), (3, 0), (9, 2), (1, 4)],
            },
            negative: OldStore { bins: vec![] },
            zero: 0,
            count: 99,
        };
        let back: Sketch =
            protocol::codec::decode(&protocol::codec::encode(&damaged).expect("encode"))
                .expect("decode");
        assert!(back.check_counts());
        assert_eq!(back.count(), 7);
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(Sketch::new().quantile(0.5), None);
        let mut s = Sketch::new();
        s.add(42.0);
        assert!(within(s.quantile(0.99).unwrap(), 42.0));
        s.add(-3.0);
        s.add(0.0);
        assert!(within(s.quantile(0.0).unwrap(), -3.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!(s.check_counts());
    }

    #[test]
    fn bins_stay_bounded() {
        // 26 decades densely: about 3 000 distinct bins, more than MAX_BINS.
        let v: Vec<f64> = (0..60_000).map(|k| 1.001f64.powi(k)).collect();
        let mut s = Sketch::new();
        for x in &v {
            s.add(*x);
        }
        assert!(s.bins() <= MAX_BINS, "{}", s.bins());
        assert!(s.check_counts());
        // The top quantiles keep the bound (collapse only merges the lowest bins).
        for q in [0.9, 0.99, 1.0] {
            assert!(within(s.quantile(q).unwrap(), exact(&v, q)), "q={q}");
        }
        // The same for negative values: the extreme quantiles are the most negative.
        let neg: Vec<f64> = v.iter().map(|x| -x).collect();
        let mut n = Sketch::new();
        for x in &neg {
            n.add(*x);
        }
        assert!(n.bins() <= MAX_BINS, "{}", n.bins());
        assert!(n.check_counts());
        assert_eq!(n.count(), neg.len() as u64);
        for q in [0.0, 0.01, 0.1] {
            assert!(within(n.quantile(q).unwrap(), exact(&neg, q)), "q={q}");
        }
        // Absurd magnitudes share the extreme bin instead of overflowing.
        s.add(1e300);
        s.add(-1e300);
        assert!(s.check_counts());
    }

    proptest! {
        #[test]
        fn quantiles_within_the_bound(
            values in proptest::collection::vec(prop_oneof![-1e6f64..1e6, Just(0.0), 1e-3f64..1e3], 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut s = Sketch::new();
            for v in &values { s.add(*v); }
            let got = s.quantile(q).unwrap();
            let want = exact(&values, q);
            prop_assert!(within(got, want), "q={q}: got {got}, want {want}");
        }

        #[test]
        fn merge_equals_the_sketch_of_the_union(
            a in proptest::collection::vec(-1e9f64..1e9, 0..200),
            b in proptest::collection::vec(-1e9f64..1e9, 0..200),
        ) {
            let (mut sa, mut sb, mut su) = (Sketch::new(), Sketch::new(), Sketch::new());
            for v in &a { sa.add(*v); su.add(*v); }
            for v in &b { sb.add(*v); su.add(*v); }
            sa.merge(&sb);
            prop_assert_eq!(sa, su);
        }
    }
}
