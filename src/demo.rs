//! `pulseboard demo`: realistic generated streams and a ready-made dashboard that uses every
//! chart type. The streams have a daily shape (a sine over the day), noise, and occasional
//! spikes; the last two hours are backfilled so charts and the past-period overlay have
//! history from the first second.

use std::sync::Arc;
use std::time::Duration;

use protocol::DataPoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::http::AppState;
use crate::meta::{AlertSpec, DashboardDocument, Principal, Role, Via};

pub const DASHBOARD_NAME: &str = "Live operations (demo)";
const TICK: Duration = Duration::from_millis(250);
const BACKFILL_MS: i64 = 2 * 3_600_000;
const BACKFILL_STEP_MS: i64 = 5_000;

const COUNTRIES: &[(&str, f64)] = &[
    ("us", 1.0),
    ("de", 0.55),
    ("gb", 0.45),
    ("fr", 0.4),
    ("jp", 0.35),
    ("br", 0.3),
    ("in", 0.5),
];
const CAMPAIGNS: &[(&str, f64)] = &[("spring_sale", 1.0), ("brand", 0.6), ("retarget", 0.35)];
const REGIONS: &[(&str, f64, f64)] = &[
    // (region, players at peak, hour of the peak in UTC)
    ("eu", 42_000.0, 19.0),
    ("na", 55_000.0, 2.0),
    ("asia", 61_000.0, 12.0),
    ("sa", 14_000.0, 23.0),
];
const HOSTS: &[&str] = &[
    "web-1", "web-2", "web-3", "web-4", "api-1", "api-2", "db-1", "db-2",
];
const ENDPOINTS: &[&str] = &["/checkout", "/search", "/feed", "/login"];

/// The generators' state: spikes come and go.
pub struct Streams {
    rng: StdRng,
    /// (campaign index, until ms, factor)
    click_spike: Option<(usize, i64, f64)>,
    /// (host index, until ms)
    cpu_spike: Option<(usize, i64)>,
}

/// 0.5…1.5 over the day, peaking at `peak_hour` (UTC).
fn daily(ts_ms: i64, peak_hour: f64) -> f64 {
    let hour = (ts_ms.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
    1.0 + 0.5 * ((hour - peak_hour) / 24.0 * std::f64::consts::TAU).cos()
}

fn dp(metric: &str, ts: i64, value: f64, dims: &[(&str, &str)]) -> DataPoint {
    let mut dimensions: protocol::Dimensions = dims
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    dimensions.sort();
    DataPoint {
        metric: metric.into(),
        timestamp_ms: ts,
        value,
        dimensions,
    }
}

impl Streams {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            click_spike: None,
            cpu_spike: None,
        }
    }

    /// The points of one step of `step_ms` ending at `ts`.
    pub fn step(&mut self, ts: i64, step_ms: i64) -> Vec<DataPoint> {
        let secs = step_ms as f64 / 1000.0;
        let mut out = Vec::with_capacity(128);
        if self.click_spike.is_some_and(|(_, until, _)| ts > until) {
            self.click_spike = None;
        }
        if self.click_spike.is_none() && self.rng.random_bool((0.002 * secs).min(1.0)) {
            let c = self.rng.random_range(0..CAMPAIGNS.len());
            self.click_spike = Some((c, ts + 45_000, self.rng.random_range(3.0..6.0)));
        }
        if self.cpu_spike.is_some_and(|(_, until)| ts > until) {
            self.cpu_spike = None;
        }
        if self.cpu_spike.is_none() && self.rng.random_bool((0.001 * secs).min(1.0)) {
            self.cpu_spike = Some((self.rng.random_range(0..HOSTS.len()), ts + 60_000));
        }
        // Ad clicks: counts per step, by country and campaign.
        for (country, cw) in COUNTRIES {
            for (ci, (campaign, kw)) in CAMPAIGNS.iter().enumerate() {
                let spike = match self.click_spike {
                    Some((c, _, f)) if c == ci => f,
                    _ => 1.0,
                };
                let rate = 6.0 * cw * kw * daily(ts, 20.0) * spike * secs;
                let n = (rate * self.rng.random_range(0.6..1.4)).round();
                if n > 0.0 {
                    out.push(dp(
                        "ad.clicks",
                        ts,
                        n,
                        &[("country", country), ("campaign", campaign)],
                    ));
                }
            }
        }
        // Players online: a gauge per region.
        for (region, peak, hour) in REGIONS {
            let v = peak * daily(ts, *hour) / 1.5 * self.rng.random_range(0.98..1.02);
            out.push(dp(
                "game.players_online",
                ts,
                v.round(),
                &[("region", region)],
            ));
        }
        // Servers: CPU per host, request latencies per host and endpoint.
        for (hi, host) in HOSTS.iter().enumerate() {
            let base = if host.starts_with("db") { 35.0 } else { 45.0 };
            let spiking = self.cpu_spike.is_some_and(|(h, _)| h == hi);
            let cpu = if spiking {
                self.rng.random_range(88.0..99.0)
            } else {
                (base * daily(ts, 15.0) + self.rng.random_range(-8.0..8.0)).clamp(1.0, 100.0)
            };
            out.push(dp(
                "server.cpu",
                ts,
                (cpu * 10.0).round() / 10.0,
                &[("host", host)],
            ));
            for endpoint in ENDPOINTS {
                let slow = if spiking { 4.0 } else { 1.0 };
                // Log-normal-ish: mostly fast, a long tail.
                let u: f64 = self.rng.random_range(0.0001..1.0);
                let ms = (18.0 + 40.0 * (-u.ln()).powf(1.4)) * slow;
                out.push(dp(
                    "server.latency_ms",
                    ts,
                    (ms * 10.0).round() / 10.0,
                    &[("host", host), ("endpoint", endpoint)],
                ));
            }
        }
        out
    }
}

