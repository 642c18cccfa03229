//! `pulseboard load`: drives a running node with generated points over HTTP and reports the
//! achieved rate and the request latency percentiles. Also the harness of the end-to-end
//! ingest bench (`benches/ingest_http.rs`), which reads the `--json` summary.

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
    /// The JSON ingest body to /api/v1/ingest.
    Json,
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

/// Generates batch `n`: `batch` points spread over the series, each with its own timestamp.
fn body(args: &LoadArgs, n: u64, base_ms: i64) -> String {
    let mut out = String::with_capacity(args.batch as usize * 64);
    match args.protocol {
        Wire::Line => {
            for i in 0..args.batch {
                let k = n * args.batch + i;
                let host = k % args.series;
                let ts = base_ms + (k / args.series) as i64;
                let v = (k % 1000) as f64 * 0.5;
                let _ = writeln!(out, "{},host=h{host} value={v} {ts}", args.metric);
            }
        }
        Wire::Json => {
            out.push_str("{\"source_id\":\"load\",\"data_points\":[");
            for i in 0..args.batch {
                let k = n * args.batch + i;
                let host = k % args.series;
                let ts = base_ms + (k / args.series) as i64;
                let v = (k % 1000) as f64 * 0.5;
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"metric\":\"{}.value\",\"timestamp\":{ts},\"value\":{v},\"dimensions\":{{\"host\":\"h{host}\"}}}}",
                    args.metric
                );
            }
            out.push_str("]}");
        }
    }
    out
}

pub async fn drive(args: &LoadArgs) -> anyhow::Result<Summary> {
    if args.batch == 0 || args.connections == 0 || args.series == 0 {
        bail!("--batch, --connections and --series must be at least 1");
    }
    let batches = args.points.div_ceil(args.batch);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections as usize)
        .timeout(Duration::from_secs(60))
        .build()
        .context("build the HTTP client")?;
    let token = args.remote.token(&client).await?;
    let url = match args.protocol {
        Wire::Line => args.remote.endpoint("/api/v1/write?precision=ms"),
        Wire::Json => args.remote.endpoint("/api/v1/ingest"),
    };
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
        let (client, url, next, args, bar, token) = (
            client.clone(),
            url.clone(),
            next.clone(),
            args.clone(),
            bar.clone(),
            token.clone(),
        );
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
                let text = body(&args, n, base_ms);
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "text/plain")
                    .body(text)
                    .send()
                    .await;
                let micros = t.elapsed().as_micros() as u64;
                requests += 1;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = hist.record(micros.max(1));
                        ok_points += args.batch;
                        bar.inc(args.batch);
                    }
                    Ok(r) => {
                        errors += 1;
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        first_error.get_or_insert(format!("{status}: {text}"));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
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
