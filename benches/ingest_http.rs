//! End-to-end HTTP ingest: the real release binary on loopback, driven by `pulseboard load`'s
//! generator (line protocol, 4 connections, batches of 10 000 lines, 10 000 series), fsync
//! before every acknowledgement. Also with a simulated 5 ms fsync (a slow disk, SPEC §6).
//! Run: `cargo bench --bench ingest_http`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pulseboard::load::{drive, LoadArgs, Wire};
use pulseboard::remote::Remote;

fn run(label: &str, extra: &[&str], wire: Wire, points: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--data-dir",
        ])
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
            remote: Remote {
                url: base.clone(),
                token: None,
                user: "admin".into(),
                password: Some("bench-password".into()),
            },
            protocol: wire,
            points,
            batch: 10_000,
            series: 10_000,
            connections: 4,
            metric: "bench".into(),
            json: true,
            quic_addr: None,
            cert: dir.path().join("tls/cert.pem"),
        };
        // A short warm-up (10 requests), then the measured run.
        drive(&LoadArgs {
            points: 100_000,
            ..args.clone()
        })
        .await
        .expect("warm-up");
        drive(&args).await.expect("load")
    });
    // The server's own figures: peak RSS, and bytes per raw point from /metrics.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let metrics = rt.block_on(common::metrics(&base));
    let gauge = |name: &str| common::metric(&metrics, name);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{label}: {:.0} points/s, request latency p50 {:.1} ms p99 {:.1} ms, errors {}",
        summary.points_per_second, summary.latency_ms_p50, summary.latency_ms_p99, summary.errors
    );
    println!(
        "  server after {:.0} points in {:.0} series: peak RSS {:.0} MiB, RSS {:.0} MiB, raw points {:.2} bytes/point, rollups {:.1} MiB, {:.1} fsyncs per request (warm-up included)",
        gauge("pulseboard_raw_points"),
        gauge("pulseboard_series"),
        kib("VmHWM:") / 1024.0,
        kib("VmRSS:") / 1024.0,
        gauge("pulseboard_raw_bytes_per_point"),
        gauge("pulseboard_rollup_bytes") / 1048576.0,
        gauge("pulseboard_wal_syncs_total") / (summary.requests + 10) as f64
    );
    std::thread::sleep(Duration::from_millis(200));
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores; server and load generator share them");
    // 0.1 M warm-up + 2.9 M: 3 M points in 10 000 series, the memory shape.
    run("line protocol, fsync on", &[], Wire::Line, 2_900_000);
    run(
        "QUIC (pulseboard-client), fsync on",
        &[],
        Wire::Quic,
        2_900_000,
    );
    run(
        "JSON (pulseboard-client over HTTP), fsync on",
        &[],
        Wire::Json,
        1_000_000,
    );
    run(
        "line protocol, fsync + 5 ms simulated delay",
        &["--simulated-fsync-delay", "5ms"],
        Wire::Line,
        2_000_000,
    );
}
