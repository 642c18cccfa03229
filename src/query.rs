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

/// A dashboard panel's query, and a live subscription's (SPEC §4), as JSON:
/// `{"metric", "aggregation", "granularity", "window", "filter", "group_by", "offset"}` where
/// `window` is how far back the panel looks (`15m`: from now-15m to now), `filter` is one
/// `key:value` string or a list, and `group_by` a comma-separated string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelQuery {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub filter: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match <Option<OneOrMany> as serde::Deserialize>::deserialize(d)? {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        },
    )
}

impl PanelQuery {
    /// Parses and checks a query object; the error names the field and why.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let q: PanelQuery = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        q.to_request(crate::now_ms()).map_err(|e| e.to_string())?;
        Ok(q)
    }

    /// The range request this query stands for at `now_ms`.
    pub fn to_request(&self, now_ms: i64) -> Result<DataRequest> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: &str| pairs.push((k.to_owned(), v.to_owned()));
        put(
            "start",
            &format!("now-{}", self.window.as_deref().unwrap_or("15m")),
        );
        if let Some(a) = &self.aggregation {
            put("aggregation", a);
        }
        if let Some(g) = &self.granularity {
            put("granularity", g);
        }
        if let Some(o) = &self.offset {
            put("offset", o);
        }
        for f in &self.filter {
            put("filter", f);
        }
        if !self.group_by.is_empty() {
            put("group_by", &self.group_by.join(","));
        }
        DataRequest::from_pairs(&self.metric, &pairs, now_ms)
    }
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
        Self::from_pairs(metric, &pairs(raw_query), now_ms)
    }

    pub fn from_pairs(metric: &str, pairs: &[(String, String)], now_ms: i64) -> Result<Self> {
        protocol::point::validate_metric_name(metric).map_err(|r| bad("metric", r))?;
        let pairs = pairs.to_vec();
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
            sketch: self.aggregation.quantile().is_some(),
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

/// Any level whose resolution divides the granularity answers exactly (cells merge exactly),
/// so the coarsest one that still holds the range's start is the cheapest. Otherwise raw
/// points, while the range is within their retention; otherwise the level that keeps the most.
fn choose_source(layout: &Layout, g: i64, start: i64, now_ms: i64) -> Result<Source> {
    let dividing: Vec<(usize, i64, i64)> = layout
        .levels
        .iter()
        .enumerate()
        .filter(|(_, l)| g % l.resolution_ms == 0)
        .map(|(i, l)| (i, l.resolution_ms, l.retention_ms))
        .collect();
    let covering = dividing
        .iter()
        .filter(|(_, _, retention)| start >= now_ms - retention)
        .max_by_key(|(_, res, _)| *res);
    if let Some((i, _, _)) = covering {
        return Ok(Source::Level(*i));
    }
    if start >= now_ms - layout.raw_retention_ms {
        return Ok(Source::Raw);
    }
    match dividing.iter().max_by_key(|(_, _, r)| *r) {
        Some((i, _, _)) => Ok(Source::Level(*i)),
        None => Err(bad(
            "granularity",
            format!(
                "raw points are kept for {} ms and {g} ms is not a multiple of a rollup resolution ({}); choose a coarser granularity or a more recent start",
                layout.raw_retention_ms,
                layout
                    .levels
                    .iter()
                    .map(|l| format!("{} ms", l.resolution_ms))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
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

    /// The sliding window `(now − window, now]`: whole cells of the finest rollup for the
    /// minutes it tiles, raw points for the two partial edges (no rescan of raw history).
    pub fn plan(&self, layout: &Layout, now_ms: i64) -> Result<ShardQuery> {
        let start = now_ms + 1 - self.window_ms;
        let longest = layout
            .levels
            .iter()
            .map(|l| l.retention_ms)
            .max()
            .unwrap_or(0)
            .max(layout.raw_retention_ms);
        if self.window_ms > longest {
            return Err(bad(
                "window",
                format!("longer than the longest retention ({longest} ms)"),
            ));
        }
        let source = if layout.levels.is_empty() {
            Source::Raw
        } else {
            Source::Window(0)
        };
        Ok(ShardQuery {
            metric: self.metric.clone(),
            filters: self.filters.clone(),
            group_by: self.group_by.clone(),
            start_ms: start,
            end_ms: now_ms + 1,
            bucketing: Bucketing::Whole,
            source,
            sketch: self.aggregation.quantile().is_some(),
        })
    }

    pub fn render(&self, plan: &ShardQuery, partial: Partial) -> WindowResponse {
        let mut series: Vec<WindowValue> = partial
            .into_iter()
            .filter_map(|(group, buckets)| {
                let (_, cell) = buckets.into_iter().next()?;
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
        let plan = r.plan(&layout, NOW).expect("plan");
        assert_eq!(plan.source, Source::Level(0));
        assert!(plan.sketch, "p99 needs sketches");
        // 1 h buckets: the 1 h level answers exactly and is the cheapest.
        let old =
            DataRequest::parse("clicks", Some("start=now-7d&granularity=1h"), NOW).expect("parse");
        let plan = old.plan(&layout, NOW).expect("plan");
        assert_eq!(plan.source, Source::Level(1));
        assert!(!plan.sketch);
        let raw = DataRequest::parse("clicks", Some("start=now-5m&granularity=250ms"), NOW)
            .expect("parse");
        assert_eq!(raw.plan(&layout, NOW).expect("plan").source, Source::Raw);
        let secs =
            DataRequest::parse("clicks", Some("start=now-5h&granularity=10s"), NOW).expect("parse");
        assert_eq!(secs.plan(&layout, NOW).expect("plan").source, Source::Raw);
        let too_old_raw = DataRequest::parse(
            "clicks",
            Some("start=now-7h&granularity=10s&end=now-6h"),
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
    fn window_plan_ends_now() {
        let w = WindowRequest::parse("clicks", Some("window=1m")).expect("parse");
        let plan = w.plan(&Layout::default(), NOW + 500).expect("plan");
        assert_eq!(plan.end_ms, NOW + 501);
        assert_eq!(plan.end_ms - plan.start_ms, 60_000);
        assert_eq!(plan.bucketing, Bucketing::Whole);
        assert_eq!(plan.source, Source::Window(0));
        assert!(WindowRequest::parse("clicks", Some("window=1000d"))
            .expect("parse")
            .plan(&Layout::default(), NOW)
            .is_err());
    }
}