fn panel(title: &str, chart: &str, query: Value, options: Value, pos: [u64; 4]) -> Value {
    json!({"title": title, "type": chart, "query": query, "options": options,
           "position": {"x": pos[0], "y": pos[1], "w": pos[2], "h": pos[3]}})
}

/// The demo dashboard: every chart type, on the streams above.
pub fn dashboard_document() -> Value {
    let none = json!({});
    json!({
        "pulseboard_dashboard": 1,
        "name": DASHBOARD_NAME,
        "description": "Ad clicks, players online and servers, generated live by `pulseboard demo`",
        "is_public": false,
        "shared": true,
        "layout": {},
        "visualizations": [
            panel("Clicks, last minute", "stat",
                json!({"metric": "ad.clicks", "aggregation": "sum", "window": "1m"}), none.clone(), [0, 0, 3, 3]),
            panel("Average CPU", "gauge",
                json!({"metric": "server.cpu", "aggregation": "avg", "window": "1m"}),
                json!({"min": 0, "max": 100, "warn": 70, "critical": 90}), [3, 0, 3, 3]),
            panel("Players online by region", "donut",
                json!({"metric": "game.players_online", "aggregation": "last", "window": "1m", "group_by": "region"}), none.clone(), [6, 0, 3, 3]),
            panel("Clicks by campaign", "pie",
                json!({"metric": "ad.clicks", "aggregation": "sum", "window": "15m", "group_by": "campaign"}), none.clone(), [9, 0, 3, 3]),
            panel("Clicks per minute by country", "bar",
                json!({"metric": "ad.clicks", "aggregation": "sum", "window": "15m", "granularity": "1m", "group_by": "country"}), none.clone(), [0, 3, 6, 5]),
            panel("Players online (vs. 1 h ago)", "area",
                json!({"metric": "game.players_online", "aggregation": "avg", "window": "15m", "granularity": "10s"}),
                json!({"overlay_offset": "1h"}), [6, 3, 6, 5]),
            panel("CPU by host", "line",
                json!({"metric": "server.cpu", "aggregation": "avg", "window": "15m", "granularity": "10s", "group_by": "host"}), none.clone(), [0, 8, 6, 5]),
            panel("Latency p99 by host", "scatter",
                json!({"metric": "server.latency_ms", "aggregation": "p99", "window": "15m", "granularity": "30s", "group_by": "host"}), none.clone(), [6, 8, 6, 5]),
            panel("Latency p95 by endpoint", "table",
                json!({"metric": "server.latency_ms", "aggregation": "p95", "window": "5m", "group_by": "endpoint"}), none.clone(), [0, 13, 4, 5]),
            panel("CPU heatmap", "heatmap",
                json!({"metric": "server.cpu", "aggregation": "max", "window": "15m", "granularity": "30s", "group_by": "host"}), none, [4, 13, 8, 5]),
        ]
    })
}

