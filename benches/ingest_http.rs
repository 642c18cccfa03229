//! End-to-end HTTP ingest: the real release binary on loopback, driven by `pulseboard load`'s
//! generator (line protocol, 4 connections, batches of 10 000 lines, 10 000 series), fsync
//! before every acknowledgement. Also with a simulated 5 ms fsync (a slow disk, SPEC §6).
//! Run: `cargo bench --bench ingest_http`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pulseboard::load::{drive, LoadArgs, Wire};

fn run(label: &str, extra: &[&str], wire: Wire, points: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args(["serve", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("PULSEBOARD_ADMIN_PASSWORD", "bench-password")
        .env("PULSEBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("pulseboard ready: http://") {
            addr = rest.split_whitespace().next().unwrap_or("").to_owned();
            break;
        }
    }
    let base = format!("http://{addr}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let summary = rt.block_on(async {
        let args = LoadArgs {
            url: base.clone(),
            token: None,
            user: "admin".into(),
            password: Some("bench-password".into()),
            protocol: wire,
            points,
            batch: 10_000,
            series: 10_000,
            connections: 4,
            metric: "bench".into(),
            json: true,
        };
        // A short warm-up, then the measured run.
        drive(&LoadArgs {
            points: 100_000,
            ..args.clone()
        })
        .await
        .expect("warm-up");
        drive(&args).await.expect("load")
    });
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{label}: {:.0} points/s, request latency p50 {:.1} ms p99 {:.1} ms, errors {}",
        summary.points_per_second, summary.latency_ms_p50, summary.latency_ms_p99, summary.errors
    );
    std::thread::sleep(Duration::from_millis(200));
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores; server and load generator share them");
    run("line protocol, fsync on", &[], Wire::Line, 2_000_000);
    run("JSON, fsync on", &[], Wire::Json, 1_000_000);
    run(
        "line protocol, fsync + 5 ms simulated delay",
        &["--simulated-fsync-delay", "5ms"],
        Wire::Line,
        2_000_000,
    );
}
