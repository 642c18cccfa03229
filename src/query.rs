//! Queries: parameters → a [`ShardQuery`] plan → scatter (in `Engine`) → merged cells →
//! values. Everything a query answers comes from mergeable cells, so the coordinator merges
//! partial aggregates of many series and shards exactly (quantiles within the sketch bound).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::shard::cell::Agg;
use crate::shard::{Bucketing, Filter, Layout, Partial, ShardQuery, Source};

/// Parsed `GET /api/v1/metrics/{metric}/data` parameters.
#[derive(Debug, Clone)]
pub struct DataRequest {
    pub metric: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub granularity_ms: i64,
    pub aggregation: Agg,
    pub filters: Vec<Filter>,
    pub group_by: Vec<String>,
    pub offset_ms: i64,
    pub csv: bool,
}

/// Parsed `GET /api/v1/metrics/{metric}/window` parameters.
#[derive(Debug, Clone)]
pub struct WindowRequest {
    pub metric: String,
    pub window_ms: i64,
    pub aggregation: Agg,
    pub filters: Vec<Filter>,
    pub group_by: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct SeriesOut {
    pub dimensions: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

#[derive(Serialize, Debug)]
pub struct DataResponse {
    pub metric: String,
    pub granularity_ms: i64,
    pub aggregation: &'static str,
    pub start: i64,
    pub end: i64,
    pub series: Vec<SeriesOut>,
}

#[derive(Serialize, Debug)]
pub struct WindowValue {
    pub dimensions: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Serialize, Debug)]
pub struct WindowResponse {
    pub metric: String,
    pub window_ms: i64,
    pub aggregation: &'static str,
    pub start: i64,
    pub end: i64,
    pub series: Vec<WindowValue>,
}

/// Buckets per series above which a query is refused (ask for a coarser granularity).
pub const MAX_BUCKETS: i64 = 100_000;

fn bad(param: &'static str, reason: impl Into<String>) -> Error {
    Error::BadQuery {
        param,
        reason: reason.into(),
    }
}

/// Splits a raw query string into (key, value) pairs; keys may repeat (`filter`).
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

const KNOWN_DATA: &[&str] = &[
    "start",
    "end",
    "granularity",
    "aggregation",
    "filter",
    "group_by",
    "offset",
    "format",
];
const KNOWN_WINDOW: &[&str] = &["window", "aggregation", "filter", "group_by"];

fn reject_unknown(pairs: &[(String, String)], known: &[&str]) -> Result<()> {
    match pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(Error::BadRequest(format!(
            "unknown query parameter `{k}`; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_filters(pairs: &[(String, String)]) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "filter") {
        let _ = k;
        let Some((key, value)) = v.split_once(':') else {
            return Err(bad(
                "filter",
                format!("`{v}` is not `key:value` or `key:!value`"),
            ));
        };
        protocol::point::validate_dimension_key(key)
            .map_err(|r| bad("filter", format!("key `{key}`: {r}")))?;
        let (negate, value) = match value.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        out.push(Filter {
            key: key.to_owned(),
            value: value.to_owned(),
            negate,
        });
    }
    Ok(out)
}

fn parse_group_by(pairs: &[(String, String)]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "group_by") {
        for key in v.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            protocol::point::validate_dimension_key(key)
                .map_err(|r| bad("group_by", format!("`{key}`: {r}")))?;
            if !out.iter().any(|k| k == key) {
                out.push(key.to_owned());
            }
        }
    }
    Ok(out)
}

fn parse_agg(pairs: &[(String, String)], default: Agg) -> Result<Agg> {
    match one(pairs, "aggregation") {
        Some(a) => a.parse().map_err(|e: String| bad("aggregation", e)),
        None => Ok(default),
    }
}

/// A granularity that gives at most ~1 000 buckets over the range, from a ladder of round
/// values (what Grafana's auto interval does).
fn auto_granularity(range_ms: i64) -> i64 {
    const LADDER: &[i64] = &[
        1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000, 21_600_000,
        86_400_000,
    ];
    LADDER
        .iter()
        .copied()
        .find(|g| range_ms / g <= 1_000)
        .unwrap_or(86_400_000)
}

impl DataRequest {
    pub fn parse(metric: &str, raw_query: Option<&str>, now_ms: i64) -> Result<Self> {
        protocol::point::validate_metric_name(metric).map_err(|r| bad("metric", r))?;
        let pairs = pairs(raw_query);
        reject_unknown(&pairs, KNOWN_DATA)?;
        let end_ms = match one(&pairs, "end") {
            Some(s) => protocol::time::parse_time(s, now_ms).map_err(|r| bad("end", r))?,
            None => now_ms,
        };
        let start_ms = match one(&pairs, "start") {
            Some(s) => protocol::time::parse_time(s, now_ms).map_err(|r| bad("start", r))?,
            None => end_ms - 3_600_000,
        };
        if start_ms >= end_ms {
            return Err(bad("start", "must be before `end`"));
        }
        let granularity_ms = match one(&pairs, "granularity") {
            Some(g) => protocol::time::parse_duration_ms(g).map_err(|r| bad("granularity", r))?,
            None => auto_granularity(end_ms - start_ms),
        };
        if (end_ms - start_ms) / granularity_ms > MAX_BUCKETS {
            return Err(bad(
                "granularity",
                format!(
                    "{granularity_ms} ms over this range gives more than {MAX_BUCKETS} buckets; choose a coarser one"
                ),
            ));
        }
        let offset_ms = match one(&pairs, "offset") {
            Some(o) => protocol::time::parse_duration_ms(o).map_err(|r| bad("offset", r))?,
            None => 0,
        };
        let csv = match one(&pairs, "format") {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => return Err(bad("format", format!("`{other}`: use json or csv"))),
        };
        Ok(Self {
            metric: metric.to_owned(),
            start_ms,
            end_ms,
            granularity_ms,
            aggregation: parse_agg(&pairs, Agg::Avg)?,
            filters: parse_filters(&pairs)?,
            group_by: parse_group_by(&pairs)?,
            offset_ms,
            csv,
        })
    }

