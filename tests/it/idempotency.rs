//! Idempotent ingest (SPEC §3): a retried batch with the same key is applied once and answered
//! like the first time — concurrently, across protocols, and across a crash or a restart.

use serde_json::{json, Value};

use crate::harness::{now_ms, point, Node};

async fn post_with_key(node: &Node, body: &Value, key: &str) -> (u16, Value) {
    let r = node
        .client
        .post(node.url("/api/v1/ingest"))
        .bearer_auth(&node.token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn total(node: &Node, metric: &str) -> f64 {
    let (s, b) = node
        .get(&format!(
            "/api/v1/metrics/{metric}/window?window=1h&aggregation=sum"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    b["series"][0]["value"].as_f64().unwrap_or(0.0)
}

fn batch(metric: &str, n: usize) -> Value {
    let now = now_ms();
    let points: Vec<Value> = (0..n)
        .map(|i| {
            point(
                metric,
                now - i as i64,
                1.0,
                &[("host", &format!("h{}", i % 7))],
            )
        })
        .collect();
    json!({"data_points": points})
}

#[tokio::test]
async fn a_retried_batch_is_applied_once() {
    let node = Node::start().await;
    let body = batch("clicks", 50);
    let (s, first) = post_with_key(&node, &body, "batch-1").await;
    assert_eq!((s, &first), (200, &json!({"accepted": 50})));
    let (s, again) = post_with_key(&node, &body, "batch-1").await;
    assert_eq!(
        (s, again),
        (200, first.clone()),
        "answered like the first time"
    );
    assert_eq!(total(&node, "clicks").await, 50.0);
    // The body's `batch_id` is the same key.
    let mut with_id = batch("clicks", 10);
    with_id["batch_id"] = json!("batch-2");
    for _ in 0..3 {
        let (s, b) = node.ingest(&with_id).await;
        assert_eq!((s, b), (200, json!({"accepted": 10})));
    }
    assert_eq!(total(&node, "clicks").await, 60.0);
    // Concurrent retries: one write, every caller gets its answer.
    let body = batch("clicks", 30);
    let calls = (0..8).map(|_| post_with_key(&node, &body, "batch-3"));
    for (s, b) in futures_util::future::join_all(calls).await {
        assert_eq!((s, b), (200, json!({"accepted": 30})));
    }
    assert_eq!(total(&node, "clicks").await, 90.0);
    // Line protocol takes the header.
    for _ in 0..2 {
        let r = node
            .client
            .post(node.url("/api/v1/write?precision=ms"))
            .bearer_auth(&node.token)
            .header("Idempotency-Key", "lines-1")
            .body(format!("clicks,host=x count=5 {}\n", now_ms()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(total(&node, "clicks.count").await, 5.0);
    // A key that is too long is named.
    let (s, b) = post_with_key(&node, &batch("clicks", 1), &"k".repeat(300)).await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("idempotency key"), "{b}");
}

#[tokio::test]
async fn keys_survive_a_crash_and_a_restart() {
    let node = Node::start().await;
    let body = batch("orders", 40);
    let (s, _) = post_with_key(&node, &body, "crash-1").await;
    assert_eq!(s, 200);
    // kill -9: the key comes back from the log replay.
    let (dir, guard) = node.kill9();
    let node = Node::start_in(&dir, &[]).await;
    let (s, b) = post_with_key(&node, &body, "crash-1").await;
    assert_eq!((s, b), (200, json!({"accepted": 40})));
    assert_eq!(total(&node, "orders").await, 40.0);
    // A clean stop writes snapshots (the log behind them is released): the key comes back
    // from the snapshots.
    let (s, _) = post_with_key(&node, &batch("orders", 5), "clean-1").await;
    assert_eq!(s, 200);
    let (dir, _) = node.terminate();
    let node = Node::start_in(&dir, &[]).await;
    for key in ["crash-1", "clean-1"] {
        let (s, _) = post_with_key(&node, &batch("orders", 5), key).await;
        assert_eq!(s, 200);
    }
    assert_eq!(total(&node, "orders").await, 45.0);
    drop(guard);
}

#[tokio::test]
async fn requests_reaching_a_busy_shard_share_its_next_entry_and_each_counts_once() {
    // A slow disk (every fsync 20 ms longer): requests reach each shard while its entry
    // before is being written, and go together as the next one.
    let node = Node::start_with(&["--simulated-fsync-delay", "20ms"]).await;
    let entries = node.counter("pulseboard_shard_entries_total").await;
    let shares = node.counter("pulseboard_shard_entry_batches_total").await;
    let bodies: Vec<Value> = (0..48).map(|_| batch("together", 20)).collect();
    let keys: Vec<String> = (0..48).map(|i| format!("together-{i}")).collect();
    let calls = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| post_with_key(&node, body, &keys[i]));
    for (s, b) in futures_util::future::join_all(calls).await {
        assert_eq!((s, b), (200, json!({"accepted": 20})));
    }
    let entries = node.counter("pulseboard_shard_entries_total").await - entries;
    let shares = node.counter("pulseboard_shard_entry_batches_total").await - shares;
    // Each request's 20 points (7 hosts) touch a few of the 16 shards.
    assert!(shares >= 48, "{shares} shares of 48 requests");
    assert!(
        entries * 2 <= shares,
        "{shares} requests' shares written as {entries} entries"
    );
    assert_eq!(total(&node, "together").await, 48.0 * 20.0);
    // Retried, all of them at once again: nothing counts twice.
    let calls = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| post_with_key(&node, body, &keys[i]));
    for (s, _) in futures_util::future::join_all(calls).await {
        assert_eq!(s, 200);
    }
    assert_eq!(total(&node, "together").await, 48.0 * 20.0);
}
