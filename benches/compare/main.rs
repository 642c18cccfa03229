//! Pulseboard, VictoriaMetrics and InfluxDB 1.x side by side, in one run on one machine: the
//! same generated line protocol loaded into each (over HTTP, the same batches from the same
//! number of connections), each with its own defaults for durability; then throughput, peak
//! memory (RSS), disk used, and the latency of the same range query, as ratios to Pulseboard.
//! Each system's answer to the query is also checked against the data sent.
//!
//! Run `benches/compare/run.sh` (installs `victoria-metrics` and `influxdb` from Debian, then
//! runs this). Knobs: `COMPARE_POINTS` (default 10 000 000), `COMPARE_SERIES` (10 000),
//! `COMPARE_SYSTEMS` (default `pulseboard,pulseboard-no-fsync,victoria-metrics,influxdb`).
//! Disk is measured after each system is stopped cleanly (what it keeps at rest); peak RSS
//! while it runs.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BATCH: usize = 10_000;
const CONNECTIONS: usize = 4;
/// Spacing of one series' points.
const STEP_MS: i64 = 1_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The data set: `points` lines of `bench,host=h<i> value=<v> <ms>`, each series one point
/// a second, in batches of 10 000 lines; and the sum of every value (what the query must add
/// up to).
fn generate(points: usize, series: usize, base_ms: i64) -> (Vec<bytes::Bytes>, f64) {
    let mut bodies = Vec::with_capacity(points.div_ceil(BATCH));
    let mut sum = 0.0;
    let mut k = 0;
    while k < points {
        let mut out = String::with_capacity(BATCH * 48);
        for _ in 0..BATCH.min(points - k) {
            let host = k % series;
            let ts = base_ms + (k / series) as i64 * STEP_MS;
            let v = (k % 1000) as f64 * 0.5;
            sum += v;
            let _ = writeln!(out, "bench,host=h{host} value={v} {ts}");
            k += 1;
        }
        bodies.push(bytes::Bytes::from(out));
    }
    (bodies, sum)
}

struct Measured {
    name: &'static str,
    points_per_second: f64,
    errors: usize,
    retries: usize,
    peak_rss_bytes: f64,
    disk_bytes: f64,
    query_ms: f64,
    query_sum: f64,
}

/// A system under test: where to write, how to query, what to measure.
trait System {
    fn name(&self) -> &'static str;
    fn pid(&self) -> u32;
    fn data_dir(&self) -> &Path;
    /// The write request for one body.
    fn write(&self, http: &reqwest::Client, body: bytes::Bytes) -> reqwest::RequestBuilder;
    /// Stops the system cleanly (SIGTERM): what it keeps on disk at rest is measured after.
    fn terminate(&mut self);
    /// After the load: whatever makes written data queryable and on disk.
    fn settle(&self, _http: &reqwest::Client) -> impl std::future::Future<Output = ()> {
        async {}
    }
    /// The per-minute sums of every series over `[start, end)`, added up.
    fn query(
        &self,
        http: &reqwest::Client,
        start_ms: i64,
        end_ms: i64,
    ) -> impl std::future::Future<Output = f64>;
}