/// Creates the demo dashboard (once) owned by `admin`; returns its id.
pub async fn ensure_dashboard(state: &AppState) -> Result<u64> {
    let admin = state
        .meta
        .list_users()
        .await?
        .into_iter()
        .find(|u| u.role == Role::Admin && !u.disabled)
        .ok_or_else(|| Error::Internal("no enabled admin user".into()))?;
    let principal = Principal {
        user_id: admin.id,
        name: admin.username,
        role: Role::Admin,
        scopes: Vec::new(),
        via: Via::Session,
    };
    ensure_rules(state, &principal).await?;
    let existing = state.meta.list_dashboards(Some(&principal)).await?;
    if let Some(d) = existing.iter().find(|d| d["name"] == DASHBOARD_NAME) {
        return Ok(d["id"].as_u64().unwrap_or(0));
    }
    let doc: DashboardDocument = serde_json::from_value(dashboard_document())
        .map_err(|e| Error::Internal(format!("demo dashboard document: {e}")))?;
    let d = state
        .meta
        .import_dashboard(&principal, doc, crate::now_ms())
        .await?;
    Ok(d["id"].as_u64().unwrap_or(0))
}

/// Two rules that fire now and then on the demo's streams: a host's CPU spike, and an anomaly
/// in ad clicks (the campaigns' spikes).
async fn ensure_rules(state: &AppState, admin: &Principal) -> Result<()> {
    if !state.meta.list_alert_rules()?.is_empty() {
        return Ok(());
    }
    let rules = [
        json!({"name": "Host CPU above 85 %", "query": {"metric": "server.cpu", "aggregation": "avg", "window": "30s", "group_by": "host"},
               "condition": ">", "threshold": 85, "for": "20s", "severity": "critical",
               "notification_channels": [{"type": "websocket"}, {"type": "log"}]}),
        json!({"name": "Unusual ad clicks", "query": {"metric": "ad.clicks", "aggregation": "sum", "window": "30s", "group_by": "campaign"},
               "condition": "anomaly", "sensitivity": "medium", "severity": "warning",
               "notification_channels": [{"type": "websocket"}, {"type": "log"}]}),
    ];
    for r in rules {
        let spec: AlertSpec = serde_json::from_value(r)
            .map_err(|e| Error::Internal(format!("demo alert rule: {e}")))?;
        state
            .meta
            .put_alert_rule(admin, None, spec, None, crate::now_ms())
            .await?;
    }
    state.alerts.reload();
    Ok(())
}

/// Backfills the last two hours, then writes a step every 250 ms until the task is dropped.
pub async fn run(state: Arc<AppState>) {
    let mut streams = Streams::new(crate::now_ms() as u64);
    let now = crate::now_ms();
    let mut ts = now - BACKFILL_MS;
    let mut batch = Vec::new();
    while ts < now {
        batch.extend(streams.step(ts, BACKFILL_STEP_MS));
        if batch.len() >= 20_000 {
            write(&state, std::mem::take(&mut batch)).await;
        }
        ts += BACKFILL_STEP_MS;
    }
    write(&state, batch).await;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let points = streams.step(crate::now_ms(), TICK.as_millis() as i64);
        write(&state, points).await;
    }
}

async fn write(state: &AppState, points: Vec<DataPoint>) {
    if let Err(e) = state.engine.write(points, crate::now_ms()).await {
        tracing::warn!(cause = %e, "demo points refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_plausible_and_the_document_is_valid() {
        let mut s = Streams::new(7);
        let pts = s.step(1_700_000_000_000, 1_000);
        assert!(pts.iter().any(|p| p.metric == "ad.clicks"));
        assert_eq!(
            pts.iter().filter(|p| p.metric == "server.cpu").count(),
            HOSTS.len()
        );
        assert!(pts
            .iter()
            .filter(|p| p.metric == "server.cpu")
            .all(|p| (0.0..=100.0).contains(&p.value)));
        let doc: DashboardDocument = serde_json::from_value(dashboard_document()).unwrap();
        let mut types: Vec<&str> = doc
            .visualizations
            .iter()
            .map(|v| v.chart_type.as_str())
            .collect();
        types.sort();
        let mut all = crate::meta::CHART_TYPES.to_vec();
        all.sort();
        assert_eq!(types, all, "the demo uses every chart type");
        for v in &doc.visualizations {
            crate::query::PanelQuery::from_json(&v.query).unwrap();
        }
    }
}