    /// The shard-level query: the range shifted back by `offset`, buckets aligned to the
    /// granularity, read from the finest rollup level that divides the granularity and still
    /// holds the range's start (or the raw ring for sub-second granularities).
    pub fn plan(&self, layout: &Layout, now_ms: i64) -> Result<ShardQuery> {
        let start = self.start_ms - self.offset_ms;
        let end = self.end_ms - self.offset_ms;
        // Align the range to whole buckets so the first and last buckets are complete.
        let g = self.granularity_ms;
        let start = start.div_euclid(g) * g;
        let end = (end + g - 1).div_euclid(g) * g;
        let source = choose_source(layout, g, start, now_ms)?;
        Ok(ShardQuery {
            metric: self.metric.clone(),
            filters: self.filters.clone(),
            group_by: self.group_by.clone(),
            start_ms: start,
            end_ms: end,
            bucketing: Bucketing::Aligned(g),
            source,
        })
    }

    pub fn render(&self, partial: Partial) -> DataResponse {
        let mut series: Vec<SeriesOut> = partial
            .into_iter()
            .map(|(group, buckets)| SeriesOut {
                dimensions: group.into_iter().collect(),
                points: buckets
                    .into_iter()
                    .map(|(ts, cell)| {
                        (
                            ts + self.offset_ms,
                            cell.value(self.aggregation, self.granularity_ms),
                        )
                    })
                    .filter(|(_, v)| v.is_finite())
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        series.sort_by(|a, b| a.dimensions.cmp(&b.dimensions));
        DataResponse {
            metric: self.metric.clone(),
            granularity_ms: self.granularity_ms,
            aggregation: self.aggregation.as_str(),
            start: self.start_ms,
            end: self.end_ms,
            series,
        }
    }

    /// CSV: `timestamp`, one column per `group_by` key, `value`.
    pub fn render_csv(&self, response: &DataResponse) -> String {
        let mut out = String::from("timestamp");
        for k in &self.group_by {
            out.push(',');
            out.push_str(&csv_field(k));
        }
        out.push_str(",value\n");
        for s in &response.series {
            for (ts, v) in &s.points {
                out.push_str(&ts.to_string());
                for k in &self.group_by {
                    out.push(',');
                    out.push_str(&csv_field(s.dimensions.get(k).map_or("", String::as_str)));
                }
                out.push(',');
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn choose_source(layout: &Layout, g: i64, start: i64, now_ms: i64) -> Result<Source> {
    let dividing: Vec<(usize, i64)> = layout
        .levels
        .iter()
        .enumerate()
        .filter(|(_, l)| g % l.resolution_ms == 0)
        .map(|(i, l)| (i, l.retention_ms))
        .collect();
    if dividing.is_empty() {
        if start >= now_ms - layout.raw_retention_ms {
            return Ok(Source::Raw);
        }
        return Err(bad(
            "granularity",
            format!(
                "{g} ms is not a multiple of the finest rollup ({} ms); finer granularities are answered from raw points, kept for {} ms",
                layout.levels.first().map_or(0, |l| l.resolution_ms),
                layout.raw_retention_ms
            ),
        ));
    }
    let covering = dividing
        .iter()
        .find(|(_, retention)| start >= now_ms - retention);
    Ok(match covering {
        Some((i, _)) => Source::Level(*i),
        // Nothing keeps the whole range: use the level that keeps the most of it.
        None => Source::Level(
            dividing
                .iter()
                .max_by_key(|(_, r)| *r)
                .map_or(0, |(i, _)| *i),
        ),
    })
}

impl WindowRequest {
    pub fn parse(metric: &str, raw_query: Option<&str>) -> Result<Self> {
        protocol::point::validate_metric_name(metric).map_err(|r| bad("metric", r))?;
        let pairs = pairs(raw_query);
        reject_unknown(&pairs, KNOWN_WINDOW)?;
        let window_ms = match one(&pairs, "window") {
            Some(w) => protocol::time::parse_duration_ms(w).map_err(|r| bad("window", r))?,
            None => 60_000,
        };
        Ok(Self {
            metric: metric.to_owned(),
            window_ms,
            aggregation: parse_agg(&pairs, Agg::Sum)?,
            filters: parse_filters(&pairs)?,
            group_by: parse_group_by(&pairs)?,
        })
    }

    /// The sliding window ending now, answered from the finest rollup's sub-buckets: the
    /// window is the `window / resolution` most recent buckets, the current (partial) one
    /// included. Windows that are not a multiple of the resolution use raw points.
    pub fn plan(&self, layout: &Layout, now_ms: i64) -> Result<ShardQuery> {
        let finest = layout.levels.first().map_or(1_000, |l| l.resolution_ms);
        let (start, end, source) = if self.window_ms % finest == 0 {
            let end = now_ms.div_euclid(finest) * finest + finest;
            (end - self.window_ms, end, Source::Level(0))
        } else {
            (now_ms - self.window_ms, now_ms + 1, Source::Raw)
        };
        if let Some(level) = layout.levels.first() {
            if self.window_ms > level.retention_ms && source == Source::Level(0) {
                return Err(bad(
                    "window",
                    format!(
                        "longer than the finest rollup's retention ({} ms)",
                        level.retention_ms
                    ),
                ));
            }
        }
        Ok(ShardQuery {
            metric: self.metric.clone(),
            filters: self.filters.clone(),
            group_by: self.group_by.clone(),
            start_ms: start,
            end_ms: end,
            bucketing: Bucketing::Whole,
            source,
        })
    }

    pub fn render(&self, plan: &ShardQuery, partial: Partial) -> WindowResponse {
        let mut series: Vec<WindowValue> = partial
            .into_iter()
            .filter_map(|(group, buckets)| {
                let cell = buckets.into_values().next()?;
                let value = cell.value(self.aggregation, self.window_ms);
                value.is_finite().then(|| WindowValue {
                    dimensions: group.into_iter().collect(),
                    value,
                })
            })
            .collect();
        series.sort_by(|a, b| a.dimensions.cmp(&b.dimensions));
        WindowResponse {
            metric: self.metric.clone(),
            window_ms: self.window_ms,
            aggregation: self.aggregation.as_str(),
            start: plan.start_ms,
            end: plan.end_ms,
            series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn parses_and_plans() {
        let r = DataRequest::parse(
            "clicks",
            Some("start=now-1h&granularity=1m&aggregation=p99&filter=country:de&filter=os:!ios&group_by=country,os"),
            NOW,
        )
        .expect("parse");
        assert_eq!(r.start_ms, NOW - 3_600_000);
        assert_eq!(r.filters.len(), 2);
        assert!(r.filters[1].negate);
        assert_eq!(r.group_by, vec!["country", "os"]);
        let layout = Layout::default();
        assert_eq!(r.plan(&layout, NOW).expect("plan").source, Source::Level(0));
        let old =
            DataRequest::parse("clicks", Some("start=now-7d&granularity=1h"), NOW).expect("parse");
        assert_eq!(
            old.plan(&layout, NOW).expect("plan").source,
            Source::Level(1)
        );
        let raw = DataRequest::parse("clicks", Some("start=now-5m&granularity=250ms"), NOW)
            .expect("parse");
        assert_eq!(raw.plan(&layout, NOW).expect("plan").source, Source::Raw);
        let too_old_raw = DataRequest::parse(
            "clicks",
            Some("start=now-5h&granularity=250ms&end=now-4h"),
            NOW,
        )
        .expect("parse");
        assert!(too_old_raw.plan(&layout, NOW).is_err());
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = |q: &str| {
            DataRequest::parse("clicks", Some(q), NOW)
                .expect_err(q)
                .to_string()
        };
        assert!(e("aggregation=median").contains("aggregation"));
        assert!(e("filter=country").contains("filter"));
        assert!(e("start=yesterday").contains("start"));
        assert!(e("start=now&end=now-1h").contains("start"));
        assert!(e("granularity=1s&start=now-30d").contains("granularity"));
        assert!(e("format=xml").contains("format"));
        assert!(e("colour=red").contains("colour"));
        assert!(DataRequest::parse("bad metric", None, NOW).is_err());
    }

    #[test]
    fn window_plan_covers_the_current_partial_bucket() {
        let w = WindowRequest::parse("clicks", Some("window=1m")).expect("parse");
        let plan = w.plan(&Layout::default(), NOW + 500).expect("plan");
        assert_eq!(plan.end_ms, NOW + 1_000);
        assert_eq!(plan.end_ms - plan.start_ms, 60_000);
        assert_eq!(plan.bucketing, Bucketing::Whole);
    }
}
