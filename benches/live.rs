//! Live updates end to end: the real release binary on loopback, real WebSocket clients.
//!
//! 1. Ingest-to-socket latency while ingesting ~100 000 points/s (line protocol, fsync on)
//!    with 1 000 connected clients: 100 watch a probe series, 900 watch ten panels of the
//!    loaded metric. A probe point is written every 50 ms; the latency is the time from
//!    its HTTP 200 (and, for reference, from sending it) to its arrival at each probe client.
//! 2. Clients at one update per second each: ramps the number of clients on one query and
//!    reports the p99 of probe → socket for each step, up to the largest under 250 ms.
//!
//! Run: `cargo bench --bench live`. Needs ~2 file descriptors per client.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::start;

fn now_ms() -> i64 {
    pulseboard::now_ms()
}

/// Probe k: sent at, acknowledged at.
type Probes = Arc<Mutex<HashMap<u64, (Instant, Option<Instant>)>>>;

#[derive(Default)]
struct Samples {
    from_ack_ms: Vec<f64>,
    from_send_ms: Vec<f64>,
}

fn probe_query() -> Value {
    json!({"metric": "probe.value", "aggregation": "max", "window": "1m", "granularity": "1s"})
}

/// A client: subscribes, then records for each message the newest probe it reveals.
async fn client(
    base: &str,
    token: &str,
    query: Value,
    min_interval_ms: u64,
    probes: Option<(Probes, Arc<Mutex<Samples>>)>,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicU64>,
) {
    let url = format!(
        "{}/api/v1/ws?token={token}",
        base.replace("http://", "ws://")
    );
    let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect failed: {e}");
            return;
        }
    };
    let sub =
        json!({"type": "subscribe", "id": "p", "query": query, "min_interval_ms": min_interval_ms});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    connected.fetch_add(1, Ordering::Relaxed);
    let mut seen = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => break,
            Err(_) => continue,
        };
        let arrived = Instant::now();
        let Some((probes, samples)) = &probes else {
            continue;
        };
        // The probe series is ungrouped: its one total is `"totals":[{"dimensions":{},"value":K}]`.
        // Scanning for it keeps the client side of the bench cheap (it shares the cores).
        const MARK: &str = "\"totals\":[{\"dimensions\":{},\"value\":";
        let Some(at) = msg.find(MARK) else {
            continue;
        };
        let rest = &msg[at + MARK.len()..];
        let end = rest.find(['}', ',']).unwrap_or(rest.len());
        let Ok(k) = rest[..end].parse::<f64>() else {
            continue;
        };
        let k = k as u64;
        if k <= seen {
            continue;
        }
        seen = k;
        if !msg.starts_with("{\"type\":\"update\"") {
            continue;
        }
        let p = probes.lock().unwrap().get(&k).copied();
        if let Some((sent, acked)) = p {
            let mut s = samples.lock().unwrap();
            s.from_send_ms
                .push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
            if let Some(a) = acked {
                // An update may beat the HTTP answer (deltas go out before the 200): 0.
                s.from_ack_ms
                    .push(arrived.saturating_duration_since(a).as_secs_f64() * 1000.0);
            }
        }
    }
}

async fn probe_loop(
    base: String,
    token: String,
    probes: Probes,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    let mut k = 0u64;
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        k += 1;
        let sent = Instant::now();
        probes.lock().unwrap().insert(k, (sent, None));
        let body = format!("probe value={k} {}\n", now_ms());
        let r = http
            .post(format!("{base}/api/v1/write?precision=ms"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            let acked = Instant::now();
            if let Some(e) = probes.lock().unwrap().get_mut(&k) {
                e.1 = Some(acked);
            }
        }
    }
}

