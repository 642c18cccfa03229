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
