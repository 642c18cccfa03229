//! Failover time: three real nodes (release binaries, fsync on), the node leading shard 0 is
//! killed with SIGKILL, and a writer measures the time from the kill to the first write that
//! shard 0 acknowledges (the write goes to a surviving node, which waits through the election
//! and forwards to the new leader). The killed node is restarted, takes a write, and gets 3 s
//! to catch up before the next round. Prints p50, p99 and max over the rounds.
//! Run: `cargo bench --bench failover` (20 rounds; `FAILOVER_ROUNDS` to change).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{free_quic, start_cluster_node, PASSWORD};
use serde_json::{json, Value};

async fn token(client: &reqwest::Client, base: &str) -> String {
    let r: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

/// A `host` value whose series `failover{host=…}` lives on shard 0 (of 16).
fn host_on_shard_0() -> String {
    (0..)
        .map(|i| format!("h{i}"))
        .find(|h| {
            let dims = vec![("host".to_string(), h.clone())];
            protocol::point::shard_for(protocol::point::series_hash("failover", &dims), 16) == 0
        })
        .unwrap()
}

async fn write(client: &reqwest::Client, base: &str, token: &str, host: &str, n: u64) -> bool {
    let body = json!({"data_points": [{
        "metric": "failover", "timestamp": pulseboard::now_ms(), "value": n as f64,
        "dimensions": {"host": host}
    }]});
    matches!(
        client
            .post(format!("{base}/api/v1/ingest"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("w{n}"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await,
        Ok(r) if r.status().is_success()
    )
}

async fn leader_of_shard_0(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> Option<(u64, String)> {
    let v: Value = client
        .get(format!("{base}/api/v1/cluster"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let leader = v["shards"][0]["leader"].as_u64()?;
    let node = v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_u64() == Some(leader))?;
    // The QUIC address: a restarted node keeps it (its HTTP port is new each start).
    Some((leader, node["quic_addr"].as_str()?.to_owned()))
}

fn main() {
    let rounds: usize = std::env::var("FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::tempdir().unwrap();
    let quic: Vec<String> = (0..3).map(|_| free_quic()).collect();
    let mut nodes = vec![start_cluster_node(&root.path().join("n0"), &quic[0], None)];
    for (i, q) in quic.iter().enumerate().skip(1) {
        nodes.push(start_cluster_node(
            &root.path().join(format!("n{i}")),
            q,
            Some(&quic[0]),
        ));
    }
    let client = reqwest::Client::new();
    let host = host_on_shard_0();
    let mut times = Vec::new();
    let mut n = 0u64;
    rt.block_on(async {
        for round in 0..rounds {
            let probe = &nodes[round % 3];
            let t = token(&client, &probe.base).await;
            let mut leader = None;
            for _ in 0..100 {
                leader = leader_of_shard_0(&client, &probe.base, &t).await;
                if leader.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (_, leader_quic) = leader.expect("shard 0 has a leader");
            let victim = nodes.iter().position(|x| x.quic == leader_quic).unwrap();
            let survivor = (victim + 1) % 3;
            let st = token(&client, &nodes[survivor].base).await;
            n += 1;
            assert!(
                write(&client, &nodes[survivor].base, &st, &host, n).await,
                "write before the kill"
            );
            let (dir, q) = (nodes[victim].dir.clone(), nodes[victim].quic.clone());
            let killed_at = Instant::now();
            {
                let v = &mut nodes[victim];
                let _ = v.child.kill();
                let _ = v.child.wait();
            }
            loop {
                n += 1;
                if write(&client, &nodes[survivor].base, &st, &host, n).await {
                    break;
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no failover within 30 s"
                );
            }
            let took = killed_at.elapsed();
            times.push(took.as_secs_f64() * 1000.0);
            println!(
                "round {round}: failover {:.0} ms",
                took.as_secs_f64() * 1000.0
            );
            // Restart the killed node and let it catch up before the next kill: the bench
            // measures failover of a healthy cluster, not a second fault during recovery.
            nodes[victim] = start_cluster_node(&dir, &q, None);
            let vt = token(&client, &nodes[victim].base).await;
            loop {
                n += 1;
                if write(&client, &nodes[victim].base, &vt, &host, n).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
    times.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "failover over {} leader kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        times.len(),
        pick(0.5),
        pick(0.99),
        times.last().copied().unwrap_or(0.0)
    );
}
