//! `/api/v1/ws`: shared subscription streams, slow clients, resume, refusal of strangers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{now_ms, point, Node};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(node: &Node, token: &str) -> Ws {
    let url = format!(
        "{}/api/v1/ws?token={token}",
        node.base.replace("http://", "ws://")
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON text message, within `wait`.
pub(crate) async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Window totals per `country` as the client sees them after applying `msg`.
fn apply_totals(totals: &mut BTreeMap<String, f64>, msg: &Value) {
    for t in msg["totals"].as_array().into_iter().flatten() {
        let key = t["dimensions"]["country"].as_str().unwrap_or("").to_owned();
        totals.insert(key, t["value"].as_f64().unwrap());
    }
}

fn query() -> Value {
    json!({"metric": "clicks", "aggregation": "sum", "granularity": "1s", "window": "10m",
           "group_by": "country"})
}

/// Reads messages until `done(totals)` or the time runs out; returns the messages.
async fn read_until(
    ws: &mut Ws,
    totals: &mut BTreeMap<String, f64>,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> Vec<Value> {
    let mut got = Vec::new();
    while !done(totals) {
        let Some(m) = next(ws, Duration::from_secs(10)).await else {
            panic!("no message; totals so far {totals:?}; got {got:?}");
        };
        apply_totals(totals, &m);
        got.push(m);
    }
    got
}

#[tokio::test]
async fn clients_on_one_query_share_one_identical_stream() {
    let node = Node::start().await;
    let now = now_ms();
    let (s, _) = node
        .ingest(&json!({"data_points": [point("clicks", now - 5_000, 2.0, &[("country", "de")])]}))
        .await;
    assert_eq!(s, 200);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&node, &node.token).await;
        send(
            &mut ws,
            json!({"type": "subscribe", "id": "p1", "query": query()}),
        )
        .await;
        let snap = next(&mut ws, Duration::from_secs(10)).await.unwrap();
        assert_eq!(snap["type"], "snapshot", "{snap}");
        assert_eq!(snap["totals"][0]["value"], 2.0, "{snap}");
        clients.push((ws, snap));
    }
    // One subscription actor serves all three.
    let metrics = node.metrics_text().await;
    assert!(
        metrics.contains("pulseboard_live_subscriptions 1\n"),
        "{metrics}"
    );
    let stream = clients[0].1["stream"].clone();
    assert!(clients
        .iter()
        .all(|(_, s)| s["stream"] == stream && s["seq"] == clients[0].1["seq"]));

    // Points in several batches, including one late (out-of-order) point in an old bucket.
    let mut expect: BTreeMap<String, f64> = BTreeMap::from([("de".into(), 2.0)]);
    for i in 0..20 {
        let country = ["de", "fr", "us"][i % 3];
        let ts = if i == 10 {
            now - 60_000
        } else {
            now + i as i64
        };
        let (s, b) = node
            .ingest(&json!({"data_points": [point("clicks", ts, 1.0 + i as f64, &[("country", country)])]}))
            .await;
        assert_eq!(s, 200, "{b}");
        *expect.entry(country.into()).or_default() += 1.0 + i as f64;
    }
    let mut streams = Vec::new();
    for (ws, snap) in clients.iter_mut() {
        let mut totals = BTreeMap::new();
        apply_totals(&mut totals, snap);
        let got = read_until(ws, &mut totals, |t| *t == expect).await;
        // Sequence numbers follow each other without gaps.
        let first = snap["seq"].as_u64().unwrap() + 1;
        for (seq, m) in (first..).zip(&got) {
            assert_eq!(m["type"], "update", "{m}");
            assert_eq!(m["id"], "p1");
            assert_eq!(m["seq"].as_u64().unwrap(), seq, "{m}");
        }
        assert!(
            got.iter().any(|m| m.get("corrections").is_some()),
            "the late point arrives as a correction: {got:?}"
        );
        streams.push(got);
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_delay_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pb.toml");
    std::fs::write(&cfg, "[live]\nclient_queue = 4\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]).await;
    // Many groups make each update large, so the stalled socket's buffers fill quickly.
    let q = json!({"metric": "clicks", "aggregation": "sum", "granularity": "1s", "window": "10m",
                   "group_by": "host"});
    let mut stalled = connect(&node, &node.token).await;
    send(
        &mut stalled,
        json!({"type": "subscribe", "id": "s", "query": q}),
    )
    .await;
    let mut reader = connect(&node, &node.token).await;
    send(
        &mut reader,
        json!({"type": "subscribe", "id": "r", "query": q}),
    )
    .await;
    assert_eq!(
        next(&mut reader, Duration::from_secs(10)).await.unwrap()["type"],
        "snapshot"
    );

    let hosts: Vec<String> = (0..3000)
        .map(|h| format!("host-{h:05}-with-a-long-name"))
        .collect();
    let now = now_ms();
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    for round in 0..60 {
        let pts: Vec<Value> = hosts
            .iter()
            .map(|h| point("clicks", now + round, 1.0, &[("host", h)]))
            .collect();
        let t = Instant::now();
        let (s, b) = node.ingest(&json!({"data_points": pts})).await;
        assert_eq!(s, 200, "{b}");
        // The reading client hears of every batch promptly.
        loop {
            let m = next(&mut reader, Duration::from_secs(10))
                .await
                .expect("reader gets updates while the other client stalls");
            if m["type"] == "update" {
                break;
            }
        }
        worst = worst.max(t.elapsed());
        rounds += 1;
        let metrics = node.metrics_text().await;
        if round >= 5 && !metrics.contains("pulseboard_ws_lagged_total 0\n") {
            break;
        }
    }
    let metrics = node.metrics_text().await;
    assert!(
        !metrics.contains("pulseboard_ws_lagged_total 0\n"),
        "the stalled client was never cut over after {rounds} rounds: {metrics}"
    );
    assert!(
        worst < Duration::from_secs(5),
        "ingest + update took {worst:?}"
    );
    // The stalled client catches up: reading now, it ends with a fresh snapshot holding
    // every point.
    let mut last_snapshot = None;
    while let Some(m) = next(&mut stalled, Duration::from_secs(3)).await {
        if m["type"] == "snapshot" {
            last_snapshot = Some(m);
        }
    }
    let snap = last_snapshot.expect("a fresh snapshot after falling behind");
    let total: f64 = snap["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["value"].as_f64().unwrap())
        .sum();
    assert_eq!(total, (hosts.len() * rounds) as f64);
}

#[tokio::test]
async fn resume_after_reconnect_misses_nothing() {
    let node = Node::start().await;
    let now = now_ms();
    let mut ws = connect(&node, &node.token).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "p", "query": query()}),
    )
    .await;
    let snap = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    let stream = snap["stream"].as_u64().unwrap();
    let mut totals = BTreeMap::new();
    let mut expect = BTreeMap::new();
    for i in 0..3 {
        node.ingest(&json!({"data_points": [point("clicks", now + i, 1.0, &[("country", "de")])]}))
            .await;
        *expect.entry("de".to_string()).or_insert(0.0) += 1.0;
    }
    let got = read_until(&mut ws, &mut totals, |t| *t == expect).await;
    let last_seq = got.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);

    // Points land while the client is away.
    for i in 0..5 {
        node.ingest(&json!({"data_points": [point("clicks", now + 100 + i, 10.0, &[("country", if i % 2 == 0 { "fr" } else { "de" })])]}))
            .await;
        *expect
            .entry(if i % 2 == 0 { "fr" } else { "de" }.to_string())
            .or_insert(0.0) += 10.0;
    }
    let mut ws = connect(&node, &node.token).await;
    send(
        &mut ws,
        json!({"type": "resume", "id": "p", "after_seq": last_seq, "stream": stream, "query": query()}),
    )
    .await;
    let got = read_until(&mut ws, &mut totals, |t| *t == expect).await;
    // The missed updates are replayed in order, not replaced by a snapshot.
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["type"], "update", "{m}");
        assert_eq!(m["seq"].as_u64().unwrap(), last_seq + 1 + i as u64);
    }
    // A resume from an unknown stream gets a snapshot instead.
    send(
        &mut ws,
        json!({"type": "resume", "id": "q", "after_seq": 1, "stream": 12345, "query": query()}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("snapshot"), Some("q")),
        "{m}"
    );
    let mut t = BTreeMap::new();
    apply_totals(&mut t, &m);
    assert_eq!(t, expect);
}

