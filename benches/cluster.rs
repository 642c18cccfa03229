//! Ingest into a three-node cluster (every shard replicated three times, fsync on every
//! node) against a single node, in one run on the same machine, as a ratio. The three nodes
//! and the load generator share the machine's cores.
//! Run: `cargo bench --bench cluster`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{free_quic, start_cluster_node, PASSWORD};
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
    }
}

fn report(label: &str, s: &Summary) {
    println!(
        "{label}: {:.0} points/s, request p50 {:.1} ms p99 {:.1} ms, errors {}",
        s.points_per_second, s.latency_ms_p50, s.latency_ms_p99, s.errors
    );
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores shared by every node and the load generator");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let points = 2_000_000;

    let dir = tempfile::tempdir().unwrap();
    let single = start_cluster_node(&dir.path().join("single"), &free_quic(), None);
    let one = rt.block_on(async {
        drive(&args(&single.base, 100_000, 4)).await.unwrap();
        drive(&args(&single.base, points, 4)).await.unwrap()
    });
    drop(single);
    report("1 node", &one);

    let quic: Vec<String> = (0..3).map(|_| free_quic()).collect();
    let mut nodes = vec![start_cluster_node(&dir.path().join("n0"), &quic[0], None)];
    for (i, q) in quic.iter().enumerate().skip(1) {
        nodes.push(start_cluster_node(
            &dir.path().join(format!("n{i}")),
            q,
            Some(&quic[0]),
        ));
    }
    std::thread::sleep(Duration::from_secs(1));
    let via_one = rt.block_on(async {
        drive(&args(&nodes[0].base, 100_000, 4)).await.unwrap();
        drive(&args(&nodes[0].base, points, 4)).await.unwrap()
    });
    report("3 nodes, RF 3, all load to one node", &via_one);
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
    println!("3 nodes, RF 3, load spread over all three (2 connections each): {total:.0} points/s, worst request p99 {p99:.1} ms");
    println!(
        "ratio to one node: {:.2} (one entry node), {:.2} (spread)",
        via_one.points_per_second / one.points_per_second,
        total / one.points_per_second
    );
}
