//! The workload: writers ingest batches of points with unique ids through any node, retry a
//! batch that was not acknowledged on the next node with the same idempotency key, and record
//! every attempt and every acknowledgement. Beside them a metadata writer creates a dashboard
//! `chaos-<n>` every [`META_PACE`] through the nodes in turn, once each (creating one is not
//! idempotent, so a failed attempt is recorded as uncertain, never retried).
//!
//! Point `id` is metric `chaos`, value `id`, in series `s = id % 64` at event time
//! `t0 + id / 64` ms (see [`place`]): a batch touches nearly every shard, and a 1 ms bucket of
//! one series holds one point, so the checker can see each point on its own. 64 points share
//! a millisecond, so event time runs far slower than the clock (a fast run never writes into
//! the future, which the node would refuse).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::cluster::login;

pub const METRIC: &str = "chaos";
pub const SERIES: u64 = 64;
/// How often the metadata writer creates a dashboard.
pub const META_PACE: Duration = Duration::from_millis(250);
/// The name of the metadata writer's dashboard `n`.
pub fn dashboard_name(n: u64) -> String {
    format!("chaos-{n}")
}

/// Event time (ms) and series of point `id`.
pub fn place(t0_ms: i64, id: u64) -> (i64, u64) {
    (t0_ms + (id / SERIES) as i64, id % SERIES)
}

/// The point at event time `ts` in series `s`, if the placement has one there.
pub fn id_at(t0_ms: i64, ts: i64, s: u64) -> Option<u64> {
    let ms = u64::try_from(ts - t0_ms).ok()?;
    (s < SERIES).then(|| ms * SERIES + s)
}

/// One HTTP request of a writer.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// Seconds since the workload started.
    pub at: f64,
    pub latency_ms: f64,
    pub ok: bool,
    pub points: u32,
}

/// A batch: ids `first .. first + n`.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    pub first: u64,
    pub n: u32,
}

#[derive(Clone, Default)]
pub struct Record {
    pub attempts: Vec<Attempt>,
    /// Acknowledged batches.
    pub acked: Vec<Batch>,
    /// Batches given up on: each point is there once or not at all.
    pub uncertain: Vec<Batch>,
    /// Batches being sent now (first id → points): also once or not at all, for now.
    pub in_flight: std::collections::BTreeMap<u64, u32>,
    /// Ids handed out so far: every id below is in an acknowledged, uncertain or in-flight
    /// batch, so a copy of the record taken under its lock is consistent.
    pub next_id: u64,
    /// Dashboards whose creation was acknowledged (by number).
    pub meta_acked: Vec<u64>,
    /// Dashboard numbers handed out so far (those neither acknowledged nor pending may or
    /// may not exist).
    pub meta_next: u64,
}

pub struct Workload {
    pub t0_ms: i64,
    pub started: Instant,
    pub record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
}

