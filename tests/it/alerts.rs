//! Alert rules against the real binary: firing and resolving on live data, `for`, per-group
//! alerts, webhook notifications with retries, and a restart that keeps everything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{now_ms, point, Node};

/// A local webhook receiver that answers 500 to the first `fail_first` requests.
#[derive(Clone, Default)]
pub struct Receiver {
    pub log: Arc<Mutex<Vec<(u16, Value)>>>,
    fail_first: usize,
}

async fn receive(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    let mut log = r.log.lock().unwrap();
    let status = if log.len() < r.fail_first { 500 } else { 200 };
    log.push((status, body));
    StatusCode::from_u16(status).unwrap()
}

pub async fn start_receiver(fail_first: usize) -> (String, Receiver) {
    let r = Receiver {
        log: Arc::default(),
        fail_first,
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), r)
}

pub async fn create_rule(node: &Node, rule: Value) -> u64 {
    let (s, b) = node
        .call(
            Method::POST,
            "/api/v1/alerts",
            Some(&node.token),
            Some(&rule),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_u64().unwrap()
}

async fn events(node: &Node, rule: u64) -> Vec<Value> {
    let (s, b) = node
        .call(
            Method::GET,
            &format!("/api/v1/alerts/events?rule_id={rule}"),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let mut e = b["events"].as_array().unwrap().clone();
    e.reverse(); // oldest first
    e
}

async fn wait_event(node: &Node, rule: u64, state: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let e = events(node, rule).await;
        if e.iter().any(|x| x["state"] == state) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {state} event within {within:?}: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn states(node: &Node, rule: u64) -> Vec<Value> {
    let (_, b) = node
        .call(Method::GET, "/api/v1/alerts", Some(&node.token), None)
        .await;
    b["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_u64() == Some(rule))
        .map(|r| r["states"].as_array().unwrap().clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_threshold_rule_fires_resolves_and_notifies_once_per_transition() {
    let node = Node::start().await;
    let (hook, receiver) = start_receiver(2).await;
    // Bad rules are refused with the field named.
    let (s, b) = node
        .call(
            Method::POST,
            "/api/v1/alerts",
            Some(&node.token),
            Some(&json!({"name": "x", "query": {"metric": "cpu"}, "condition": ">"})),
        )
        .await;
    assert_eq!(
        (s, b["detail"]["field"].as_str()),
        (400, Some("threshold")),
        "{b}"
    );
    let rule = create_rule(
        &node,
        json!({"name": "cpu high", "query": {"metric": "cpu", "aggregation": "max", "window": "2s", "granularity": "1s"},
               "condition": ">", "threshold": 90, "severity": "critical",
               "notification_channels": [{"type": "webhook", "url": hook}, {"type": "log"}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = node
        .ingest(&json!({"data_points": [point("cpu", now_ms(), 80.0, &[("host", "a")])]}))
        .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        events(&node, rule).await.is_empty(),
        "80 is below the threshold"
    );
    let breach = Instant::now();
    node.ingest(&json!({"data_points": [point("cpu", now_ms(), 97.0, &[("host", "a")])]}))
        .await;
    let e = wait_event(&node, rule, "firing", Duration::from_secs(3)).await;
    let fired_after = breach.elapsed();
    assert!(
        fired_after < Duration::from_secs(2),
        "fired after {fired_after:?}"
    );
    assert_eq!(e[0]["value"], 97.0);
    // No more points: the breach leaves the 2 s window and the alert resolves.
    let e = wait_event(&node, rule, "resolved", Duration::from_secs(8)).await;
    let states_seen: Vec<&str> = e.iter().map(|x| x["state"].as_str().unwrap()).collect();
    assert_eq!(states_seen, ["firing", "resolved"]);
    // The receiver failed twice; the retries delivered each transition exactly once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = receiver
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == 200)
            .count();
        if ok >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook deliveries: {:?}",
            receiver.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let log = receiver.log.lock().unwrap().clone();
    let delivered: Vec<&str> = log
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        delivered.iter().filter(|s| **s == "firing").count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        delivered.iter().filter(|s| **s == "resolved").count(),
        1,
        "{log:?}"
    );
    let firing_attempts = log.iter().filter(|(_, b)| b["state"] == "firing").count();
    assert_eq!(
        firing_attempts, 3,
        "two failures, then the retry that landed: {log:?}"
    );
    assert_eq!(log[0].1["rule"], "cpu high");
    assert_eq!(log[0].1["severity"], "critical");
}

#[tokio::test]
async fn for_delays_firing_and_group_by_alerts_per_group() {
    let node = Node::start().await;
    let rule = create_rule(
        &node,
        json!({"name": "slow hosts", "query": {"metric": "latency", "aggregation": "avg", "window": "2s", "group_by": "host"},
               "condition": ">", "threshold": 100, "for": "2s"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut pending_seen = None;
    let mut fired_at = None;
    while start.elapsed() < Duration::from_secs(6) {
        let now = now_ms();
        node.ingest(&json!({"data_points": [
            point("latency", now, 150.0, &[("host", "a")]),
            point("latency", now, 50.0, &[("host", "b")]),
        ]}))
        .await;
        let st = states(&node, rule).await;
        let a = st.iter().find(|s| s["dimensions"]["host"] == "a");
        match a.map(|s| s["state"].as_str().unwrap()) {
            Some("pending") if pending_seen.is_none() => pending_seen = Some(start.elapsed()),
            Some("firing") if fired_at.is_none() => fired_at = Some(start.elapsed()),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pending = pending_seen.expect("host a went pending first");
    let fired = fired_at.expect("host a fired");
    assert!(
        fired - pending >= Duration::from_millis(1_700),
        "`for: 2s` held the alert: pending at {pending:?}, firing at {fired:?}"
    );
    let e = events(&node, rule).await;
    assert_eq!(e.len(), 1, "one firing event, for host a only: {e:?}");
    assert_eq!(e[0]["dimensions"], json!({"host": "a"}));
    assert_eq!(e[0]["state"], "firing");
    let st = states(&node, rule).await;
    assert!(
        st.iter()
            .all(|s| s["dimensions"]["host"] != "b" || s["state"] == "ok"),
        "{st:?}"
    );
}

#[tokio::test]
async fn a_restart_keeps_rules_states_and_history() {
    let node = Node::start().await;
    let rule = create_rule(
        &node,
        json!({"name": "errors", "query": {"metric": "errors", "aggregation": "sum", "window": "5m"},
               "condition": ">=", "threshold": 3, "labels": {"team": "web"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.ingest(&json!({"data_points": [point("errors", now_ms(), 5.0, &[])]}))
        .await;
    wait_event(&node, rule, "firing", Duration::from_secs(5)).await;
    let (dir, guard) = node.terminate();
    let node = Node::start_in(&dir, &[]).await;
    let (_, b) = node
        .call(Method::GET, "/api/v1/alerts", Some(&node.token), None)
        .await;
    let r = &b["alerts"][0];
    assert_eq!(r["name"], "errors");
    assert_eq!(r["labels"]["team"], "web");
    assert_eq!(r["states"][0]["state"], "firing", "{b}");
    // Still breaching after the restart: no second firing event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = events(&node, rule).await;
    assert_eq!(e.len(), 1, "{e:?}");
    // Editing the rule starts it afresh; deleting removes it.
    let (s, b) = node
        .call(
            Method::PUT,
            &format!("/api/v1/alerts/{rule}"),
            Some(&node.token),
            Some(&json!({"name": "errors", "query": {"metric": "errors", "aggregation": "sum", "window": "5m"},
                         "condition": ">=", "threshold": 100, "version": r["version"]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = node
        .call(
            Method::DELETE,
            &format!("/api/v1/alerts/{rule}"),
            Some(&node.token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, b) = node
        .call(Method::GET, "/api/v1/alerts", Some(&node.token), None)
        .await;
    assert_eq!(b["alerts"].as_array().unwrap().len(), 0);
    // History outlives the rule.
    assert_eq!(events(&node, rule).await.len(), 1);
    drop(guard);
}

#[tokio::test]
async fn an_anomaly_rule_fires_on_a_spike_after_learning_the_baseline() {
    let node = Node::start().await;
    // One sample per 1 s window; the detector needs 30 samples before it judges.
    let rule = create_rule(
        &node,
        json!({"name": "traffic anomaly", "query": {"metric": "rps", "aggregation": "avg", "window": "1s"},
               "condition": "anomaly", "sensitivity": "medium",
               "notification_channels": [{"type": "websocket"}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(36) {
        let v = 100.0 + (i % 5) as f64 - 2.0;
        node.ingest(&json!({"data_points": [point("rps", now_ms(), v, &[])]}))
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        events(&node, rule).await.is_empty(),
        "a steady series raises nothing"
    );
    let spike = Instant::now();
    while spike.elapsed() < Duration::from_secs(3) {
        node.ingest(&json!({"data_points": [point("rps", now_ms(), 400.0, &[])]}))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = wait_event(&node, rule, "firing", Duration::from_secs(5)).await;
    assert_eq!(e[0]["rule"], "traffic anomaly");
}
