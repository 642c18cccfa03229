//! Feeding Pulseboard from what users already run, unchanged: InfluxDB 1.x and 2.x clients
//! (`/write`, `/api/v2/write`; the official Python `influxdb-client`) and a real Prometheus
//! (Debian's `prometheus`) scraping the node's own `/metrics` and remote-writing back.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{now_ms, sum_of_points, Node};

/// The values of `metric` over the last hour, one series per `group_by`.
async fn points(node: &Node, metric: &str, group_by: &str) -> Value {
    let (status, body) = node
        .get(&format!(
            "/api/v1/metrics/{metric}/data?start=now-1h&granularity=1s&aggregation=sum&group_by={group_by}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn influx_v1_and_v2_paths_take_line_protocol_and_answer_in_influx_shapes() {
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let c = &node.client;
    let s = now_ms() / 1000 - 5;

    // 1.x: the key as the `p` parameter, seconds, gzip as Telegraf sends it.
    let r = c
        .post(node.url(&format!(
            "/write?db=telegraf&rp=autogen&precision=s&u=any&p={key}"
        )))
        .header("Content-Encoding", "gzip")
        .body(gzip(&format!(
            "cpu,host=a usage=1.5 {s}\ncpu,host=b usage=2.5 {s}\n"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    // 1.x with basic auth (the key as the password), minutes.
    let r = c
        .post(node.url("/write?db=telegraf&precision=m"))
        .basic_auth("telegraf", Some(&key))
        .body(format!("cpu,host=c usage=4 {}\n", s / 60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    // 2.x: `Authorization: Token`, org and bucket accepted and ignored.
    let r = c
        .post(node.url("/api/v2/write?org=acme&bucket=metrics&precision=ms"))
        .header("Authorization", format!("Token {key}"))
        .body(format!("cpu,host=d usage=8,state=\"ok\" {}\n", s * 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    let body = points(&node, "cpu.usage", "host").await;
    assert_eq!(body["series"].as_array().unwrap().len(), 4, "{body}");
    assert_eq!(sum_of_points(&body), 16.0, "{body}");

    // Errors keep their status and take each client's shape, naming what is wrong.
    let r = c
        .post(node.url(&format!("/write?db=x&p={key}")))
        .body("cpu usage=1\ncpu usage=oops\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("line 2"), "{e}");
    let r = c
        .post(node.url("/api/v2/write?org=o&bucket=b"))
        .header("Authorization", "Token not-a-key")
        .body("cpu usage=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    let r = c
        .post(node.url("/write?db=x"))
        .body("cpu usage=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no credential at all");
    let r = c
        .post(node.url("/api/v2/write?bucket=b&precision=fortnights"))
        .header("Authorization", format!("Token {key}"))
        .body("cpu usage=1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("precision"), "{e}");
    // A body that says gzip and is not, and an encoding we do not take.
    for (encoding, body) in [
        ("gzip", b"plain text".to_vec()),
        ("br", gzip("cpu usage=1")),
    ] {
        let r = c
            .post(node.url(&format!("/write?p={key}")))
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{encoding}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains("gzip"), "{e}");
    }
    // A gzip bomb: a small body inflating past the body limit (64 MiB) is refused, not
    // inflated whole.
    let bomb = gzip(&"cpu usage=1\n".repeat(6_000_000));
    let r = c
        .post(node.url(&format!("/write?p={key}")))
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // None of the failed writes wrote anything.
    assert_eq!(
        sum_of_points(&points(&node, "cpu.usage", "host").await),
        16.0
    );

    // The string field was not stored, and is counted.
    assert!(node
        .metrics_text()
        .await
        .contains("pulseboard_ingest_skipped_total{what=\"string_field\"} 1\n"));
    let r = c.get(node.url("/ping")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(r.headers().contains_key("x-influxdb-version"));
    let r = c.head(node.url("/ping")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 200, "the node is healthy after all of it");
}

/// The official Python client (`pip install influxdb-client`; `tests/run` installs it).
#[tokio::test]
async fn the_official_python_influxdb_client_writes_line_protocol() {
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let ts = now_ms() - 3_000;
    let script = r#"
import sys
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
url, key, ts = sys.argv[1], sys.argv[2], int(sys.argv[3])
with InfluxDBClient(url=url, token=key, org="acme") as client:
    w = client.write_api(write_options=SYNCHRONOUS)
    w.write(bucket="games", record=[
        Point("players").tag("region", "eu").field("online", 120).time(ts, WritePrecision.MS),
        Point("players").tag("region", "us").field("online", 80.5).time(ts, WritePrecision.MS),
    ])
    w.write(bucket="games", record="players,region=eu online=30i %d" % (ts * 1000000))
with InfluxDBClient(url=url, token="wrong", org="acme") as client:
    try:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="games", record="players online=1")
        print("wrong token accepted")
        sys.exit(3)
    except ApiException as e:
        print("refused", e.status)
"#;
    let python = std::env::var("PULSEBOARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::task::spawn_blocking({
        let base = node.base.clone();
        move || {
            Command::new(&python)
                .args(["-c", script, &base, &key, &ts.to_string()])
                .stdin(Stdio::null())
                .output()
        }
    })
    .await
    .unwrap()
    .expect("python3 runs (set PULSEBOARD_PYTHON to another interpreter)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'influxdb_client'"),
        "the influxdb-client package is missing: run tests/run, or pip install influxdb-client"
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("refused 401"), "{stdout}");
    let body = points(&node, "players.online", "region").await;
    assert_eq!(sum_of_points(&body), 230.5, "{body}");
    assert_eq!(body["series"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn prometheus_remote_write_bodies_are_checked_and_partially_bad_ones_keep_the_good_series() {
    use protocol::prom::{encode_write, Label, Sample, TimeSeries, WriteRequest};
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let ts = now_ms() - 2_000;
    let series = |name: Option<&str>, job: &str, value: f64| TimeSeries {
        labels: name
            .map(|n| Label {
                name: "__name__".into(),
                value: n.into(),
            })
            .into_iter()
            .chain([Label {
                name: "job".into(),
                value: job.into(),
            }])
            .collect(),
        samples: vec![Sample {
            value,
            timestamp: ts,
        }],
        histograms: Vec::new(),
    };
    let send = |body: Vec<u8>, key: String| {
        node.client
            .post(node.url("/api/v1/prom/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .bearer_auth(key)
            .body(body)
            .send()
    };
    let good = encode_write(&WriteRequest {
        timeseries: vec![
            series(Some("requests_total"), "api", 5.0),
            series(Some("requests_total"), "web", 7.0),
            series(
                Some("requests_total"),
                "stale",
                f64::from_bits(0x7ff0_0000_0000_0002),
            ),
        ],
    });
    let r = send(good.clone(), key.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    let r = send(good, "wrong".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = send(b"\x00\x01garbage".to_vec(), key.clone())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e.to_string().contains("snappy") || e.to_string().contains("protobuf"),
        "{e}"
    );
    // One series without a name: 400 naming it, and the good series written all the same.
    let mixed = encode_write(&WriteRequest {
        timeseries: vec![
            series(None, "x", 1.0),
            series(Some("requests_total"), "db", 11.0),
        ],
    });
    let r = send(mixed, key.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e.to_string().contains("timeseries[0]: has no __name__"),
        "{e}"
    );
    let body = points(&node, "requests_total", "job").await;
    assert_eq!(sum_of_points(&body), 23.0, "{body}");
    assert_eq!(
        body["series"].as_array().unwrap().len(),
        3,
        "stale marker not stored: {body}"
    );
    let metrics = node.metrics_text().await;
    assert!(
        metrics.contains("pulseboard_ingest_points_total{protocol=\"prom\"} 3\n"),
        "per-protocol counters: {metrics}"
    );
    assert!(
        metrics.contains("pulseboard_ingest_skipped_total{what=\"non_finite_sample\"} 1\n"),
        "the staleness marker is counted: {metrics}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus (Debian's package; `tests/run` installs it, `PULSEBOARD_PROMETHEUS`
/// names another binary) scrapes the node's `/metrics` every second and remote-writes what it
/// scrapes back to the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_remote_writes_what_it_scrapes() {
    let node = Node::start().await;
    let key = node.ingest_key().await;
    let dir = tempfile::tempdir().unwrap();
    let target = node.base.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: pulseboard\n    static_configs:\n      - targets: ['{target}']\n\
         remote_write:\n  - url: {}/api/v1/prom/write\n    authorization:\n      credentials: {key}\n\
         \x20   queue_config:\n      batch_send_deadline: 1s\n",
        node.base
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let bin = std::env::var("PULSEBOARD_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin:?} ({e}): run tests/run, or apt-get install prometheus")
        });
    let _prometheus = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = node
            .get(
                "/api/v1/metrics/up/data?start=now-5m&granularity=1s&aggregation=last&group_by=job",
            )
            .await;
        let up = body["series"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["dimensions"]["job"] == "pulseboard"))
            .and_then(|s| s["points"].as_array()?.last()?[1].as_f64());
        // The node's own count of remote writes it took, scraped and written back: the loop
        // has gone round at least once.
        let (_, written) = node
            .get("/api/v1/metrics/pulseboard_ingest_requests_total/data?start=now-5m&granularity=1m&aggregation=max&filter=protocol:prom&filter=outcome:ok")
            .await;
        if up == Some(1.0) && sum_of_points(&written) > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no remote write from Prometheus within 60 s; up: {body}; its log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
