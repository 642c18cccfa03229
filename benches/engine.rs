//! In-process figures of the storage engine (a harness, not criterion: each figure is one
//! long run, reported with the machine's core count). Run: `cargo bench --bench engine`.
//!
//! 1. Shard state machine: points/s applied by `ShardState::apply` (one thread, 16 shards).
//! 2. `Engine::write`: points/s through admission, the shared log (fsync on, real disk) and
//!    the shard actors, from 4 concurrent writers with batches of 10 000 points.
//! 3. Memory: bytes per raw point in the rings and RSS after 3 M points in 10 000 series.
//! 4. Query latency p50/p99: 1 h at 1 s over 1 000 series (3.6 M points).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use protocol::{DataPoint, ShardBatch, ShardEntry};
use pulseboard::config::Config;
use pulseboard::engine::Engine;
use pulseboard::membership::Membership;
use pulseboard::query::DataRequest;
use pulseboard::shard::{Layout, ShardState};

fn points(n: usize, series: usize, start_ms: i64, step_ms: i64, offset: usize) -> Vec<DataPoint> {
    (0..n)
        .map(|i| {
            let k = offset + i;
            let s = k % series;
            DataPoint {
                metric: "bench".into(),
                timestamp_ms: start_ms + (k / series) as i64 * step_ms,
                // A slowly varying gauge, as real metrics are.
                value: 100.0 + ((k / series) % 50) as f64 * 0.25 + (s % 7) as f64,
                dimensions: vec![("host".into(), format!("host-{s}").into())],
            }
        })
        .collect()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores");
    let now = pulseboard::now_ms();

    // 1. The state machine alone.
    let total = 3_000_000;
    let series = 10_000;
    let shards = 16u32;
    let start = now - 3_000_000;
    let mut states: Vec<ShardState> = (0..shards)
        .map(|s| ShardState::new(s, Layout::default()))
        .collect();
    let mut batches: Vec<Vec<DataPoint>> = vec![Vec::new(); shards as usize];
    let all = points(total, series, start, 1_000, 0);
    for p in all {
        let h = protocol::point::series_hash(&p.metric, &p.dimensions);
        batches[protocol::point::shard_for(h, shards) as usize].push(p);
    }
    // Batches of ~10 000 points per request, split by shard, built before timing.
    let mut prepared: Vec<(usize, Vec<ShardEntry>)> = Vec::new();
    for (s, pts) in batches.into_iter().enumerate() {
        let per = 10_000 / shards as usize + 1;
        let list = pts
            .chunks(per)
            .map(|c| {
                ShardEntry::from(ShardBatch {
                    shard: s as u32,
                    received_ms: now,
                    points: c.to_vec().into(),
                    batch_id: None,
                    hashes: Default::default(),
                    encoded: Default::default(),
                })
            })
            .collect();
        prepared.push((s, list));
    }
    let rss_before = rss_mib();
    let t = Instant::now();
    for (s, list) in &prepared {
        for (i, b) in list.iter().enumerate() {
            states[*s].apply(i as u64 + 1, b);
        }
    }
    // Points held back from the rollups are part of applying them.
    for s in &mut states {
        s.settle();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "state machine apply: {total} points, {series} series: {:.0} points/s (one thread)",
        total as f64 / secs
    );
    received_batch(&prepared[0].1[0].parts[0]);
    let (mut raw_points, mut raw_bytes, mut cells, mut cell_bytes) = (0, 0, 0, 0);
    for s in &mut states {
        let st = s.stats();
        raw_points += st.raw_points;
        raw_bytes += st.raw_bytes;
        cells += st.rollup_cells;
        cell_bytes += st.rollup_bytes;
    }
    println!(
        "memory: raw rings {:.2} bytes/point ({raw_points} points); rollups {cells} cells, {:.1} bytes/cell; RSS {:.0} MiB (+{:.0} MiB for the states)",
        raw_bytes as f64 / raw_points as f64,
        cell_bytes as f64 / cells.max(1) as f64,
        rss_mib(),
        rss_mib() - rss_before
    );
    drop(states);
    drop(prepared);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // 2. Engine::write with fsync on.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            quic: "127.0.0.1:0".parse().expect("addr"),
            ..Config::default()
        };
        let http: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let node = Membership::start(&config, http).expect("cluster endpoint");
        let engine = std::sync::Arc::new(
            Engine::open(&config, &node, meta_store(&config))
                .await
                .expect("open"),
        );
        let per_writer = 25;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..per_writer {
                    let pts = points(10_000, series, now - 600_000, 1, (w * per_writer + b) * 10_000);
                    engine.write(pts, pulseboard::now_ms()).await.expect("write");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let n = 4 * per_writer * 10_000;
        let log = engine.log_stats();
        println!(
            "Engine::write, fsync on: {n} points from 4 writers: {:.0} points/s ({} fsyncs, {:.2} ms mean fsync)",
            n as f64 / t.elapsed().as_secs_f64(),
            log.syncs,
            log.sync_seconds_total * 1000.0 / log.syncs.max(1) as f64
        );
        drop(engine);

        // 4. Query latency: 1 000 series × 3 600 points (1 h at 1 s).
        let dir = tempfile::tempdir().expect("tempdir");
        config.data_dir = dir.path().to_path_buf();
        config.storage.fsync = false;
        let node = Membership::start(&config, http).expect("cluster endpoint");
        let engine = Engine::open(&config, &node, meta_store(&config))
            .await
            .expect("open");
        let qseries = 1_000;
        let hour_start = (now - 3_600_000) / 1000 * 1000;
        for chunk in 0..36 {
            let pts = points(100_000, qseries, hour_start, 1_000, chunk * 100_000);
            engine.write(pts, pulseboard::now_ms()).await.expect("write");
        }
        for (label, q) in [
            ("sum, all series merged", "aggregation=sum"),
            ("p99, all series merged", "aggregation=p99"),
            ("avg, group_by host (1 000 series out)", "aggregation=avg&group_by=host"),
        ] {
            let query = format!("start={hour_start}&end={}&granularity=1s&{q}", hour_start + 3_600_000);
            let mut times = Vec::new();
            for _ in 0..30 {
                let t = Instant::now();
                let req = DataRequest::parse("bench", Some(&query), pulseboard::now_ms()).expect("parse");
                let plan = req.plan(engine.layout(), pulseboard::now_ms()).expect("plan");
                let out = req.render(engine.query(plan).await.expect("query"));
                assert!(!out.series.is_empty());
                times.push(t.elapsed());
            }
            times.sort();
            println!(
                "query 1 h at 1 s over {qseries} series, {label}: p50 {:.1} ms, p99 {:.1} ms",
                percentile(&times, 0.5),
                percentile(&times, 0.99)
            );
        }
    });
}

