//! Ingest over both protocols, then check every aggregation against values computed here,
//! independently of the server: out-of-order points, bucket edges, `last` ties, filters,
//! group_by, offset, CSV, the sliding window, and the drill-down lists.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::harness::{now_ms, point, Node};

/// A deterministic pseudo-random sequence (so a failure reproduces).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[derive(Clone, Debug)]
struct Sent {
    country: &'static str,
    ts: i64,
    value: f64,
    /// Arrival order: request number, then position in the request.
    order: (usize, usize),
}

fn expected(points: &[&Sent], agg: &str, bucket_ms: i64) -> f64 {
    let n = points.len() as f64;
    let sum: f64 = points.iter().map(|p| p.value).sum();
    match agg {
        "sum" => sum,
        "avg" => sum / n,
        "count" => n,
        "min" => points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min),
        "max" => points
            .iter()
            .map(|p| p.value)
            .fold(f64::NEG_INFINITY, f64::max),
        "last" => points
            .iter()
            .max_by_key(|p| (p.ts, p.order))
            .map(|p| p.value)
            .unwrap_or(f64::NAN),
        "rate" => sum / (bucket_ms as f64 / 1000.0),
        q => {
            let q: f64 = q[1..].parse::<f64>().unwrap() / 100.0;
            let mut v: Vec<f64> = points.iter().map(|p| p.value).collect();
            v.sort_by(f64::total_cmp);
            v[((q * (n - 1.0)).floor()) as usize]
        }
    }
}

fn close(agg: &str, got: f64, want: f64) -> bool {
    if agg.starts_with('p') {
        // The sketch's documented bound: 1% relative error.
        (got - want).abs() <= 0.01 * want.abs() + 1e-9
    } else {
        (got - want).abs() <= 1e-9 * want.abs().max(1.0)
    }
}

const AGGS: [&str; 11] = [
    "sum", "avg", "min", "max", "count", "last", "rate", "p50", "p90", "p95", "p99",
];

