//! `pulseboard load`: drives a running node with generated points — line protocol over HTTP,
//! or through the Rust client (`pulseboard-client`) as JSON over HTTP or batches over QUIC —
//! and reports the achieved rate and the request latency percentiles. Also the harness of
//! the end-to-end ingest benches (`benches/ingest_http.rs`), which read the `--json` summary.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::remote::Remote;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Wire {
    /// InfluxDB line protocol to /api/v1/write.
    Line,
    /// The JSON ingest body to /api/v1/ingest, through the Rust client.
    Json,
    /// Batches over QUIC (pulseboard-ingest/1), through the Rust client.
    Quic,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// The node, and credentials with the ingest scope.
    #[command(flatten)]
    pub remote: Remote,
    #[arg(long, value_enum, default_value = "line")]
    pub protocol: Wire,
    /// Points to send in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub points: u64,
    /// Points per request.
    #[arg(long, default_value_t = 10_000)]
    pub batch: u64,
    /// Distinct series (host dimension values).
    #[arg(long, default_value_t = 10_000)]
    pub series: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub connections: u64,
    /// Metric (measurement) name.
    #[arg(long, default_value = "load")]
    pub metric: String,
    /// Print the summary as one JSON object (for benches) instead of text.
    #[arg(long)]
    pub json: bool,
    /// QUIC: the node's QUIC address [default: the one the node reports].
    #[arg(long)]
    pub quic_addr: Option<String>,
    /// QUIC: the node's certificate, to pin.
    #[arg(long, default_value = "pulseboard-data/tls/cert.pem")]
    pub cert: std::path::PathBuf,
}