/// The node's metadata store in its data directory (the engine runs the metadata group on it).
fn meta_store(config: &Config) -> std::sync::Arc<pulseboard::meta::MetaStore> {
    let path = config.data_dir.join("meta.sqlite");
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    std::sync::Arc::new(pulseboard::meta::MetaStore::open(&path).expect("metadata store"))
}

/// What the node that makes a batch does to send and log it (encode and compress), and what
/// a follower does with each batch it receives before applying it: decompress and check it
/// on receipt (`decode_shard_batch`), then read its points in place,
/// with and without computing each point's series hash.
fn received_batch(batch: &ShardBatch) {
    let bytes = protocol::codec::encode(batch).unwrap();
    let plain: Vec<protocol::DataPoint> = batch.points.iter().map(|p| p.to_point()).collect();
    let plain = protocol::codec::encode(&plain).unwrap().len();
    let rounds = 20_000;
    let points = (rounds * batch.points.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(protocol::codec::encode(batch).unwrap());
    }
    let encode = t.elapsed().as_secs_f64() * 1e9 / points;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(protocol::codec::decode_shard_batch(&bytes).unwrap());
    }
    let check = t.elapsed().as_secs_f64() * 1e9 / points;
    let received = protocol::codec::decode_shard_batch(&bytes).unwrap();
    let t = Instant::now();
    for _ in 0..rounds {
        for p in received.points.iter() {
            std::hint::black_box(p.timestamp_ms);
        }
    }
    let read = t.elapsed().as_secs_f64() * 1e9 / points;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in received.points.iter() {
            std::hint::black_box(protocol::point::series_hash_of(p.metric, p.dims));
        }
    }
    let hashed = t.elapsed().as_secs_f64() * 1e9 / points;
    println!(
        "batch of {} points, {:.1} bytes a point compressed ({:.1} before): encode and compress {encode:.1} ns a point; received: decompress and check {check:.1} ns a point, read in place {read:.1} ns, read and hash {hashed:.1} ns",
        batch.points.len(),
        bytes.len() as f64 / batch.points.len().max(1) as f64,
        plain as f64 / batch.points.len().max(1) as f64,
    );
}
