//! Acknowledged data survives `kill -9`, a torn or corrupt log tail, and clean restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{now_ms, point, Node};

/// Counts per `batch` dimension value over the last hours.
pub(crate) async fn counts_by_batch(node: &Node, metric: &str) -> BTreeMap<String, f64> {
    let (status, body) = node
        .get(&format!(
            "/api/v1/metrics/{metric}/data?start=now-3h&end=now%2B1h&granularity=1h&aggregation=count&group_by=batch"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            let total: f64 = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_f64().unwrap())
                .sum();
            (s["dimensions"]["batch"].as_str().unwrap().to_owned(), total)
        })
        .collect()
}

pub(crate) fn batch_body(b: usize, size: usize, base: i64) -> Value {
    let pts: Vec<Value> = (0..size)
        .map(|i| {
            point(
                "events",
                base + i as i64,
                i as f64,
                &[("batch", &b.to_string()), ("host", &format!("h{}", i % 37))],
            )
        })
        .collect();
    json!({"data_points": pts})
}

#[tokio::test]
async fn kill_9_mid_ingest_loses_no_acknowledged_point() {
    let node = Node::start().await;
    let base = now_ms() - 60_000;
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let size = 500;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, url, token, acked) = (
            node.client.clone(),
            node.url("/api/v1/ingest"),
            node.token.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for k in 0.. {
                let b = k * 4 + w;
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&batch_body(b, size, base))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(b),
                    // The node died under us: stop.
                    _ => break,
                }
            }
        }));
    }
    // Let a good number of batches through, then kill in the middle of the stream.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().unwrap().len() >= 40 {
            break;
        }
    }
    let (dir, keep) = node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    let node = Node::start_in(&dir, &[]).await;
    let counts = counts_by_batch(&node, "events").await;
    for b in &acked {
        assert_eq!(
            counts.get(&b.to_string()).copied(),
            Some(size as f64),
            "acknowledged batch {b} is missing or incomplete after kill -9"
        );
    }
    drop(node);
    drop(keep);
}

fn wal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn corrupt_log_tail_recovers_cleanly() {
    let node = Node::start().await;
    let base = now_ms() - 60_000;
    for b in 0..5 {
        let (status, body) = node.ingest(&batch_body(b, 100, base)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (dir, keep) = node.kill9();
    let segments = wal_segments(&dir);
    let last = segments.last().expect("a wal segment");

    // 1. Garbage appended after the last record (a torn write of the next one).
    let mut bytes = std::fs::read(last).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(last, &bytes).unwrap();
    let node = Node::start_in(&dir, &[]).await;
    let counts = counts_by_batch(&node, "events").await;
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|c| *c == 100.0));
    // New writes after the repair land and survive another crash.
    let (status, _) = node.ingest(&batch_body(5, 100, base)).await;
    assert_eq!(status, 200);
    let (dir, _keep2) = node.kill9();

    // 2. The log's tail cut mid-record: whatever the cut record held is gone only because we
    // cut it; every earlier batch must still be there and the node must start.
    let segments = wal_segments(&dir);
    let last = segments.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    assert!(bytes.len() > good_len);
    std::fs::write(last, &bytes[..bytes.len() - 50]).unwrap();
    let node = Node::start_in(&dir, &[]).await;
    let counts = counts_by_batch(&node, "events").await;
    for b in 0..5 {
        assert_eq!(
            counts.get(&b.to_string()).copied(),
            Some(100.0),
            "batch {b}: {counts:?}"
        );
    }
    // Each shard's part of batch 5 is its own Raft entry: a cut entry is dropped whole and
    // never invents points (parts in intact entries stay).
    assert!(
        counts.get("5").copied().unwrap_or(0.0) <= 100.0,
        "a torn record must not be half-applied: {counts:?}"
    );
    drop(node);
    drop(keep);
}

