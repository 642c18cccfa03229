//! The node's own figures, rendered in the Prometheus text format at `/metrics`.
//!
//! Counters are atomics bumped on the request path; gauges (series, memory, log figures) are
//! read from the engine at scrape time, so nothing is kept twice. Latency histograms use
//! fixed buckets, which is what Prometheus' `histogram_quantile` expects.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::Engine;
use crate::error::Error;
use crate::http::ApiError;
use crate::shard::ShardStats;

#[derive(Clone, Copy)]
pub enum Protocol {
    Json,
    Line,
    /// Prometheus remote write.
    Prom,
    /// The QUIC ingest protocol.
    Quic,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Line => "line",
            Protocol::Prom => "prom",
            Protocol::Quic => "quic",
        }
    }

    const ALL: [Protocol; 4] = [
        Protocol::Json,
        Protocol::Line,
        Protocol::Prom,
        Protocol::Quic,
    ];
}

/// What an accepted request carried that is not stored (counted, never dropped silently):
/// line-protocol string fields, non-finite remote-write samples (staleness markers included),
/// native histograms.
#[derive(Clone, Copy)]
pub enum Skipped {
    StringField,
    NonFiniteSample,
    Histogram,
}

const SKIPPED: [&str; 3] = ["string_field", "non_finite_sample", "histogram"];

/// Upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[derive(Default)]
pub struct ProtocolCounters {
    points: AtomicU64,
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    latency: Histogram,
}

/// Rejection reasons counted for `pulseboard_ingest_rejected_points_total`.
const REASONS: [&str; 6] = [
    "invalid",
    "too_old_or_future",
    "cardinality",
    "too_large",
    "overloaded",
    "unavailable",
];

#[derive(Default)]
pub struct Telemetry {
    json: ProtocolCounters,
    line: ProtocolCounters,
    prom: ProtocolCounters,
    quic: ProtocolCounters,
    rejected_requests: [AtomicU64; REASONS.len()],
    skipped: [AtomicU64; SKIPPED.len()],
    query_latency: Histogram,
}

impl Telemetry {
    fn proto(&self, p: Protocol) -> &ProtocolCounters {
        match p {
            Protocol::Json => &self.json,
            Protocol::Line => &self.line,
            Protocol::Prom => &self.prom,
            Protocol::Quic => &self.quic,
        }
    }