#[tokio::test]
async fn every_aggregation_matches_an_independent_computation() {
    let node = Node::start().await;
    let minute = 60_000;
    let base = now_ms() / minute * minute - 40 * minute;
    let countries = ["de", "fr", "us"];
    let mut rng = Lcg(7);
    let mut sent: Vec<Sent> = Vec::new();
    let mut requests: Vec<Vec<Sent>> = Vec::new();
    for r in 0..6 {
        let mut req = Vec::new();
        for i in 0..400 {
            let country = countries[(rng.next() % 3) as usize];
            // Spread over ten minutes, newest and oldest mixed (out of order), with points
            // exactly on and just before bucket edges.
            let ts = match i % 10 {
                0 => base + (rng.next() % 10) as i64 * minute,
                1 => base + (rng.next() % 10 + 1) as i64 * minute - 1,
                _ => base + (rng.next() % (10 * minute as u64)) as i64,
            };
            let value = (rng.next() % 100_000) as f64 / 100.0 - 200.0;
            req.push(Sent {
                country,
                ts,
                value,
                order: (r, i),
            });
        }
        requests.push(req);
    }
    // A tie on event time within one series across two requests: the later request wins.
    let tie_ts = base + 5 * minute + 123;
    requests[2].push(Sent {
        country: "de",
        ts: tie_ts,
        value: 1111.0,
        order: (2, 400),
    });
    requests[4].push(Sent {
        country: "de",
        ts: tie_ts,
        value: 2222.0,
        order: (4, 400),
    });

    for (r, req) in requests.iter().enumerate() {
        if r % 2 == 0 {
            let pts: Vec<Value> = req
                .iter()
                .map(|p| {
                    point(
                        "latency",
                        p.ts,
                        p.value,
                        &[("country", p.country), ("app", "web")],
                    )
                })
                .collect();
            let (status, body) = node
                .ingest(&json!({"source_id": "test", "data_points": pts}))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["accepted"], req.len());
        } else {
            let lines: String = req
                .iter()
                .map(|p| {
                    format!(
                        "latency,country={},app=web value={} {}\n",
                        p.country, p.value, p.ts
                    )
                })
                .collect();
            let (status, body) = node.write_lines(&lines, "ms").await;
            assert_eq!(status, 200, "{body}");
        }
        sent.extend(req.iter().cloned());
    }
    // JSON points are metric `latency`; line protocol points are `latency.value`. Send the
    // line ones again as JSON so one metric holds everything.
    let line_sent: Vec<&Sent> = requests
        .iter()
        .enumerate()
        .filter(|(r, _)| r % 2 == 1)
        .flat_map(|(_, q)| q.iter())
        .collect();
    let json_sent: Vec<&Sent> = requests
        .iter()
        .enumerate()
        .filter(|(r, _)| r % 2 == 0)
        .flat_map(|(_, q)| q.iter())
        .collect();
    assert_eq!(line_sent.len() + json_sent.len(), sent.len());

    for (metric, pts) in [("latency", &json_sent), ("latency.value", &line_sent)] {
        for agg in AGGS {
            // Grouped by country.
            let (status, body) = node
                .get(&format!(
                    "/api/v1/metrics/{metric}/data?start={base}&end={}&granularity=1m&aggregation={agg}&group_by=country",
                    base + 10 * minute
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["granularity_ms"], minute);
            let series = body["series"].as_array().expect("series");
            assert_eq!(series.len(), 3, "{agg}: one series per country");
            for s in series {
                let country = s["dimensions"]["country"].as_str().expect("country");
                let mut buckets: BTreeMap<i64, Vec<&Sent>> = BTreeMap::new();
                for p in pts.iter().filter(|p| p.country == country) {
                    buckets
                        .entry(p.ts.div_euclid(minute) * minute)
                        .or_default()
                        .push(p);
                }
                let got = s["points"].as_array().expect("points");
                assert_eq!(got.len(), buckets.len(), "{agg} {country}: bucket count");
                for (g, (bucket, members)) in got.iter().zip(&buckets) {
                    assert_eq!(
                        g[0].as_i64(),
                        Some(*bucket),
                        "{agg} {country}: bucket label"
                    );
                    let want = expected(members, agg, minute);
                    let v = g[1].as_f64().expect("value");
                    assert!(
                        close(agg, v, want),
                        "{metric} {agg} {country} @{bucket}: got {v}, want {want}"
                    );
                }
            }
            // Everything merged, filtered to two countries.
            let (status, body) = node
                .get(&format!(
                    "/api/v1/metrics/{metric}/data?start={base}&end={}&granularity=5m&aggregation={agg}&filter=country:de&filter=country:fr",
                    base + 10 * minute
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            let series = body["series"].as_array().expect("series");
            assert_eq!(series.len(), 1);
            let mut buckets: BTreeMap<i64, Vec<&Sent>> = BTreeMap::new();
            for p in pts.iter().filter(|p| p.country != "us") {
                buckets
                    .entry(p.ts.div_euclid(5 * minute) * 5 * minute)
                    .or_default()
                    .push(p);
            }
            let got = series[0]["points"].as_array().expect("points");
            assert_eq!(got.len(), buckets.len());
            for (g, (_, members)) in got.iter().zip(&buckets) {
                let want = expected(members, agg, 5 * minute);
                let v = g[1].as_f64().expect("value");
                assert!(
                    close(agg, v, want),
                    "{metric} merged {agg}: got {v}, want {want}"
                );
            }
        }
    }
    // The tie: the later request's value is `last` of its bucket for `de`.
    let (_, body) = node
        .get(&format!(
            "/api/v1/metrics/latency/data?start={}&end={}&granularity=1s&aggregation=last&filter=country:de",
            tie_ts / 1000 * 1000,
            tie_ts / 1000 * 1000 + 1000
        ))
        .await;
    assert_eq!(body["series"][0]["points"][0][1], 2222.0, "{body}");

    // Negative filter and drill-down lists.
    let (_, body) = node
        .get(&format!(
            "/api/v1/metrics/latency/data?start={base}&end={}&granularity=10m&aggregation=count&filter=country:!us",
            base + 10 * minute
        ))
        .await;
    let want = json_sent.iter().filter(|p| p.country != "us").count() as f64;
    // Ten-minute buckets are aligned to the epoch, so the range may span two of them.
    let got: f64 = body["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .sum();
    assert_eq!(got, want, "{body}");
    let (status, body) = node.get("/api/v1/metrics").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["latency", "latency.value"]);
    assert_eq!(body["metrics"][0]["series"], 3);
    let (status, body) = node.get("/api/v1/metrics/latency/dimensions").await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body["dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["app", "country"]);
    assert_eq!(body["dimensions"][1]["distinct_values"], 3);
}

#[tokio::test]
async fn offset_csv_window_and_line_protocol_details() {
    let node = Node::start().await;
    let now = now_ms();
    let sec = now / 1000 * 1000;
    // Two points now, one exactly one day... older than retention? No: one hour ago, read
    // back with offset=1h aligned to now.
    let (status, body) = node
        .ingest(&json!({"data_points": [
            point("clicks", sec - 3_600_000 + 10, 5.0, &[("campaign", "a,b")]),
            point("clicks", now, 2.0, &[("campaign", "x")]),
            point("clicks", now - 1, 3.0, &[("campaign", "x")]),
        ]}))
        .await;
    assert_eq!(status, 200, "{body}");

    // offset: the past hour's bucket is labelled with today's time.
    let (status, body) = node
        .get(&format!(
            "/api/v1/metrics/clicks/data?start={}&end={}&granularity=1s&aggregation=sum&offset=1h",
            sec,
            sec + 1000
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"][0]["points"][0], json!([sec, 5.0]), "{body}");

    // CSV with group_by columns, quoting a value with a comma.
    let r = node
        .client
        .get(node.url(&format!(
            "/api/v1/metrics/clicks/data?start={}&end={}&granularity=1h&aggregation=count&group_by=campaign&format=csv",
            sec - 7_200_000,
            now + 1000
        )))
        .bearer_auth(&node.token)
        .send()
        .await
        .expect("csv");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,campaign,value"));
    let rows: Vec<&str> = lines.collect();
    assert!(rows.iter().any(|l| l.ends_with(",\"a,b\",1")), "{text}");
    assert!(rows.iter().any(|l| l.ends_with(",x,2")), "{text}");

    // The sliding window ending now: the two recent points, not the hour-old one.
    let (status, body) = node
        .get("/api/v1/metrics/clicks/window?window=1m&aggregation=sum")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"][0]["value"], 5.0, "{body}");
    let (_, body) = node
        .get("/api/v1/metrics/clicks/window?window=1m&aggregation=count&group_by=campaign")
        .await;
    assert_eq!(body["series"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = node
        .get("/api/v1/metrics/clicks/window?window=2h&aggregation=count")
        .await;
    assert_eq!(body["series"][0]["value"], 3.0, "{body}");

    // Line protocol: several fields, integer/bool fields, string fields counted, precision=s.
    let s = now / 1000;
    let lines = format!(
        "cpu,host=a usage=1.5,cores=4i,up=true,name=\"x\" {s}\n# a comment\n\ncpu,host=b usage=2.5 {s}\n"
    );
    let (status, body) = node.write_lines(&lines, "s").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 4);
    assert_eq!(body["ignored_string_fields"], 1);
    let (_, body) = node
        .get("/api/v1/metrics/cpu.usage/window?window=1h&aggregation=max")
        .await;
    assert_eq!(body["series"][0]["value"], 2.5, "{body}");
    let (_, body) = node
        .get("/api/v1/metrics/cpu.up/window?window=1h&aggregation=sum")
        .await;
    assert_eq!(body["series"][0]["value"], 1.0, "{body}");
}
