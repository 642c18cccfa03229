//! Ingest into a three-node cluster (every shard replicated three times, fsync on every
//! node) against a single node, in one run on the same machine, as a ratio. The three nodes
//! and the load generator share the machine's cores.
//! Run: `cargo bench --bench cluster`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{free_quic, process_cpu_seconds, start_cluster_node, PASSWORD};
use pulseboard::load::{drive, LoadArgs, Summary, Wire};
use pulseboard::remote::Remote;

fn args(url: &str, points: u64, connections: u64, batch: u64) -> LoadArgs {
    LoadArgs {
        remote: Remote {
            url: url.to_owned(),
            token: None,
            user: "admin".into(),
            password: Some(PASSWORD.into()),
        },
        protocol: Wire::Line,
        points,
        batch,
        series: 10_000,
        connections,
        metric: "bench".into(),
        json: true,
        quic_addr: None,
        cert: Default::default(),
    }
}

fn report(label: &str, s: &Summary) {
    println!(
        "{label}: {:.0} points/s, request p50 {:.1} ms p99 {:.1} ms, errors {}",
        s.points_per_second, s.latency_ms_p50, s.latency_ms_p99, s.errors
    );
}

/// Rounds of single node against cluster; the figures are medians.
const ROUNDS: usize = 5;

/// The loads each round drives through one node: a few connections sending large requests
/// (a collector, a bulk loader), and many sending small ones (a fleet of agents), whose
/// requests reach each shard while its entry before is being written and share the next.
const LOADS: [(&str, u64, u64); 2] = [
    ("4 connections x 10 000 points a request", 4, 10_000),
    ("32 connections x 1 000 points a request", 32, 1_000),
];

