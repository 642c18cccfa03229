//! Data points, the rules for names and dimensions (SPEC §1), and series identity.

use serde::{Deserialize, Serialize};

/// Metric names, dimension keys and values: a string kept inline (no allocation) up to 24
/// bytes, which almost every name and value is. Every point carries several, and each node
/// parses or decodes them, stores one copy per series and compares against it; inline
/// strings save an allocation and a free each time and a cache miss on every comparison.
/// Encoded exactly like a `String`.
pub type Name = compact_str::CompactString;

/// One event-time measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataPoint {
    pub metric: Name,
    pub timestamp_ms: i64,
    pub value: f64,
    pub dimensions: Dimensions,
}

/// Sorted by key, keys unique. This canonical order is what makes a series identity.
pub type Dimensions = Vec<(Name, Name)>;

/// Per-request limits on untrusted input.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_points: usize,
    pub max_dimensions: usize,
    pub max_dimension_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_points: 100_000,
            max_dimensions: 32,
            max_dimension_value_bytes: 256,
        }
    }
}

/// What is wrong with one point of a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("data_points[{index}].{field}: {reason}")]
pub struct PointError {
    pub index: usize,
    pub field: String,
    pub reason: String,
}

/// The longest metric name or dimension key, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err("is empty".into());
    };
    if bytes.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes, the limit is {MAX_NAME_BYTES}",
            bytes.len()
        ));
    }
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err(format!(
            "must start with a letter or '_', not {:?}",
            name.chars().next().unwrap_or(' ')
        ));
    }
    if let Some(pos) = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')))
    {
        let ch = name[pos..].chars().next().unwrap_or(' ');
        return Err(format!(
            "contains {ch:?} at byte {pos}; allowed: letters, digits, '_', '.', ':', '-'"
        ));
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_.:-]{0,199}`; `Err` says what is wrong.
pub fn validate_metric_name(name: &str) -> Result<(), String> {
    validate_name(name)
}

/// Dimension keys follow the metric-name pattern.
pub fn validate_dimension_key(key: &str) -> Result<(), String> {
    validate_name(key)
}

/// Sorts by key, rejects duplicate keys, too many pairs, bad keys, values over the byte limit.
pub fn normalize_dimensions(mut dims: Dimensions, limits: &Limits) -> Result<Dimensions, String> {
    if dims.len() > limits.max_dimensions {
        return Err(format!(
            "has {} dimensions, the limit is {}",
            dims.len(),
            limits.max_dimensions
        ));
    }
    for (k, v) in &dims {
        validate_dimension_key(k).map_err(|r| format!("key {k:?} {r}"))?;
        if v.len() > limits.max_dimension_value_bytes {
            return Err(format!(
                "value of {k:?} is {} bytes, the limit is {}",
                v.len(),
                limits.max_dimension_value_bytes
            ));
        }
    }
    dims.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = dims.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("key {:?} appears twice", w[0].0));
    }
    Ok(dims)
}

/// Checks a point built elsewhere (decoded from a QUIC frame): its metric name, a finite
/// value, and its dimensions (sorted here).
pub fn validate_point(
    mut p: DataPoint,
    index: usize,
    limits: &Limits,
) -> Result<DataPoint, PointError> {
    let err = |field: &str, reason: String| PointError {
        index,
        field: field.into(),
        reason,
    };
    validate_metric_name(&p.metric).map_err(|r| err("metric", r))?;
    if !p.value.is_finite() {
        return Err(err("value", format!("{} is not a finite number", p.value)));
    }
    p.dimensions = normalize_dimensions(std::mem::take(&mut p.dimensions), limits)
        .map_err(|r| err("dimensions", r))?;
    Ok(p)
}

/// Seed of the series hash. Never change it: hashes are persisted and place series on shards.
const SERIES_SEED: u64 = 0x5075_6c73_6562_6f61; // "Pulseboa"

/// Stable 64-bit identity of a series: xxh3-64 with a fixed seed over a length-prefixed
/// encoding of the metric and the sorted dimensions (so `("ab","c")` and `("a","bc")` differ).
/// Stable across versions and machines: a test pins a known value.
pub fn series_hash(metric: &str, dims: &Dimensions) -> u64 {
    series_hash_of(metric, crate::batch::Dims::Slice(dims))
}

/// [`series_hash`] of dimensions in either form.
pub fn series_hash_of(metric: &str, dims: crate::batch::Dims<'_>) -> u64 {
    // One-shot over a reused per-thread buffer: the streaming hasher derives its seeded secret
    // on every construction, which cost more than the hashing (this runs for every ingested
    // point, twice). Same bytes, same hash.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        let mut put = |s: &[u8]| {
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s);
        };
        put(metric.as_bytes());
        for (k, v) in dims.byte_pairs() {
            put(k);
            put(v);
        }
        xxhash_rust::xxh3::xxh3_64_with_seed(&buf, SERIES_SEED)
    })
}

/// Which of `shard_count` virtual shards owns the series: Lemire's multiply-shift reduction,
/// uniform for a uniform hash and cheaper than `%`.
pub fn shard_for(hash: u64, shard_count: u32) -> u32 {
    ((hash as u128 * shard_count as u128) >> 64) as u32
}

/// Seed of the replica placement hash. Never change it: it decides where shards live.
const PLACEMENT_SEED: u64 = 0x7265_706c_6963_6173; // "replicas"

/// The nodes that should hold replicas of `shard`: the `replication_factor` nodes of `nodes`
/// (every node if there are fewer) with the highest rendezvous score `xxh3(shard ‖ node)`,
/// best first. Every node computes the same answer from the same node list; a node joining
/// takes over about `replication_factor / n` of the replicas, and a node leaving moves only
/// the replicas it held.
pub fn placement(shard: u32, nodes: &[u64], replication_factor: usize) -> Vec<u64> {
    let mut scored: Vec<(u64, u64)> = nodes
        .iter()
        .map(|&node| {
            let mut key = [0u8; 12];
            key[..4].copy_from_slice(&shard.to_le_bytes());
            key[4..].copy_from_slice(&node.to_le_bytes());
            (
                xxhash_rust::xxh3::xxh3_64_with_seed(&key, PLACEMENT_SEED),
                node,
            )
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|(_, node)| *node);
    scored.truncate(replication_factor);
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The node that should lead each shard, given each shard's replicas ([`placement`], best
/// first): of a shard's replicas, the one leading the fewest shards so far, in shard order
/// (ties go to the best placed). Leaders spread nearly evenly (within two shards of each
/// other, in the test's layouts), and every node computes the same answer.
pub fn leaders(targets: &[Vec<u64>]) -> Vec<Option<u64>> {
    let mut led: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    targets
        .iter()
        .map(|replicas| {
            let best = replicas
                .iter()
                .enumerate()
                .min_by_key(|(rank, node)| (led.get(node).copied().unwrap_or(0), *rank))
                .map(|(_, node)| *node)?;
            *led.entry(best).or_default() += 1;
            Some(best)
        })
        .collect()
}

/// The shard map's leader of each of `shards` shards over `nodes` ([`placement`], then
/// [`leaders`]).
pub fn shard_leaders(shards: u32, nodes: &[u64], replication_factor: usize) -> Vec<Option<u64>> {
    let targets: Vec<Vec<u64>> = (0..shards)
        .map(|s| placement(s, nodes, replication_factor))
        .collect();
    leaders(&targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_spread_evenly_over_the_replicas() {
        for (nodes, rf, shards) in [
            (3u64, 3, 16u32),
            (4, 3, 64),
            (5, 3, 1024),
            (2, 3, 7),
            (7, 2, 100),
        ] {
            let ids: Vec<u64> = (1..=nodes).collect();
            let targets: Vec<Vec<u64>> = (0..shards).map(|s| placement(s, &ids, rf)).collect();
            let leaders = leaders(&targets);
            let mut counts = std::collections::BTreeMap::new();
            for (shard, leader) in leaders.iter().enumerate() {
                let leader = leader.expect("every placed shard has a leader");
                assert!(
                    targets[shard].contains(&leader),
                    "a leader is one of its replicas"
                );
                *counts.entry(leader).or_insert(0usize) += 1;
            }
            assert_eq!(
                counts.len() as u64,
                nodes.min(shards as u64),
                "every node leads some"
            );
            let (min, max) = (
                counts.values().min().unwrap(),
                counts.values().max().unwrap(),
            );
            assert!(max - min <= 2, "{nodes} nodes: {counts:?}");
            assert_eq!(
                leaders,
                super::leaders(&targets),
                "the same answer every time"
            );
        }
        assert_eq!(leaders(&[vec![], vec![9]]), vec![None, Some(9)]);
    }

    #[test]
    fn names() {
        assert!(validate_metric_name("clicks").is_ok());
        assert!(validate_metric_name("_a.b:c-d9").is_ok());
        assert!(validate_metric_name("").unwrap_err().contains("empty"));
        assert!(validate_metric_name("9a").unwrap_err().contains("start"));
        assert!(validate_metric_name("a b").unwrap_err().contains("byte 1"));
        assert!(validate_metric_name(&"a".repeat(201))
            .unwrap_err()
            .contains("201 bytes"));
        assert!(validate_metric_name(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn dimensions_are_sorted_and_checked() {
        let l = Limits::default();
        let d = normalize_dimensions(vec![("b".into(), "1".into()), ("a".into(), "2".into())], &l)
            .unwrap();
        assert_eq!(d[0].0, "a");
        assert!(
            normalize_dimensions(vec![("a".into(), "1".into()), ("a".into(), "2".into())], &l)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            normalize_dimensions(vec![("a".into(), "x".repeat(257).into())], &l)
                .unwrap_err()
                .contains("257")
        );
        let many = (0..33)
            .map(|i| (format!("k{i}").into(), Name::default()))
            .collect();
        assert!(normalize_dimensions(many, &l).unwrap_err().contains("33"));
        assert!(normalize_dimensions(vec![("1a".into(), "x".into())], &l).is_err());
    }

    /// `series_hash("clicks", [country=de])` as first computed; it must never change.
    const PINNED: u64 = 0x042d_af6c_3a21_4c7a;

    #[test]
    fn series_hash_is_pinned_and_unambiguous() {
        let d = vec![("country".into(), "de".into())];
        // Persisted and used for placement: this value must never change.
        assert_eq!(series_hash("clicks", &d), PINNED);
        let a = vec![("ab".into(), "c".into())];
        let b = vec![("a".into(), "bc".into())];
        assert_ne!(series_hash("m", &a), series_hash("m", &b));
    }

    #[test]
    fn names_encode_like_strings() {
        // Logs and snapshots written when names were `String`s read back unchanged.
        #[derive(serde::Serialize)]
        struct Before {
            metric: String,
            timestamp_ms: i64,
            value: f64,
            dimensions: Vec<(String, String)>,
        }
        let long = "a dimension value well over twenty-four bytes";
        let before = Before {
            metric: "clicks".into(),
            timestamp_ms: 7,
            value: 1.5,
            dimensions: vec![("country".into(), "de".into()), ("url".into(), long.into())],
        };
        let now = DataPoint {
            metric: "clicks".into(),
            timestamp_ms: 7,
            value: 1.5,
            dimensions: vec![("country".into(), "de".into()), ("url".into(), long.into())],
        };
        let bytes = crate::codec::encode(&before).expect("encode");
        assert_eq!(crate::codec::encode(&now).expect("encode"), bytes);
        assert_eq!(
            crate::codec::decode::<DataPoint>(&bytes).expect("decode"),
            now
        );
    }

    #[test]
    fn shards_are_in_range_and_spread() {
        let mut counts = [0u32; 16];
        for i in 0..16_000u64 {
            let h = series_hash("m", &vec![("i".into(), i.to_string().into())]);
            counts[shard_for(h, 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_for(u64::MAX, 1), 0);
        assert_eq!(shard_for(u64::MAX, 1024), 1023);
    }

    #[test]
    fn placement_is_stable_and_moves_little() {
        let nodes: Vec<u64> = (1..=4).collect();
        for shard in 0..64 {
            let p = placement(shard, &nodes, 3);
            assert_eq!(p.len(), 3);
            let mut d = p.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3, "distinct nodes");
            // The order of the node list does not matter.
            let mut rev = nodes.clone();
            rev.reverse();
            assert_eq!(placement(shard, &rev, 3), p);
        }
        // Fewer nodes than the factor: all of them.
        assert_eq!(placement(7, &[5, 9], 3).len(), 2);
        // A fifth node takes some replicas; every other replica stays where it was.
        let five: Vec<u64> = (1..=5).collect();
        let mut moved = 0;
        for shard in 0..256 {
            let before = placement(shard, &nodes, 3);
            let after = placement(shard, &five, 3);
            let kept = after.iter().filter(|n| before.contains(n)).count();
            assert!(kept >= 2, "shard {shard}: {before:?} -> {after:?}");
            if kept == 2 {
                assert!(after.contains(&5));
                moved += 1;
            }
        }
        // About 3/5 of the shards gain the new node.
        assert!((100..=200).contains(&moved), "{moved} of 256 moved");
        // A node leaving moves only the replicas it held.
        for shard in 0..256 {
            let before = placement(shard, &five, 3);
            let after = placement(shard, &nodes, 3);
            if !before.contains(&5) {
                assert_eq!(before, after);
            }
        }
    }
}
