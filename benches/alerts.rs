//! Alert evaluation cost: 1 000 rules over live data on one node (the real release binary).
//!
//! The same ingest load (line protocol, fsync on, 100 metrics × 50 hosts) runs twice: with no
//! rules, then with 1 000 rules (ten per metric: thresholds with and without `group_by host`,
//! `for`, and anomaly rules). Reported: the node's CPU use in each run, the difference per
//! rule, and how long a breaching point takes to become a firing event for a probe rule
//! among the 1 000.
//!
//! Run: `cargo bench --bench alerts`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{cpu_seconds, start, Server};

const METRICS: usize = 100;
const HOSTS: usize = 50;
const SECONDS: u64 = 20;

async fn load(server: &Server, seconds: u64) -> u64 {
    let http = reqwest::Client::new();
    let mut written = 0;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let ts = pulseboard::now_ms();
        // 100 metrics × 50 hosts = 5 000 points every 100 ms: 50 000 points/s.
        let mut body = String::with_capacity(5_000 * 40);
        for m in 0..METRICS {
            for h in 0..HOSTS {
                let v = 50.0 + ((round + h as u64) % 20) as f64;
                body.push_str(&format!("m{m},host=h{h} v={v} {ts}\n"));
            }
        }
        round += 1;
        let r = http
            .post(format!("{}/api/v1/write?precision=ms", server.base))
            .bearer_auth(&server.token)
            .body(body)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            written += (METRICS * HOSTS) as u64;
        }
    }
    written
}

fn rule(i: usize) -> Value {
    let metric = format!("m{}.v", i % METRICS);
    match (i / METRICS) % 5 {
        0 => {
            json!({"name": format!("r{i}"), "query": {"metric": metric, "aggregation": "max", "window": "1m"},
                    "condition": ">", "threshold": 1000})
        }
        1 => {
            json!({"name": format!("r{i}"), "query": {"metric": metric, "aggregation": "avg", "window": "30s", "group_by": "host"},
                    "condition": ">", "threshold": 1000, "for": "30s"})
        }
        2 => {
            json!({"name": format!("r{i}"), "query": {"metric": metric, "aggregation": "p99", "window": "1m"},
                    "condition": ">=", "threshold": 1000})
        }
        3 => {
            json!({"name": format!("r{i}"), "query": {"metric": metric, "aggregation": "count", "window": "10s"},
                    "condition": "<", "threshold": 1})
        }
        _ => {
            json!({"name": format!("r{i}"), "query": {"metric": metric, "aggregation": "avg", "window": "10s"},
                    "condition": "anomaly", "sensitivity": "medium"})
        }
    }
}

async fn post(server: &Server, path: &str, body: &Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .bearer_auth(&server.token)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn run(rules: usize) -> (f64, u64, Option<Duration>) {
    let server = start().await;
    for i in 0..rules {
        post(&server, "/api/v1/alerts", &rule(i)).await;
    }
    let probe = if rules > 0 {
        let r = post(
            &server,
            "/api/v1/alerts",
            &json!({"name": "probe", "query": {"metric": "probe.v", "aggregation": "max", "window": "10s"},
                    "condition": ">", "threshold": 100}),
        )
        .await;
        r["id"].as_u64()
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_seconds(&server);
    let t0 = Instant::now();
    let written = load(&server, SECONDS).await;
    let cpu = (cpu_seconds(&server) - cpu0) / t0.elapsed().as_secs_f64();
    let mut fire_after = None;
    if let Some(id) = probe {
        let http = reqwest::Client::new();
        let sent = Instant::now();
        http.post(format!("{}/api/v1/write?precision=ms", server.base))
            .bearer_auth(&server.token)
            .body(format!("probe v=500 {}\n", pulseboard::now_ms()))
            .send()
            .await
            .unwrap();
        while sent.elapsed() < Duration::from_secs(10) {
            let e: Value = http
                .get(format!("{}/api/v1/alerts/events?rule_id={id}", server.base))
                .bearer_auth(&server.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if e["events"].as_array().is_some_and(|a| !a.is_empty()) {
                fire_after = Some(sent.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (cpu, written, fire_after)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores; the load generator shares them");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (base_cpu, base_written) = {
        let (c, w, _) = rt.block_on(run(0));
        (c, w)
    };
    println!(
        "no rules: node CPU {:.0} % of one core at {:.0} points/s",
        base_cpu * 100.0,
        base_written as f64 / SECONDS as f64
    );
    let (cpu, written, fire) = rt.block_on(run(1_000));
    println!(
        "1000 rules (+1 probe): node CPU {:.0} % of one core at {:.0} points/s; evaluation adds {:.0} % of a core, {:.3} ms of CPU per rule per second",
        cpu * 100.0,
        written as f64 / SECONDS as f64,
        (cpu - base_cpu) * 100.0,
        (cpu - base_cpu) * 1000.0 / 1000.0
    );
    match fire {
        Some(d) => println!(
            "breaching point → firing event for a probe rule among 1000: {:.1} ms",
            d.as_secs_f64() * 1000.0
        ),
        None => println!("the probe rule did not fire within 10 s"),
    }
}
