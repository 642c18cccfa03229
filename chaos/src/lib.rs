//! Pulseboard's chaos suite: real node processes on loopback, a fault-injecting relay on
//! every node-to-node link, a workload that records every acknowledgement, and a checker
//! that finds every acknowledged point exactly once afterwards.
//!
//! `smoke` runs in the test suite (three faults, a few minutes in a debug build); the
//! `pulseboard-chaos` binary runs the full suite and writes a report.

pub mod checker;
pub mod cluster;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod workload;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use cluster::Cluster;
use report::Report;
use scenario::{Fault, Outcome};
use workload::{Options, Workload};

/// How many nodes a suite starts, and how many more it keeps ready to join (a rebalance).
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub nodes: usize,
    pub spare: usize,
}

/// Runs faults one after another against one cluster under one workload, checking every
/// `check_every` faults and at the end. `next` picks the fault for step `i`.
pub async fn run_suite(
    bin: &Path,
    size: Size,
    steps: usize,
    check_every: usize,
    options: Options,
    mut next: impl FnMut(usize) -> (Fault, Duration),
    mut progress: impl FnMut(&Outcome),
) -> Result<Report> {
    let mut cluster = Cluster::start(bin, size.nodes, size.spare).await?;
    cluster.wait_settled(Duration::from_secs(60)).await?;
    let bases = cluster.nodes.iter().map(|n| n.base()).collect();
    let mut workload = Workload::start(bases, options);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut report = Report::default();
    for i in 0..steps {
        let (fault, hold) = next(i);
        let outcome = scenario::run(&mut cluster, &workload, fault, hold).await?;
        progress(&outcome);
        report.outcomes.push(outcome);
        if (i + 1) % check_every.max(1) == 0 && i + 1 < steps {
            let record = workload.snapshot();
            let checks =
                checker::check(&cluster, &record, workload.t0_ms, Duration::from_secs(30)).await?;
            let label = format!("after fault {}", i + 1);
            keep_logs_if_failed(&cluster, &mut report, &label, &checks);
            report.checks.push((label, checks));
        }
    }
    workload.stop().await;
    let record = workload.snapshot();
    let checks = checker::check(&cluster, &record, workload.t0_ms, Duration::from_secs(60)).await?;
    keep_logs_if_failed(&cluster, &mut report, "at the end", &checks);
    report.checks.push(("at the end".into(), checks));
    report.acked_points = record.acked.iter().map(|b| u64::from(b.n)).sum();
    report.uncertain_points = record.uncertain.iter().map(|b| u64::from(b.n)).sum();
    report.attempts = record.attempts;
    Ok(report)
}

/// A failed check keeps the tail of every node's log in the report.
fn keep_logs_if_failed(
    cluster: &Cluster,
    report: &mut Report,
    label: &str,
    checks: &[checker::Check],
) {
    if checks.iter().all(checker::Check::ok) {
        return;
    }
    let name = label.replace(' ', "-");
    for (i, text) in cluster.log_tails(1 << 20) {
        report
            .failed_logs
            .push((format!("{name}-node{i}.log"), text));
    }
}

/// The smoke run: three nodes; kill -9 of the leader, a partitioned leader, a paused leader,
/// a follower whose log tail is cut, then a fourth node joining and one of the first three
/// removed; the checker after each.
pub async fn smoke(bin: &Path) -> Result<Report> {
    let faults = [
        Fault::KillLeader,
        Fault::PartitionLeader,
        Fault::PauseLeader,
        Fault::TruncatedLog,
        Fault::Rebalance,
    ];
    run_suite(
        bin,
        Size { nodes: 3, spare: 1 },
        faults.len(),
        1,
        Options {
            writers: 3,
            batch: 100,
            ..Options::default()
        },
        |i| (faults[i], Duration::from_secs(3)),
        |_| {},
    )
    .await
}