    pub fn record_skipped(&self, what: Skipped, n: usize) {
        if n > 0 {
            self.skipped[what as usize].fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn record_ingest(&self, p: Protocol, result: &Result<usize, ApiError>, took: Duration) {
        let c = self.proto(p);
        match result {
            Ok(n) => {
                c.points.fetch_add(*n as u64, Ordering::Relaxed);
                c.requests_ok.fetch_add(1, Ordering::Relaxed);
                c.latency.observe(took);
            }
            Err(ApiError(e)) => {
                c.requests_failed.fetch_add(1, Ordering::Relaxed);
                let reason = match e {
                    Error::Point(p) if p.field == "timestamp" => Some(1),
                    Error::IngestBody(_) | Error::Line(_) | Error::Point(_) => Some(0),
                    Error::Cardinality { .. } => Some(2),
                    Error::TooLarge { .. } => Some(3),
                    Error::Overloaded { .. } => Some(4),
                    Error::Unavailable(_) => Some(5),
                    _ => None,
                };
                if let Some(i) = reason {
                    self.rejected_requests[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn record_query(&self, took: Duration) {
        self.query_latency.observe(took);
    }

    pub fn render(&self, engine: &Engine, stats: Option<&ShardStats>) -> String {
        let mut o = String::with_capacity(8192);
        let w = &mut o;
        let _ = writeln!(
            w,
            "# HELP pulseboard_ingest_points_total Points acknowledged (durable and applied)."
        );
        let _ = writeln!(w, "# TYPE pulseboard_ingest_points_total counter");
        for p in Protocol::ALL {
            let c = self.proto(p);
            let _ = writeln!(
                w,
                "pulseboard_ingest_points_total{{protocol=\"{}\"}} {}",
                p.label(),
                c.points.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "# HELP pulseboard_ingest_requests_total Ingest requests by outcome."
        );
        let _ = writeln!(w, "# TYPE pulseboard_ingest_requests_total counter");
        for p in Protocol::ALL {
            let c = self.proto(p);
            let _ = writeln!(
                w,
                "pulseboard_ingest_requests_total{{protocol=\"{}\",outcome=\"ok\"}} {}",
                p.label(),
                c.requests_ok.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                w,
                "pulseboard_ingest_requests_total{{protocol=\"{}\",outcome=\"rejected\"}} {}",
                p.label(),
                c.requests_failed.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(w, "# HELP pulseboard_ingest_rejected_requests_total Ingest requests refused, by reason (a refused batch is refused whole).");
        let _ = writeln!(
            w,
            "# TYPE pulseboard_ingest_rejected_requests_total counter"
        );
        for (reason, c) in REASONS.iter().zip(&self.rejected_requests) {
            let _ = writeln!(
                w,
                "pulseboard_ingest_rejected_requests_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(w, "# HELP pulseboard_ingest_skipped_total Values in accepted requests that are not stored, by kind.");
        let _ = writeln!(w, "# TYPE pulseboard_ingest_skipped_total counter");
        for (what, c) in SKIPPED.iter().zip(&self.skipped) {
            let _ = writeln!(
                w,
                "pulseboard_ingest_skipped_total{{what=\"{what}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "# HELP pulseboard_ingest_request_seconds Time from request to acknowledgement."
        );
        let _ = writeln!(w, "# TYPE pulseboard_ingest_request_seconds histogram");
        for p in Protocol::ALL {
            self.proto(p).latency.render(
                w,
                "pulseboard_ingest_request_seconds",
                &format!("protocol=\"{}\"", p.label()),
            );
        }
        let _ = writeln!(w, "# HELP pulseboard_query_seconds Query latency.");
        let _ = writeln!(w, "# TYPE pulseboard_query_seconds histogram");
        self.query_latency.render(w, "pulseboard_query_seconds", "");

        let _ = writeln!(w, "# TYPE pulseboard_ingest_inflight_points gauge");
        let _ = writeln!(
            w,
            "pulseboard_ingest_inflight_points {}",
            engine.inflight_points()
        );
        let _ = writeln!(
            w,
            "# TYPE pulseboard_cardinality_refused_points_total counter"
        );
        let _ = writeln!(
            w,
            "pulseboard_cardinality_refused_points_total {}",
            engine.admission().refused_points()
        );

        let log = engine.log_stats();
        let _ = writeln!(
            w,
            "# HELP pulseboard_wal_syncs_total Group-commit fsyncs of the write-ahead log."
        );
        let _ = writeln!(w, "# TYPE pulseboard_wal_syncs_total counter");
        let _ = writeln!(w, "pulseboard_wal_syncs_total {}", log.syncs);
        let _ = writeln!(w, "# TYPE pulseboard_wal_sync_seconds_total counter");
        let _ = writeln!(
            w,
            "pulseboard_wal_sync_seconds_total {}",
            log.sync_seconds_total
        );
        let _ = writeln!(w, "# TYPE pulseboard_wal_last_sync_seconds gauge");
        let _ = writeln!(
            w,
            "pulseboard_wal_last_sync_seconds {}",
            log.last_sync_micros as f64 / 1e6
        );
        let _ = writeln!(w, "# TYPE pulseboard_wal_records_total counter");
        let _ = writeln!(w, "pulseboard_wal_records_total {}", log.appended_records);
        let _ = writeln!(w, "# TYPE pulseboard_wal_bytes_total counter");
        let _ = writeln!(w, "pulseboard_wal_bytes_total {}", log.appended_bytes);
        let _ = writeln!(w, "# TYPE pulseboard_wal_queue_depth gauge");
        let _ = writeln!(w, "pulseboard_wal_queue_depth {}", log.queue_depth);
        let _ = writeln!(w, "# TYPE pulseboard_wal_segments gauge");
        let _ = writeln!(w, "pulseboard_wal_segments {}", log.segments);
        let _ = writeln!(w, "# TYPE pulseboard_wal_errors_total counter");
        let _ = writeln!(w, "pulseboard_wal_errors_total {}", log.errors);

        let (batched, frames) = engine.raft_batched();
        let _ = writeln!(w, "# HELP pulseboard_raft_batched_rpcs_total Raft heartbeats and votes sent to peers in shared frames.");
        let _ = writeln!(w, "# TYPE pulseboard_raft_batched_rpcs_total counter");
        let _ = writeln!(w, "pulseboard_raft_batched_rpcs_total {batched}");
        let _ = writeln!(w, "# TYPE pulseboard_raft_batch_frames_total counter");
        let _ = writeln!(w, "pulseboard_raft_batch_frames_total {frames}");
        let (entries, batches) = engine.entries_written();
        let _ = writeln!(w, "# HELP pulseboard_shard_entries_total Entries this node wrote to the logs of the shards it leads.");
        let _ = writeln!(w, "# TYPE pulseboard_shard_entries_total counter");
        let _ = writeln!(w, "pulseboard_shard_entries_total {entries}");
        let _ = writeln!(w, "# HELP pulseboard_shard_entry_batches_total Requests' shares of a shard those entries carried (several proposed while the entry before was committed go as one).");
        let _ = writeln!(w, "# TYPE pulseboard_shard_entry_batches_total counter");
        let _ = writeln!(w, "pulseboard_shard_entry_batches_total {batches}");
        let (done, failed) = engine.leader_handovers();
        let _ = writeln!(w, "# HELP pulseboard_leader_handovers_total Shard leaderships this node handed to the node the shard map names (leader balancing), by outcome.");
        let _ = writeln!(w, "# TYPE pulseboard_leader_handovers_total counter");
        let _ = writeln!(
            w,
            "pulseboard_leader_handovers_total{{outcome=\"done\"}} {done}"
        );
        let _ = writeln!(
            w,
            "pulseboard_leader_handovers_total{{outcome=\"failed\"}} {failed}"
        );

        if let Some(s) = stats {
            let _ = writeln!(w, "# TYPE pulseboard_series gauge");
            let _ = writeln!(w, "pulseboard_series {}", s.series);
            let _ = writeln!(w, "# TYPE pulseboard_raw_points gauge");
            let _ = writeln!(w, "pulseboard_raw_points {}", s.raw_points);
            let _ = writeln!(w, "# HELP pulseboard_raw_bytes Heap bytes of raw point rings (compressed blocks and open heads).");
            let _ = writeln!(w, "# TYPE pulseboard_raw_bytes gauge");
            let _ = writeln!(w, "pulseboard_raw_bytes {}", s.raw_bytes);
            let _ = writeln!(w, "# TYPE pulseboard_raw_bytes_per_point gauge");
            let per = if s.raw_points == 0 {
                0.0
            } else {
                s.raw_bytes as f64 / s.raw_points as f64
            };
            let _ = writeln!(w, "pulseboard_raw_bytes_per_point {per}");
            let _ = writeln!(w, "# TYPE pulseboard_rollup_cells gauge");
            let _ = writeln!(w, "pulseboard_rollup_cells {}", s.rollup_cells);
            let _ = writeln!(w, "# TYPE pulseboard_rollup_bytes gauge");
            let _ = writeln!(w, "pulseboard_rollup_bytes {}", s.rollup_bytes);
            let _ = writeln!(w, "# HELP pulseboard_shards_asleep Shard copies this node no longer serves, kept on disk only (read back if their group applies to them again).");
            let _ = writeln!(w, "# TYPE pulseboard_shards_asleep gauge");
            let _ = writeln!(w, "pulseboard_shards_asleep {}", s.asleep);
        }
        o
    }
}

/// Live-update figures: subscriptions, connected clients, updates sent, lagging clients.
pub fn render_live(w: &mut String, live: &crate::live::LiveHub) {
    let s = &live.stats;
    let rows: [(&str, &str, &str, u64); 5] = [
        (
            "pulseboard_live_subscriptions",
            "gauge",
            "Subscription actors (distinct live queries).",
            live.subscription_count() as u64,
        ),
        (
            "pulseboard_ws_clients",
            "gauge",
            "Connected WebSocket clients.",
            s.clients.load(Ordering::Relaxed),
        ),
        (
            "pulseboard_ws_updates_sent_total",
            "counter",
            "Updates queued to WebSocket clients.",
            s.updates_sent.load(Ordering::Relaxed),
        ),
        (
            "pulseboard_ws_lagged_total",
            "counter",
            "Times a client fell behind and was resumed from a fresh snapshot.",
            s.lagged.load(Ordering::Relaxed),
        ),
        (
            "pulseboard_ws_dropped_clients_total",
            "counter",
            "Clients closed because their writes stalled or they went silent.",
            s.dropped_clients.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(w, "# HELP {name} {help}");
        let _ = writeln!(w, "# TYPE {name} {kind}");
        let _ = writeln!(w, "{name} {v}");
    }
}
