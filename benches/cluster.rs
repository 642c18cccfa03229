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

fn args(url: &str, points: u64, connections: u64) -> LoadArgs {
    LoadArgs {
        remote: Remote {
            url: url.to_owned(),
            token: None,
            user: "admin".into(),
            password: Some(PASSWORD.into()),
        },
        protocol: Wire::Line,
        points,
        batch: 10_000,
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
    // One measured load through `entry`: its summary and the CPU seconds each of `watched`
    // spent on it.
    let run = |entry: &str, watched: &[&common::ClusterNode]| {
        let c0 = cpu_of(watched);
        let s = rt.block_on(drive(&args(entry, points, 4))).unwrap();
        let cpu: Vec<f64> = cpu_of(watched)
            .iter()
            .zip(&c0)
            .map(|(a, b)| a - b)
            .collect();
        (s, cpu)
    };
    rt.block_on(async {
        drive(&args(&single.base, 100_000, 4)).await.unwrap();
        drive(&args(&nodes[0].base, 100_000, 4)).await.unwrap();
        drive(&args(&pinned[0].base, 100_000, 4)).await.unwrap();
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
    let mut ones = Vec::new();
    // Per arrangement: throughput, its ratio to the round's single node, CPU ratio.
    let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); arrangements.len()];
    for round in 1..=ROUNDS {
        let (one, single_cpu) = run(&single.base, &[&single]);
        report(&format!("round {round}: 1 node"), &one);
        ones.push(one.points_per_second);
        for ((name, cluster), (vias, ratios, cpu_ratios)) in arrangements.iter().zip(&mut results) {
            let (via_one, cluster_cpu) = run(&cluster[0].base, cluster);
            report(
                &format!("round {round}: 3 nodes, RF 3, {name}, all load to one node"),
                &via_one,
            );
            // CPU time per point is what the three nodes add up to on shared cores.
            let total: f64 = cluster_cpu.iter().sum();
            println!(
                "round {round}: CPU per point: 1 node {:.2} us; 3 nodes, {name}: {:.2} us (entry node {:.2}, others {:.2} and {:.2}): {:.2}x",
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
    drop(single);
    let one_median = median(&mut ones);
    println!("median of {ROUNDS} rounds: 1 node {one_median:.0} points/s");
    for ((name, _), (vias, ratios, cpu_ratios)) in arrangements.iter().zip(&mut results) {
        println!(
            "median of {ROUNDS} rounds: 3 nodes RF 3, {name}, via one node {:.0} points/s; ratio {:.2} (rounds: {}); cluster CPU per point {:.2}x the single node's",
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
    drop(arrangements);
    drop(pinned);
    let spread = rt.block_on(async {
        let runs = nodes.iter().enumerate().map(|(i, n)| {
            let a = LoadArgs {
                metric: format!("spread{i}"),
                ..args(&n.base, points / 3, 2)
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
    let metrics = rt.block_on(async {
        reqwest::get(format!("{}/metrics", nodes[0].base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let rpcs = counter("pulseboard_raft_batched_rpcs_total ");
    let frames = counter("pulseboard_raft_batch_frames_total ");
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
