//! The chaos smoke run (SPEC §5, §6): three real nodes behind fault-injecting relays; a
//! leader killed with SIGKILL, a leader partitioned away, a leader paused past the election
//! timeout, a follower restarted with the tail of its log cut off, then a fourth node joining and one of the first three removed (shards moving both
//! ways), under a workload that records every acknowledgement. The checker must find every
//! acknowledged point exactly once on every node, the rollups agreeing with the points, and
//! every acknowledged dashboard (metadata writes) once on every node.
//! The full suite: `cargo run --release -p chaos -- full` (see the README).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_faults_and_shards_moving_between_nodes() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pulseboard"));
    let report = chaos::smoke(bin).await.expect("the smoke run completes");
    let md = report.markdown();
    println!("{md}");
    for (name, text) in &report.failed_logs {
        let from = text.char_indices().rev().nth(20_000).map_or(0, |(i, _)| i);
        println!("--- {name} (tail)\n{}", &text[from..]);
    }
    assert!(report.ok(), "{md}");
    assert_eq!(report.outcomes.len(), 5);
    assert!(report.acked_points > 0, "{md}");
    let dashboards = report
        .checks
        .iter()
        .flat_map(|(_, c)| c)
        .map(|c| c.meta_acked)
        .max();
    assert!(
        dashboards > Some(0),
        "no metadata write was acknowledged: {md}"
    );
    // Every fault ended with the cluster taking writes again.
    for o in &report.outcomes {
        assert!(o.throughput[2] > 0.0, "no writes after {}: {md}", o.fault);
    }
}

/// A node whose messages to the others are lost while it still hears them (a one-way
/// partition) cannot commit anything, yet it still sees the leaders elected without it. Its
/// clients must hear "retry elsewhere" soon, not wait on forwards and elections it cannot
/// complete: a client library's timeout (the chaos workload's is 3 s) must not be what ends
/// their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_one_way_refuses_writes_instead_of_holding_them() {
    use std::time::{Duration, Instant};

    use chaos::relay::LinkFault;

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pulseboard"));
    let cluster = chaos::cluster::Cluster::start(bin, 3, 0).await.unwrap();
    cluster.wait_settled(Duration::from_secs(30)).await.unwrap();
    let victim = cluster.busiest_leader().await.unwrap();
    let other = (victim + 1) % 3;
    let client = reqwest::Client::new();
    let tokens = [
        cluster.token(victim).await.unwrap(),
        cluster.token(other).await.unwrap(),
    ];
    // 64 series: a share for nearly every shard, led by every node.
    let write = |node: usize, token: &str, key: String| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let points: Vec<_> = (0..64)
            .map(|s| {
                serde_json::json!({
                    "metric": "cut",
                    "timestamp": now,
                    "value": 1.0,
                    "dimensions": {"s": s.to_string()},
                })
            })
            .collect();
        client
            .post(format!("{}/api/v1/ingest", cluster.nodes[node].base()))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "data_points": points }))
            .timeout(Duration::from_secs(4))
            .send()
    };
    write(victim, &tokens[0], "before".into())
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    for o in (0..3).filter(|&o| o != victim) {
        cluster.faults.set(victim, o, LinkFault::CUT);
    }
    let cut = Instant::now();
    let mut answers = Vec::new();
    let mut n = 0;
    while cut.elapsed() < Duration::from_secs(8) {
        n += 1;
        let sent = Instant::now();
        let answer = write(victim, &tokens[0], format!("cut-{n}")).await;
        let took = sent.elapsed();
        match answer {
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                assert_eq!(
                    status,
                    reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    "a write through the cut-off node: {body}"
                );
                assert!(body.contains("retry"), "{body}");
                answers.push((took, body));
            }
            Err(e) => panic!(
                "write {n}, sent {:?} after the cut, not answered within {took:?}: {e}",
                sent - cut
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "answers through the cut-off node: {:?}",
        answers.iter().map(|(took, _)| took).collect::<Vec<_>>()
    );
    assert!(answers.len() >= 3, "{answers:?}");

    // Retries writes through `node` until one is taken, for at most 15 s.
    let taken = |node: usize, token: &str, what: &'static str| {
        let token = token.to_owned();
        let write = &write;
        async move {
            let retried = async {
                for n in 0.. {
                    if let Ok(r) = write(node, &token, format!("{what}-{n}")).await {
                        if r.status().is_success() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(15), retried)
                .await
                .unwrap_or_else(|_| panic!("no write through node {node} taken ({what})"));
        }
    };
    // The others elect leaders for the victim's shards and take writes meanwhile.
    taken(other, &tokens[1], "others").await;
    // Healed, the victim takes writes again.
    cluster.faults.heal();
    taken(victim, &tokens[0], "healed").await;
}