pub struct Options {
    pub writers: usize,
    pub batch: u32,
    /// Pause between a writer's batches.
    pub pace: Duration,
    /// How long one request may take before the writer tries the next node.
    pub request_timeout: Duration,
    /// How long a batch is retried before it is given up (and counted uncertain).
    pub give_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            writers: 4,
            batch: 200,
            pace: Duration::from_millis(20),
            request_timeout: Duration::from_secs(3),
            give_up: Duration::from_secs(60),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Workload {
    pub fn start(bases: Vec<String>, options: Options) -> Workload {
        // Event times start half an hour back: within the raw ring, never in the future.
        let t0_ms = now_ms() - 30 * 60 * 1000;
        let started = Instant::now();
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(Mutex::new(vec![None::<String>; bases.len()]));
        let bases = Arc::new(bases);
        let options = Arc::new(options);
        let writer = |w| Writer {
            w,
            t0_ms,
            started,
            bases: bases.clone(),
            tokens: tokens.clone(),
            record: record.clone(),
            stop: stop.clone(),
            options: options.clone(),
            client: reqwest::Client::new(),
        };
        let mut writers: Vec<JoinHandle<()>> = (0..options.writers)
            .map(|w| tokio::spawn(writer(w).run()))
            .collect();
        writers.push(tokio::spawn(writer(options.writers).run_metadata()));
        Workload {
            t0_ms,
            started,
            record,
            stop,
            writers,
        }
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A consistent copy of what happened so far.
    pub fn snapshot(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the writers after their current batch (acknowledged or given up).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers.drain(..) {
            let _ = w.await;
        }
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Acked,
    /// An HTTP error (503 during an election, 401): the node answered.
    Refused,
    /// No answer in time, or no connection.
    NoAnswer,
}

/// How long a writer skips a node that did not answer.
const AVOID: Duration = Duration::from_secs(5);

/// The node after `node` that is not being avoided (or simply the next, if all are).
fn next_node(node: usize, avoid: &[Option<Instant>]) -> usize {
    let n = avoid.len();
    let now = Instant::now();
    (1..=n)
        .map(|k| (node + k) % n)
        .find(|&i| avoid[i].is_none_or(|t| t <= now))
        .unwrap_or((node + 1) % n)
}

struct Writer {
    w: usize,
    t0_ms: i64,
    started: Instant,
    bases: Arc<Vec<String>>,
    tokens: Arc<Mutex<Vec<Option<String>>>>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    options: Arc<Options>,
    client: reqwest::Client,
}

impl Writer {
    async fn run(self) {
        let mut node = self.w % self.bases.len();
        let mut avoid: Vec<Option<Instant>> = vec![None; self.bases.len()];
        while !self.stop.load(Ordering::SeqCst) {
            let n = self.options.batch;
            let first = {
                let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
                let first = r.next_id;
                r.next_id += u64::from(n);
                r.in_flight.insert(first, n);
                first
            };
            let points: Vec<_> = (first..first + u64::from(n))
                .map(|id| {
                    let (ts, series) = place(self.t0_ms, id);
                    json!({
                        "metric": METRIC,
                        "timestamp": ts,
                        "value": id as f64,
                        "dimensions": {"s": series.to_string()},
                    })
                })
                .collect();
            let body = json!({ "data_points": points }).to_string();
            let batch = Batch { first, n };
            let began = Instant::now();
            let mut refused = 0;
            let acked = loop {
                match self.send(node, first, &body, n).await {
                    Sent::Acked => break true,
                    // A node that did not answer in time (paused, cut off, dead) is skipped
                    // for a while, as a client library would, rather than waited on again.
                    Sent::NoAnswer => {
                        avoid[node] = Some(Instant::now() + AVOID);
                        node = next_node(node, &avoid);
                    }
                    // A node that answered 503 (an election under way) is asked again: it is
                    // alive, and the next node may be the one that is not. After three
                    // refusals in a row, the next node.
                    Sent::Refused => {
                        refused += 1;
                        if refused % 3 == 0 {
                            node = next_node(node, &avoid);
                        }
                    }
                }
                if began.elapsed() > self.options.give_up {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            // Each batch goes to the next node, so the writers' requests stay spread over the
            // cluster (a node that fails does not collect every writer).
            node = next_node(node, &avoid);
            {
                let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
                r.in_flight.remove(&first);
                if acked {
                    r.acked.push(batch);
                } else {
                    r.uncertain.push(batch);
                }
            }
            tokio::time::sleep(self.options.pace).await;
        }
    }

    async fn token(&self, node: usize) -> Option<String> {
        if let Some(t) = self.tokens.lock().unwrap_or_else(|p| p.into_inner())[node].clone() {
            return Some(t);
        }
        let t = tokio::time::timeout(
            self.options.request_timeout,
            login(&self.client, &self.bases[node]),
        )
        .await
        .ok()?
        .ok()?;
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())[node] = Some(t.clone());
        Some(t)
    }

    /// Creates dashboards `chaos-0`, `chaos-1`, … through the nodes in turn until stopped.
    async fn run_metadata(self) {
        let mut node = 0;
        while !self.stop.load(Ordering::SeqCst) {
            let n = {
                let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
                r.meta_next += 1;
                r.meta_next - 1
            };
            let body = json!({ "name": dashboard_name(n) }).to_string();
            let mut ok = false;
            if let Some(token) = self.token(node).await {
                let r = self
                    .client
                    .post(format!("{}/api/v1/dashboards", self.bases[node]))
                    .bearer_auth(token)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .timeout(self.options.request_timeout)
                    .send()
                    .await;
                ok = matches!(r, Ok(r) if r.status() == reqwest::StatusCode::CREATED);
            }
            if ok {
                let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
                r.meta_acked.push(n);
            }
            node = (node + 1) % self.bases.len();
            tokio::time::sleep(META_PACE).await;
        }
    }

    /// One attempt.
    async fn send(&self, node: usize, first: u64, body: &str, n: u32) -> Sent {
        let at = self.started.elapsed().as_secs_f64();
        let sent = Instant::now();
        let outcome = match self.token(node).await {
            None => Sent::NoAnswer,
            Some(token) => {
                let r = self
                    .client
                    .post(format!("{}/api/v1/ingest", self.bases[node]))
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("chaos-{first}"))
                    .header("Content-Type", "application/json")
                    .body(body.to_owned())
                    .timeout(self.options.request_timeout)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => Sent::Acked,
                    Ok(r) => {
                        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
                            self.tokens.lock().unwrap_or_else(|p| p.into_inner())[node] = None;
                        }
                        Sent::Refused
                    }
                    Err(_) => Sent::NoAnswer,
                }
            }
        };
        let ok = outcome == Sent::Acked;
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempts
            .push(Attempt {
                at,
                latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                ok,
                points: n,
            });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_skip_nodes_that_did_not_answer() {
        let later = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(next_node(0, &[None, None, None]), 1);
        assert_eq!(next_node(0, &[None, later, None]), 2);
        assert_eq!(next_node(2, &[later, None, None]), 1);
        // Everyone silent: go round anyway.
        assert_eq!(next_node(1, &[later, later, later]), 2);
    }

    #[test]
    fn every_id_has_its_own_place() {
        let t0 = 1_000_000;
        let mut seen = std::collections::HashSet::new();
        for id in 0..10_000 {
            let (ts, s) = place(t0, id);
            assert!(seen.insert((ts, s)), "id {id} shares a place");
            assert_eq!(id_at(t0, ts, s), Some(id));
        }
        assert_eq!(id_at(t0, t0 - 1, 0), None);
        assert_eq!(id_at(t0, t0, SERIES), None);
    }
}