struct Pulseboard(common::Server, &'static str);

impl System for Pulseboard {
    fn name(&self) -> &'static str {
        self.1
    }
    fn terminate(&mut self) {
        self.0.terminate();
    }
    fn pid(&self) -> u32 {
        self.0.pid()
    }
    fn data_dir(&self) -> &Path {
        self.0.data_dir()
    }
    fn write(&self, http: &reqwest::Client, body: bytes::Bytes) -> reqwest::RequestBuilder {
        // The InfluxDB 1.x path, as Telegraf would send it.
        http.post(format!("{}/write?db=bench&precision=ms", self.0.base))
            .header("Authorization", format!("Token {}", self.0.token))
            .body(body)
    }
    async fn query(&self, http: &reqwest::Client, start_ms: i64, end_ms: i64) -> f64 {
        let v: Value = http
            .get(format!(
                "{}/api/v1/metrics/bench.value/data?start={start_ms}&end={end_ms}&granularity=1m&aggregation=sum",
                self.0.base
            ))
            .bearer_auth(&self.0.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["series"][0]["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[1].as_f64())
            .sum()
    }
}

/// A process on a free port with its data in a temporary directory.
struct Process {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(http: &reqwest::Client, url: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} did not become ready at {url}");
}

/// Finds `bin` on the PATH, or says how to get it.
fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

struct Victoria(Process);

impl Victoria {
    async fn start(http: &reqwest::Client) -> Option<Victoria> {
        let bin = which("victoria-metrics")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("-storageDataPath={}", dir.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(http, &format!("{base}/health"), "VictoriaMetrics").await;
        Some(Victoria(Process { child, base, dir }))
    }
}

impl System for Victoria {
    fn name(&self) -> &'static str {
        "VictoriaMetrics"
    }
    fn terminate(&mut self) {
        common::terminate(&mut self.0.child);
    }
    fn pid(&self) -> u32 {
        self.0.child.id()
    }
    fn data_dir(&self) -> &Path {
        self.0.dir.path()
    }
    fn write(&self, http: &reqwest::Client, body: bytes::Bytes) -> reqwest::RequestBuilder {
        http.post(format!("{}/write?db=bench&precision=ms", self.0.base))
            .body(body)
    }
    async fn settle(&self, http: &reqwest::Client) {
        // Its ingest buffers are flushed to searchable parts every second or so; force it.
        let _ = http
            .get(format!("{}/internal/force_flush", self.0.base))
            .send()
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    async fn query(&self, http: &reqwest::Client, start_ms: i64, end_ms: i64) -> f64 {
        // Steps on whole minutes, each adding the minute that ends there: every point once.
        let start = start_ms / 1000 + 59;
        let end = end_ms / 1000 + 60;
        let v: Value = http
            .get(format!("{}/api/v1/query_range", self.0.base))
            .query(&[
                ("query", "sum(sum_over_time(bench_value[1m]))"),
                ("start", &start.to_string()),
                ("end", &end.to_string()),
                ("step", "60s"),
                ("nocache", "1"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]["result"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
            .sum()
    }
}

struct Influx(Process);

impl Influx {
    async fn start(http: &reqwest::Client) -> Option<Influx> {
        let bin = which("influxd")?;
        let dir = tempfile::tempdir().unwrap();
        let (port, rpc) = (free_port(), free_port());
        let d = dir.path().display();
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n"
        );
        let path = dir.path().join("influxdb.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(http, &format!("{base}/ping"), "InfluxDB").await;
        http.post(format!("{base}/query"))
            .form(&[("q", "CREATE DATABASE bench")])
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        Some(Influx(Process { child, base, dir }))
    }
}

impl System for Influx {
    fn name(&self) -> &'static str {
        "InfluxDB 1.x"
    }
    fn terminate(&mut self) {
        common::terminate(&mut self.0.child);
    }
    fn pid(&self) -> u32 {
        self.0.child.id()
    }
    fn data_dir(&self) -> &Path {
        self.0.dir.path()
    }
    fn write(&self, http: &reqwest::Client, body: bytes::Bytes) -> reqwest::RequestBuilder {
        http.post(format!("{}/write?db=bench&precision=ms", self.0.base))
            .body(body)
    }
    async fn query(&self, http: &reqwest::Client, start_ms: i64, end_ms: i64) -> f64 {
        let q = format!(
            "SELECT sum(\"value\") FROM \"bench\" WHERE time >= {start_ms}ms AND time < {end_ms}ms GROUP BY time(1m)"
        );
        let v: Value = http
            .get(format!("{}/query", self.0.base))
            .query(&[("db", "bench"), ("q", q.as_str()), ("epoch", "ms")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["results"][0]["series"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[1].as_f64())
            .sum()
    }
}

/// Every file's size under `dir`.
fn disk_bytes(dir: &Path) -> f64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total as f64
}

fn peak_rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

async fn measure(
    mut sys: impl System,
    http: &reqwest::Client,
    bodies: &[bytes::Bytes],
    (start, end): (i64, i64),
) -> Measured {
    let next = AtomicUsize::new(0);
    let (ok, errors, retries) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let started = Instant::now();
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= bodies.len() {
                break;
            }
            // A failed batch is sent again (up to 5 times), as a client would.
            for attempt in 1.. {
                match sys.write(http, bodies[i].clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    _ if attempt <= 5 => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    };
    futures_util::future::join_all((0..CONNECTIONS).map(|_| worker())).await;
    let seconds = started.elapsed().as_secs_f64();
    let lines = |b: &bytes::Bytes| b.iter().filter(|&&c| c == b'\n').count();
    let sent: usize = if errors.load(Ordering::Relaxed) == 0 {
        bodies.iter().map(lines).sum()
    } else {
        // Rarely: count only what was acknowledged (by batch size).
        ok.load(Ordering::Relaxed) * BATCH
    };
    sys.settle(http).await;
    let peak_rss_bytes = peak_rss(sys.pid());
    // One query to warm caches, then the median of five.
    let query_sum = sys.query(http, start, end).await;
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(sys.query(http, start, end).await);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let disk_running = disk_bytes(sys.data_dir());
    sys.terminate();
    let m = Measured {
        name: sys.name(),
        points_per_second: sent as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
        peak_rss_bytes,
        disk_bytes: disk_bytes(sys.data_dir()),
        query_ms: times[times.len() / 2],
        query_sum,
    };
    println!(
        "{}: {:.0} points/s over {seconds:.1} s; peak RSS {:.0} MiB; disk {:.0} MiB after the load, {:.0} MiB at rest; query {:.1} ms",
        m.name,
        m.points_per_second,
        m.peak_rss_bytes / 1048576.0,
        disk_running / 1048576.0,
        m.disk_bytes / 1048576.0,
        m.query_ms
    );
    m
}

#[tokio::main]
async fn main() {
    let points = env_or("COMPARE_POINTS", 10_000_000);
    let series = env_or("COMPARE_SERIES", 10_000);
    let systems = std::env::var("COMPARE_SYSTEMS")
        .unwrap_or_else(|_| "pulseboard,pulseboard-no-fsync,victoria-metrics,influxdb".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Two hours back, on a whole minute plus a second (so per-minute windows ending on whole
    // minutes take every point once).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now - 2 * 3_600_000) / 60_000 * 60_000 + 1_000;
    let end = base + (points.div_ceil(series) as i64) * STEP_MS;
    let (bodies, want) = generate(points, series, base);
    println!(
        "machine: {cores} cores; {points} points in {series} series ({} batches of {BATCH} lines, {CONNECTIONS} connections), {:.0} MiB of line protocol",
        bodies.len(),
        bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / 1048576.0
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut results = Vec::new();
    for name in systems.split(',').map(str::trim) {
        let m = match name {
            "pulseboard" => Some(
                measure(
                    Pulseboard(common::start().await, "Pulseboard"),
                    &http,
                    &bodies,
                    (base, end),
                )
                .await,
            ),
            // Acknowledging before the fsync, as VictoriaMetrics does by default: the same
            // durability, to see what the fsync costs.
            "pulseboard-no-fsync" => Some(
                measure(
                    Pulseboard(
                        common::start_with(&["--no-fsync"]).await,
                        "Pulseboard --no-fsync",
                    ),
                    &http,
                    &bodies,
                    (base, end),
                )
                .await,
            ),
            "victoria-metrics" => match Victoria::start(&http).await {
                Some(s) => Some(measure(s, &http, &bodies, (base, end)).await),
                None => None,
            },
            "influxdb" => match Influx::start(&http).await {
                Some(s) => Some(measure(s, &http, &bodies, (base, end)).await),
                None => None,
            },
            other => panic!("unknown system {other:?}"),
        };
        match m {
            Some(m) => results.push(m),
            None => println!("{name}: not installed (benches/compare/run.sh installs it); skipped"),
        }
    }
    report(&results, points as f64, want);
}

fn report(results: &[Measured], points: f64, want: f64) {
    let Some(pb) = results.iter().find(|m| m.name == "Pulseboard") else {
        return;
    };
    println!();
    println!("| System | Ingest points/s | × Pulseboard | Peak RSS | Bytes of RSS per point | Disk at rest | Bytes on disk per point | Query (sum per minute, all series) | × Pulseboard | Query answer complete |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for m in results {
        println!(
            "| {} | {:.0}{} | {:.2} | {:.0} MiB | {:.1} | {:.0} MiB | {:.2} | {:.1} ms | {:.2} | {} |",
            m.name,
            m.points_per_second,
            if m.errors + m.retries > 0 {
                format!(" ({} errors, {} retried)", m.errors, m.retries)
            } else {
                String::new()
            },
            m.points_per_second / pb.points_per_second,
            m.peak_rss_bytes / 1048576.0,
            m.peak_rss_bytes / points,
            m.disk_bytes / 1048576.0,
            m.disk_bytes / points,
            m.query_ms,
            m.query_ms / pb.query_ms,
            if (m.query_sum - want).abs() <= want * 1e-9 {
                "yes".to_owned()
            } else {
                format!("no: {:.0} of {want:.0}", m.query_sum)
            }
        );
    }
}
