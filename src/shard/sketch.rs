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
//! Bins are stored sparsely (a sorted `Vec` of `(key, count)`, 8 bytes a bin): most cells
//! hold few values, so a dense array per cell would waste memory. Keys are `i16`: with 1 %
//! accuracy that covers magnitudes from `MIN_MAGNITUDE` to about 10^284 (larger ones share
//! the top bin). A bin's count saturates at 2^32 − 1 (four billion equal-binned values in one
//! series' bucket). Merging adds counts bin by bin, so merging
//! sketches is exact: the merge of two sketches equals the sketch of the union.

use serde::{Deserialize, Serialize};

pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Smaller magnitudes are treated as zero.
pub const MIN_MAGNITUDE: f64 = 1e-9;
/// Distinct bins per store before the lowest are collapsed.
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

/// Sorted by key; counts > 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Store {
    bins: Vec<(i16, u32)>,
}

impl Store {
    fn add(&mut self, k: i16, n: u32) {
        match self.bins.binary_search_by_key(&k, |b| b.0) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(n),
            Err(i) => {
                self.bins.insert(i, (k, n));
                self.collapse();
            }
        }
    }

    fn merge(&mut self, other: &Store) {
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.bins = other.bins.clone();
            return;
        }
        let mut out = Vec::with_capacity(self.bins.len() + other.bins.len());
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

    /// Keeps at most MAX_BINS bins by folding the lowest keys into one.
    fn collapse(&mut self) {
        if self.bins.len() <= MAX_BINS {
            return;
        }
        let extra = self.bins.len() - MAX_BINS;
        let folded = self.bins[..=extra]
            .iter()
            .fold(0u32, |acc, b| acc.saturating_add(b.1));
        let key = self.bins[extra].0;
        self.bins.drain(..extra);
        self.bins[0] = (key, folded);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.bins.iter().map(|b| b.1 as u64).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    positive: Store,
    negative: Store,
    zero: u64,
    count: u64,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a finite value (callers validate; a non-finite value is ignored).
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            debug_assert!(false, "non-finite value reached the sketch");
            return;
        }
        let m = v.abs();
        if m < MIN_MAGNITUDE {
            self.zero += 1;
        } else if v > 0.0 {
            self.positive.add(key(m), 1);
        } else {
            self.negative.add(key(m), 1);
        }
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (clamped to [0, 1]); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Most negative first: the negative store by descending magnitude.
        for &(k, n) in self.negative.bins.iter().rev() {
            seen += n as u64;
            if seen > rank {
                return Some(-representative(k));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for &(k, n) in &self.positive.bins {
            seen += n as u64;
            if seen > rank {
                return Some(representative(k));
            }
        }
        // Only reachable if counts disagree (a damaged snapshot): answer the maximum bin.
        self.positive
            .bins
            .last()
            .map(|b| representative(b.0))
            .or(Some(0.0))
    }

    pub fn heap_bytes(&self) -> usize {
        (self.positive.bins.capacity() + self.negative.bins.capacity())
            * std::mem::size_of::<(i16, u32)>()
    }

    #[cfg(test)]
    fn bins(&self) -> usize {
        self.positive.bins.len() + self.negative.bins.len()
    }

    #[cfg(test)]
    fn check_counts(&self) -> bool {
        self.positive.count() + self.negative.count() + self.zero == self.count
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