/// Log entries the nodes wrote to the shards they lead, and the requests' shares of a shard
/// those carried, summed over `nodes` (from /metrics).
async fn written(nodes: &[&common::ClusterNode]) -> (f64, f64) {
    let mut sum = (0.0, 0.0);
    for n in nodes {
        let text = common::metrics(&n.base).await;
        sum.0 += common::metric(&text, "pulseboard_shard_entries_total");
        sum.1 += common::metric(&text, "pulseboard_shard_entry_batches_total");
    }
    sum
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores shared by every node and the load generator");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let points = 2_000_000;

    let dir = tempfile::tempdir().unwrap();
    // The single node and the cluster run side by side and take turns: five rounds of each,
    // alternating, so a change in the machine's other load hits both alike; the figures
    // are the medians. The idle side costs a few percent of a core (see the idle figure).
    let single = start_cluster_node(&dir.path().join("single"), &free_quic(), None, &[]);
    let nodes = three_nodes(&dir.path().join("c16"), &[]);
    let led = rt.block_on(common::leaders_balanced(&nodes[0].base));
    println!("balanced cluster: shards led by each node {led:?}");
    // The same cluster with leaders left where elections put them: every shard led by the
    // node the load enters through (it grew from that node), so it forwards nothing.
    let pinned = three_nodes(&dir.path().join("p16"), &["--balance-leaders", "false"]);
    std::thread::sleep(Duration::from_secs(1));
    let cpu_of = |ns: &[&common::ClusterNode]| -> Vec<f64> {
        ns.iter()
            .map(|n| process_cpu_seconds(n.child.id()))
            .collect()
    };
    // One measured load through `entry`: its summary, the CPU seconds each of `watched` spent
    // on it, and the requests' shares of a shard per log entry the nodes wrote.
    let run = |entry: &str, watched: &[&common::ClusterNode], connections, batch| {
        let c0 = cpu_of(watched);
        let w0 = rt.block_on(written(watched));
        let s = rt
            .block_on(drive(&args(entry, points, connections, batch)))
            .unwrap();
        let cpu: Vec<f64> = cpu_of(watched)
            .iter()
            .zip(&c0)
            .map(|(a, b)| a - b)
            .collect();
        let w1 = rt.block_on(written(watched));
        let per_entry = (w1.1 - w0.1) / (w1.0 - w0.0).max(1.0);
        (s, cpu, per_entry)
    };
    rt.block_on(async {
        drive(&args(&single.base, 100_000, 4, 10_000))
            .await
            .unwrap();
        drive(&args(&nodes[0].base, 100_000, 4, 10_000))
            .await
            .unwrap();
        drive(&args(&pinned[0].base, 100_000, 4, 10_000))
            .await
            .unwrap();
    });
    let us = |cpu: f64| cpu / points as f64 * 1e6;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let arrangements = [
        ("leaders balanced", nodes.iter().collect::<Vec<_>>()),
        (
            "leaders on the entry node",
            pinned.iter().collect::<Vec<_>>(),
        ),
    ];
    let mut one_medians = Vec::new();
    for (load, connections, batch) in LOADS {
        println!("load: {load}");
        let mut ones = Vec::new();
        // Per arrangement: throughput, its ratio to the round's single node, CPU ratio.
        let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); arrangements.len()];
        for round in 1..=ROUNDS {
            let (one, single_cpu, per_entry) = run(&single.base, &[&single], connections, batch);
            report(&format!("round {round}: 1 node"), &one);
            println!("round {round}: 1 node: {per_entry:.1} requests' shares per log entry");
            ones.push(one.points_per_second);
            for ((name, cluster), (vias, ratios, cpu_ratios)) in
                arrangements.iter().zip(&mut results)
            {
                let (via_one, cluster_cpu, per_entry) =
                    run(&cluster[0].base, cluster, connections, batch);
                report(
                    &format!("round {round}: 3 nodes, RF 3, {name}, all load to one node"),
                    &via_one,
                );
                // CPU time per point is what the three nodes add up to on shared cores.
                let total: f64 = cluster_cpu.iter().sum();
                println!(
                    "round {round}: CPU per point: 1 node {:.2} us; 3 nodes, {name}: {:.2} us (entry node {:.2}, others {:.2} and {:.2}): {:.2}x; {per_entry:.1} requests' shares per log entry",
                    us(single_cpu[0]),
                    us(total),
                    us(cluster_cpu[0]),
                    us(cluster_cpu[1]),
                    us(cluster_cpu[2]),
                    total / single_cpu[0]
                );
                vias.push(via_one.points_per_second);
                ratios.push(via_one.points_per_second / one.points_per_second);
                cpu_ratios.push(total / single_cpu[0]);
            }
        }
        let one_median = median(&mut ones);
        one_medians.push(one_median);
        println!("{load}: median of {ROUNDS} rounds: 1 node {one_median:.0} points/s");
        for ((name, _), (vias, ratios, cpu_ratios)) in arrangements.iter().zip(&mut results) {
            println!(
                "{load}: median of {ROUNDS} rounds: 3 nodes RF 3, {name}, via one node {:.0} points/s; ratio {:.2} (rounds: {}); cluster CPU per point {:.2}x the single node's",
                median(vias),
                median(&mut ratios.clone()),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(cpu_ratios)
            );
        }
    }
    drop(single);
    let one_median = one_medians[0];
    drop(arrangements);
    drop(pinned);
    let spread = rt.block_on(async {
        let runs = nodes.iter().enumerate().map(|(i, n)| {
            let a = LoadArgs {
                metric: format!("spread{i}"),
                ..args(&n.base, points / 3, 2, 10_000)
            };
            async move { drive(&a).await.unwrap() }
        });
        futures_util::future::join_all(runs).await
    });
    let total: f64 = spread.iter().map(|s| s.points_per_second).sum();
    let p99 = spread.iter().map(|s| s.latency_ms_p99).fold(0.0, f64::max);
    println!("3 nodes, RF 3, leaders balanced, load spread over all three (2 connections each): {total:.0} points/s, worst request p99 {p99:.1} ms");
    println!(
        "ratio of the spread load to the single node's median: {:.2}",
        total / one_median
    );
    drop(nodes);

    // What many groups cost when nothing is written: heartbeats (batched per peer) and the
    // failure detector's probes.
    let shards = 256;
    let nodes = three_nodes(
        &dir.path().join(format!("c{shards}")),
        &["--shards", &shards.to_string()],
    );
    rt.block_on(common::leaders_balanced(&nodes[0].base));
    std::thread::sleep(Duration::from_secs(2));
    let cpu = || -> f64 {
        nodes
            .iter()
            .map(|n| process_cpu_seconds(n.child.id()))
            .sum()
    };
    let (c0, t0) = (cpu(), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let per_node = (cpu() - c0) / t0.elapsed().as_secs_f64() / 3.0;
    let metrics = rt.block_on(common::metrics(&nodes[0].base));
    let rpcs = common::metric(&metrics, "pulseboard_raft_batched_rpcs_total");
    let frames = common::metric(&metrics, "pulseboard_raft_batch_frames_total");
    println!(
        "3 nodes, {shards} shards, idle: {:.1} % of a core per node; heartbeats and votes: {:.1} per frame",
        per_node * 100.0,
        rpcs / frames.max(1.0)
    );
}

/// Three nodes joined into one cluster, each started with `extra` flags.
fn three_nodes(root: &std::path::Path, extra: &[&str]) -> Vec<common::ClusterNode> {
    let quic: Vec<String> = (0..3).map(|_| free_quic()).collect();
    let mut nodes = vec![start_cluster_node(&root.join("n0"), &quic[0], None, extra)];
    for (i, q) in quic.iter().enumerate().skip(1) {
        nodes.push(start_cluster_node(
            &root.join(format!("n{i}")),
            q,
            Some(&quic[0]),
            extra,
        ));
    }
    nodes
}
