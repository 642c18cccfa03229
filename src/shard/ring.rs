//! A series' ring of recent raw points: an open Gorilla block that compresses points as they
//! arrive, sealed every [`BLOCK_POINTS`] points, with sealed blocks dropped one by one as they
//! age out.
//!
//! 512 points per block: large enough that the block's fixed cost (first timestamp and value
//! raw, 128 bits, and the allocation) is amortised to well under a bit per point, small enough
//! that a range query decodes little it does not need and retention drops data in small steps.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::gorilla::{BlockEncoder, CompressedBlock};

pub const BLOCK_POINTS: usize = 512;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ring {
    head: BlockEncoder,
    blocks: VecDeque<CompressedBlock>,
    sealed_points: usize,
}

impl Ring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a point; points may arrive in any order.
    pub fn push(&mut self, ts: i64, v: f64) {
        self.head.push(ts, v);
        if self.head.len() >= BLOCK_POINTS {
            let block = self.head.finish();
            self.sealed_points += block.len();
            self.blocks.push_back(block);
        }
    }

    /// Drops sealed blocks whose newest point is older than `cutoff`. A block that straddles
    /// the cutoff stays whole (queries filter by time), so up to one block more than the
    /// retention is kept.
    pub fn evict_before(&mut self, cutoff: i64) {
        while self.blocks.front().is_some_and(|b| b.max_ts() < cutoff) {
            if let Some(b) = self.blocks.pop_front() {
                self.sealed_points -= b.len();
            }
        }
        if self.blocks.is_empty() && !self.head.is_empty() && self.head.max_ts() < cutoff {
            self.head = BlockEncoder::new();
        }
    }

    /// Appends the points with `start <= ts < end` to `out`, in arrival order (not sorted).
    pub fn range(&self, start: i64, end: i64, out: &mut Vec<(i64, f64)>) {
        for b in &self.blocks {
            if b.max_ts() < start || b.min_ts() >= end {
                continue;
            }
            out.extend(b.iter().filter(|p| p.0 >= start && p.0 < end));
        }
        if !self.head.is_empty() && self.head.max_ts() >= start && self.head.min_ts() < end {
            out.extend(self.head.iter().filter(|p| p.0 >= start && p.0 < end));
        }
    }

    pub fn len(&self) -> usize {
        self.sealed_points + self.head.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.head.heap_bytes()
            + self.blocks.capacity() * std::mem::size_of::<CompressedBlock>()
            + self.blocks.iter().map(|b| b.heap_bytes()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn range_returns_exactly_the_points_in_range(
            points in proptest::collection::vec((0i64..100_000, any::<u64>()), 0..2000),
            start in 0i64..100_000,
            len in 0i64..100_000,
        ) {
            let mut r = Ring::new();
            for &(t, b) in &points { r.push(t, f64::from_bits(b)); }
            prop_assert_eq!(r.len(), points.len());
            let mut got = Vec::new();
            r.range(start, start + len, &mut got);
            let want: Vec<(i64, u64)> = points.iter().copied().filter(|p| p.0 >= start && p.0 < start + len).collect();
            let got: Vec<(i64, u64)> = got.into_iter().map(|(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn eviction_drops_whole_old_blocks() {
        let mut r = Ring::new();
        for i in 0..(3 * BLOCK_POINTS as i64) {
            r.push(i * 1000, i as f64);
        }
        let before = r.heap_bytes();
        r.evict_before(BLOCK_POINTS as i64 * 1000);
        assert_eq!(r.len(), 2 * BLOCK_POINTS);
        assert!(r.heap_bytes() < before);
        r.evict_before(i64::MAX);
        assert!(r.is_empty());
    }
}