/// About `rate` points/s of `bench.load` over 1 000 series in 4 data centres.
async fn load_loop(
    base: String,
    token: String,
    rate: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let per_batch = 5_000u64;
    let every = Duration::from_secs_f64(per_batch as f64 / rate as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let ts = now_ms();
        let mut body = String::with_capacity(per_batch as usize * 48);
        for i in 0..per_batch {
            let host = (n + i) % 1_000;
            body.push_str(&format!(
                "bench,host=h{host},dc=dc{} load={} {ts}\n",
                host % 4,
                (n + i) % 100
            ));
        }
        n += per_batch;
        let r = http
            .post(format!("{base}/api/v1/write?precision=ms"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            written.fetch_add(per_batch, Ordering::Relaxed);
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn wait_connected(connected: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn latency_under_load() {
    let server = start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let probes: Probes = Arc::default();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut tasks = Vec::new();
    let aggs = ["sum", "avg", "max", "p99", "count"];
    for i in 0..1_000u64 {
        let (q, p) = if i < 100 {
            (probe_query(), Some((probes.clone(), samples.clone())))
        } else {
            let panel = i % 10;
            (
                json!({"metric": "bench.load", "aggregation": aggs[(panel % 5) as usize],
                       "window": if panel < 5 { "5m" } else { "15m" }, "granularity": "1s", "group_by": "dc"}),
                None,
            )
        };
        let (base, token, stop, connected) = (
            server.base.clone(),
            server.token.clone(),
            stop.clone(),
            connected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client(&base, &token, q, 20, p, stop, connected).await
        }));
    }
    wait_connected(&connected, 1_000).await;
    let written = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(load_loop(
        server.base.clone(),
        server.token.clone(),
        100_000,
        stop.clone(),
        written.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    samples.lock().unwrap().from_ack_ms.clear();
    samples.lock().unwrap().from_send_ms.clear();
    let w0 = written.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let probe = tokio::spawn(probe_loop(
        server.base.clone(),
        server.token.clone(),
        probes.clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rate = (written.load(Ordering::Relaxed) - w0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = probe.await;
    let _ = load.await;
    for t in tasks {
        let _ = t.await;
    }
    let mut s = std::mem::take(&mut *samples.lock().unwrap());
    s.from_ack_ms.sort_by(f64::total_cmp);
    s.from_send_ms.sort_by(f64::total_cmp);
    println!(
        "ingest-to-socket, 1000 clients ({} connected), {rate:.0} points/s ingested (fsync on): from the HTTP 200 p50 {:.1} ms p99 {:.1} ms; from sending the point p50 {:.1} ms p99 {:.1} ms ({} deliveries)",
        connected.load(Ordering::Relaxed),
        pct(&s.from_ack_ms, 0.5),
        pct(&s.from_ack_ms, 0.99),
        pct(&s.from_send_ms, 0.5),
        pct(&s.from_send_ms, 0.99),
        s.from_send_ms.len()
    );
}

async fn clients_at_one_update_per_second() {
    let server = start().await;
    let probes: Probes = Arc::default();
    let mut all_tasks = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(probe_loop(
        server.base.clone(),
        server.token.clone(),
        probes.clone(),
        Duration::from_secs(1),
        probe_stop.clone(),
    ));
    let mut best = 0u64;
    for target in [1_000u64, 2_500, 5_000, 7_500, 10_000, 12_500, 15_000] {
        while (all_tasks.len() as u64) < target {
            let (base, token, stop, connected) = (
                server.base.clone(),
                server.token.clone(),
                stop.clone(),
                connected.clone(),
            );
            let p = Some((probes.clone(), samples.clone()));
            all_tasks.push(tokio::spawn(async move {
                // The data changes once a second; a 500 ms floor means each client gets
                // one update a second without the rate limit adding delay.
                client(&base, &token, probe_query(), 500, p, stop, connected).await
            }));
            if all_tasks.len() % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        wait_connected(&connected, target).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.lock().unwrap().from_send_ms.clear();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut s = std::mem::take(&mut samples.lock().unwrap().from_send_ms);
        s.sort_by(f64::total_cmp);
        let p99 = pct(&s, 0.99);
        println!(
            "clients at 1 update/s: {} connected: probe-to-socket p50 {:.1} ms p99 {:.1} ms ({} deliveries)",
            connected.load(Ordering::Relaxed),
            pct(&s, 0.5),
            p99,
            s.len()
        );
        if p99 < 250.0 && s.len() as u64 >= target * 6 {
            best = connected.load(Ordering::Relaxed);
        } else {
            break;
        }
    }
    println!("largest client count with p99 under 250 ms at 1 update/s: {best} (the load generator shares the 2 cores)");
    stop.store(true, Ordering::Relaxed);
    probe_stop.store(true, Ordering::Relaxed);
    let _ = probe.await;
    for t in all_tasks {
        let _ = t.await;
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores; server and clients share them");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(latency_under_load());
    rt.block_on(clients_at_one_update_per_second());
}