#[tokio::test]
async fn unauthorized_sockets_are_refused_and_bad_messages_named() {
    let node = Node::start().await;
    let ws_url = node.base.replace("http://", "ws://");
    // A bad token: refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("{ws_url}/api/v1/ws?token=pbs_nope"))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401, got {other}"),
    }
    // An ingest-only key may not read.
    let key = node.ingest_key().await;
    let err = tokio_tungstenite::connect_async(format!("{ws_url}/api/v1/ws?token={}", key))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected an HTTP 403, got {other}"),
    }
    // No token: nothing is served until the client authenticates.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}/api/v1/ws"))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "p", "query": query()}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["error"], "unauthorized", "{m}");
    send(&mut ws, json!({"type": "auth", "token": "pbs_wrong"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["error"],
        "unauthorized"
    );
    send(&mut ws, json!({"type": "auth", "token": node.token})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "authenticated"
    );
    // Bad messages are named, and the socket stays usable.
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["error"],
        "bad_message"
    );
    send(&mut ws, json!({"type": "subscribe", "id": "p", "query": {"metric": "clicks", "aggregation": "mean"}})).await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m["error"].as_str(), m["id"].as_str()),
        (Some("bad_query"), Some("p")),
        "{m}"
    );
    assert!(m["detail"].as_str().unwrap().contains("aggregation"), "{m}");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "p", "query": query()}),
    )
    .await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "snapshot"
    );
}