#[derive(Serialize, Debug)]
pub struct Summary {
    pub points: u64,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub points_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub first_error: Option<String>,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let summary = drive(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "sent {} points in {} requests over {:.2} s: {:.0} points/s\nlatency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\nerrors {}{}",
            summary.points,
            summary.requests,
            summary.seconds,
            summary.points_per_second,
            summary.latency_ms_p50,
            summary.latency_ms_p90,
            summary.latency_ms_p99,
            summary.latency_ms_max,
            summary.errors,
            summary
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    if summary.errors > 0 && summary.requests == summary.errors {
        bail!("every request failed");
    }
    Ok(())
}

/// Point `i` of batch `n`: spread over the series, each with its own timestamp.
fn nth(args: &LoadArgs, n: u64, i: u64, base_ms: i64) -> (u64, i64, f64) {
    let k = n * args.batch + i;
    let host = k % args.series;
    let ts = base_ms + (k / args.series) as i64;
    let v = (k % 1000) as f64 * 0.5;
    (host, ts, v)
}

/// Batch `n` as line protocol.
fn lines(args: &LoadArgs, n: u64, base_ms: i64) -> String {
    let mut out = String::with_capacity(args.batch as usize * 64);
    for i in 0..args.batch {
        let (host, ts, v) = nth(args, n, i, base_ms);
        let _ = writeln!(out, "{},host=h{host} value={v} {ts}", args.metric);
    }
    out
}

/// Batch `n` as points (metric `<metric>.value`, as line protocol names it).
fn points(args: &LoadArgs, n: u64, base_ms: i64) -> Vec<protocol::DataPoint> {
    let metric: protocol::Name = format!("{}.value", args.metric).into();
    (0..args.batch)
        .map(|i| {
            let (host, ts, v) = nth(args, n, i, base_ms);
            protocol::DataPoint {
                metric: metric.clone(),
                timestamp_ms: ts,
                value: v,
                dimensions: vec![("host".into(), format!("h{host}").into())],
            }
        })
        .collect()
}

/// Where batches go.
#[derive(Clone)]
enum Sink {
    Lines {
        http: reqwest::Client,
        url: String,
        token: String,
    },
    Client(pulseboard_client::Client),
}

impl Sink {
    async fn open(args: &LoadArgs) -> anyhow::Result<Sink> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections as usize)
            .timeout(Duration::from_secs(60))
            .build()
            .context("build the HTTP client")?;
        let token = args.remote.token(&http).await?;
        let transport = match args.protocol {
            Wire::Line => {
                return Ok(Sink::Lines {
                    url: args.remote.endpoint("/api/v1/write?precision=ms"),
                    http,
                    token,
                })
            }
            Wire::Json => pulseboard_client::Transport::Http,
            Wire::Quic => pulseboard_client::Transport::Quic {
                certificate_pem: std::fs::read_to_string(&args.cert).with_context(|| {
                    format!(
                        "read the node's certificate {} (--cert; it is <data-dir>/tls/cert.pem)",
                        args.cert.display()
                    )
                })?,
            },
        };
        let node = match (args.protocol, &args.quic_addr) {
            (Wire::Quic, Some(a)) => a.clone(),
            (Wire::Quic, None) => quic_addr(&http, args, &token).await?,
            _ => args.remote.url.trim_end_matches('/').to_owned(),
        };
        let mut config = pulseboard_client::Config::new(vec![node], token, transport);
        // A load run measures the node: one attempt per batch, failures counted.
        config.retry_for = Duration::ZERO;
        config.attempt_timeout = Duration::from_secs(60);
        Ok(Sink::Client(pulseboard_client::Client::new(config)?))
    }

    async fn send(&self, args: &LoadArgs, n: u64, base_ms: i64) -> Result<(), String> {
        match self {
            Sink::Lines { http, url, token } => {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "text/plain")
                    .body(lines(args, n, base_ms))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().is_success() {
                    return Ok(());
                }
                let status = r.status();
                Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
            }
            Sink::Client(c) => c
                .send(&points(args, n, base_ms))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

/// The QUIC address the node reports for itself.
async fn quic_addr(http: &reqwest::Client, args: &LoadArgs, token: &str) -> anyhow::Result<String> {
    let view: serde_json::Value = http
        .get(args.remote.endpoint("/api/v1/cluster"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // The node whose HTTP address is the one we talk to (or the only one).
    let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .find(|n| {
            n["http_addr"]
                .as_str()
                .is_some_and(|a| args.remote.url.contains(a))
        })
        .or_else(|| (nodes.len() == 1).then(|| &nodes[0]))
        .and_then(|n| n["quic_addr"].as_str())
        .map(str::to_owned)
        .context("the node did not report a QUIC address; pass --quic-addr")
}

pub async fn drive(args: &LoadArgs) -> anyhow::Result<Summary> {
    if args.batch == 0 || args.connections == 0 || args.series == 0 {
        bail!("--batch, --connections and --series must be at least 1");
    }
    let batches = args.points.div_ceil(args.batch);
    let sink = Sink::open(args).await?;
    let next = Arc::new(AtomicU64::new(0));
    let bar =
        ProgressBar::with_draw_target(Some(batches * args.batch), ProgressDrawTarget::stderr());
    if args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} points  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Event times one hour back, so a long run stays inside the accepted window.
    let base_ms = crate::now_ms() - 3_600_000;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (sink, next, args, bar) = (sink.clone(), next.clone(), args.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
            let (mut ok_points, mut requests, mut errors) = (0u64, 0u64, 0u64);
            let mut first_error = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= batches {
                    break;
                }
                let t = Instant::now();
                let sent = sink.send(&args, n, base_ms).await;
                let micros = t.elapsed().as_micros() as u64;
                requests += 1;
                match sent {
                    Ok(()) => {
                        let _ = hist.record(micros.max(1));
                        ok_points += args.batch;
                        bar.inc(args.batch);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            anyhow::Ok((hist, ok_points, requests, errors, first_error))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    let (mut points, mut requests, mut errors, mut first_error) = (0, 0, 0, None);
    for w in workers {
        let (h, p, r, e, f) = w.await.context("load worker panicked")??;
        hist.add(&h)
            .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
        points += p;
        requests += r;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Summary {
        points,
        requests,
        errors,
        seconds,
        points_per_second: points as f64 / seconds,
        latency_ms_p50: ms(0.5),
        latency_ms_p90: ms(0.9),
        latency_ms_p99: ms(0.99),
        latency_ms_max: hist.max() as f64 / 1000.0,
        first_error,
    })
}