#[tokio::test]
async fn graceful_restart_keeps_data_and_snapshots() {
    let node = Node::start().await;
    let base = now_ms() - 60_000;
    for b in 0..3 {
        let (status, _) = node.ingest(&batch_body(b, 200, base)).await;
        assert_eq!(status, 200);
    }
    let (dir, keep) = node.terminate();
    let snaps = std::fs::read_dir(dir.join("shards")).unwrap().count();
    assert!(snaps > 1, "SIGTERM writes shard snapshots");
    let node = Node::start_in(&dir, &[]).await;
    let counts = counts_by_batch(&node, "events").await;
    assert_eq!(counts.values().sum::<f64>(), 600.0, "{counts:?}");
    // And again after more writes and a crash: snapshot + log tail.
    let (status, _) = node.ingest(&batch_body(3, 200, base)).await;
    assert_eq!(status, 200);
    let (dir, _k) = node.kill9();
    let node = Node::start_in(&dir, &[]).await;
    let counts = counts_by_batch(&node, "events").await;
    assert_eq!(counts.values().sum::<f64>(), 800.0, "{counts:?}");
    drop(node);
    drop(keep);
}

/// The log frees its old segments once snapshots cover them, even when most shards get no
/// writes and the metadata group hardly any: the shared log frees a segment only when every
/// group is done with it, and before the snapshot loop purged every group a round after its
/// snapshot, such quiet groups kept every segment on disk for good. Then a restart finds
/// every point (the snapshots have what the freed segments held).
#[tokio::test]
async fn old_log_segments_are_freed_while_most_shards_are_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pb.toml");
    std::fs::write(
        &cfg,
        "[storage]\nsnapshot_interval = \"1s\"\nwal_segment_bytes = 16384\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = Node::start_in(&data, &["--config", cfg.to_str().unwrap()]).await;
    let base = now_ms() - 60_000;
    // One series: one shard gets every point, the others none.
    let mut sent = 0;
    for b in 0..40 {
        let pts: Vec<Value> = (0..500)
            .map(|i| point("one_series", base + b * 500 + i, 1.0, &[("host", "only")]))
            .collect();
        let (status, body) = node.ingest(&json!({"data_points": pts})).await;
        assert_eq!(status, 200, "{body}");
        sent += 500;
    }
    // Segment files are numbered from 1: the newest's number is how many were made.
    let written: u64 = wal_segments(&data)
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse().ok())
        .unwrap();
    assert!(written >= 3, "the load fills several segments: {written}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while wal_segments(&data).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "segments not freed within 20 s: {} of {written} left",
            wal_segments(&data).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (data, keep) = node.terminate();
    let node = Node::start_in(&data, &["--config", cfg.to_str().unwrap()]).await;
    let (status, body) = node
        .get("/api/v1/metrics/one_series/window?window=3h&aggregation=count")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"][0]["value"], sent as f64, "{body}");
    drop(node);
    drop(keep);
    drop(dir);
}

/// A clean stop leaves the points in snapshots and frees the log they cover (one segment
/// left, the one being written), without waiting for the snapshot loop's next round; a
/// restart finds every point.
#[tokio::test]
async fn a_clean_stop_frees_the_log_its_snapshots_cover() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pb.toml");
    std::fs::write(&cfg, "[storage]\nwal_segment_bytes = 16384\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let node = Node::start_in(&data, &args).await;
    let base = now_ms() - 60_000;
    for b in 0..20 {
        let (status, body) = node.ingest(&batch_body(b, 500, base)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(wal_segments(&data).len() >= 3);
    let (data, keep) = node.terminate();
    let left = wal_segments(&data);
    assert_eq!(left.len(), 1, "segments left at rest: {left:?}");
    let node = Node::start_in(&data, &args).await;
    let counts = counts_by_batch(&node, "events").await;
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!(counts.values().all(|&c| c == 500.0), "{counts:?}");
    drop(node);
    drop(keep);
    drop(dir);
}
