//! The checker: after a scenario, asks every running node for every point the workload
//! sent (1 ms buckets grouped by series: one point each) and for 1 s sums, and verifies that each acknowledged
//! point is there exactly once, nothing is there twice or was never sent, and the rollup sums
//! agree with the points. It also lists every node's dashboards: each acknowledged `chaos-<n>`
//! must be there, and none twice.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::Value;

use crate::cluster::{login, Cluster};
use crate::workload::{id_at, place, Record, METRIC, SERIES};

/// One node's view of the workload's points.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pub node: usize,
    pub acked: u64,
    pub uncertain: u64,
    pub present: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub phantom: u64,
    pub sum_mismatches: u64,
    /// Dashboards: acknowledged, present, and the two ways to be wrong (every number below
    /// the record's `meta_next` was attempted once, so any of them may be there once).
    pub meta_acked: u64,
    pub meta_present: u64,
    pub meta_lost: u64,
    pub meta_duplicated: u64,
    pub problems: Vec<String>,
}

impl Check {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }

    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.phantom == 0
            && self.sum_mismatches == 0
            && self.meta_lost == 0
            && self.meta_duplicated == 0
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {}: {} acknowledged, {} uncertain, {} present; lost {}, duplicated {}, never sent {}, 1 s sums wrong {}",
            self.node,
            self.acked,
            self.uncertain,
            self.present,
            self.lost,
            self.duplicated,
            self.phantom,
            self.sum_mismatches
        )?;
        write!(
            f,
            "; dashboards: {} acknowledged, {} present; lost {}, duplicated {}",
            self.meta_acked, self.meta_present, self.meta_lost, self.meta_duplicated
        )?;
        for p in self.problems.iter().take(5) {
            write!(f, "\n    {p}")?;
        }
        Ok(())
    }
}

/// Milliseconds per query: 64 series × 4 000 buckets per answer.
const CHUNK_MS: i64 = 4_000;

#[derive(Clone, Copy, PartialEq)]
enum Sent {
    Never,
    Acked,
    Uncertain,
}

/// Checks every running node, giving each up to `within` to converge.
pub async fn check(
    cluster: &Cluster,
    record: &Record,
    t0_ms: i64,
    within: Duration,
) -> Result<Vec<Check>> {
    let mut sent = vec![Sent::Never; record.next_id as usize];
    let mut mark = |first: u64, n: u32, how: Sent| {
        for id in first..first + u64::from(n) {
            if let Some(s) = sent.get_mut(id as usize) {
                *s = how;
            }
        }
    };
    for b in &record.acked {
        mark(b.first, b.n, Sent::Acked);
    }
    for b in &record.uncertain {
        mark(b.first, b.n, Sent::Uncertain);
    }
    for (&first, &n) in &record.in_flight {
        mark(first, n, Sent::Uncertain);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut out = Vec::new();
    for i in cluster.running() {
        let base = cluster.nodes[i].base();
        let deadline = Instant::now() + within;
        loop {
            let result = match check_node(&client, &base, i, &sent, t0_ms).await {
                Ok(mut c) => check_dashboards(&client, &base, record, &mut c)
                    .await
                    .map(|()| c),
                Err(e) => Err(e),
            };
            match result {
                Ok(c) if c.ok() || Instant::now() > deadline => {
                    out.push(c);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("checking node {i}")))
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(out)
}

/// Lists `base`'s dashboards into `c`'s metadata counts.
async fn check_dashboards(
    client: &reqwest::Client,
    base: &str,
    record: &Record,
    c: &mut Check,
) -> Result<()> {
    let token = login(client, base).await?;
    let url = format!("{base}/api/v1/dashboards");
    let r = client.get(&url).bearer_auth(&token).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(anyhow!("{url}: {status} {v}"));
    }
    let mut count: BTreeMap<u64, u64> = BTreeMap::new();
    for d in v["dashboards"].as_array().into_iter().flatten() {
        let n = d["name"]
            .as_str()
            .and_then(|name| name.strip_prefix("chaos-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            *count.entry(n).or_default() += 1;
        }
    }
    for &n in &record.meta_acked {
        c.meta_acked += 1;
        if !count.contains_key(&n) {
            c.meta_lost += 1;
            c.problem(format!("acknowledged dashboard chaos-{n} is missing"));
        }
    }
    for (&n, &times) in &count {
        // Attempted after this check's copy of the record was taken.
        if n >= record.meta_next {
            continue;
        }
        c.meta_present += 1;
        if times > 1 {
            c.meta_duplicated += 1;
            c.problem(format!("dashboard chaos-{n} is there {times} times"));
        }
    }
    Ok(())
}

async fn query(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    range: std::ops::Range<i64>,
    granularity: &str,
    aggregation: &str,
    group_by: &str,
) -> Result<Vec<(Option<u64>, i64, f64)>> {
    let url = format!(
        "{base}/api/v1/metrics/{METRIC}/data?start={}&end={}&granularity={granularity}&aggregation={aggregation}{group_by}",
        range.start, range.end
    );
    let r = client.get(&url).bearer_auth(token).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(anyhow!("{url}: {status} {v}"));
    }
    let mut points = Vec::new();
    for s in v["series"].as_array().into_iter().flatten() {
        let series = s["dimensions"]["s"].as_str().and_then(|x| x.parse().ok());
        for p in s["points"].as_array().into_iter().flatten() {
            let ts = p[0].as_i64().ok_or_else(|| anyhow!("bad point {p}"))?;
            let value = p[1].as_f64().ok_or_else(|| anyhow!("bad point {p}"))?;
            points.push((series, ts, value));
        }
    }
    Ok(points)
}

async fn check_node(
    client: &reqwest::Client,
    base: &str,
    node: usize,
    sent: &[Sent],
    t0_ms: i64,
) -> Result<Check> {
    let token = login(client, base).await?;
    let ids = sent.len() as u64;
    let mut count = vec![0u64; sent.len()];
    let mut c = Check {
        node,
        ..Check::default()
    };
    // Every millisecond that holds a point handed out so far.
    let last_ms = t0_ms + ids.div_ceil(SERIES) as i64;
    let mut start = t0_ms;
    while start < last_ms {
        let end = (start + CHUNK_MS).min(last_ms);
        for (series, ts, n) in query(
            client,
            base,
            &token,
            start..end,
            "1ms",
            "count",
            "&group_by=s",
        )
        .await?
        {
            let id = series.and_then(|s| id_at(t0_ms, ts, s));
            match id {
                Some(id) if id < ids => count[id as usize] += n as u64,
                // Handed out after this check's copy of the record was taken.
                Some(_) => {}
                None => {
                    c.phantom += n as u64;
                    c.problem(format!(
                        "{n} point(s) at {ts} in series {series:?}, outside the workload's placement"
                    ));
                }
            }
        }
        start = end;
    }
    let mut expected_sums: BTreeMap<i64, f64> = BTreeMap::new();
    for (id, (&n, &s)) in count.iter().zip(sent).enumerate() {
        match s {
            Sent::Acked => c.acked += 1,
            Sent::Uncertain => c.uncertain += 1,
            Sent::Never => {}
        }
        if n > 0 {
            c.present += 1;
            let (ts, _) = place(t0_ms, id as u64);
            *expected_sums.entry(ts.div_euclid(1000) * 1000).or_default() += n as f64 * id as f64;
        }
        if n > 1 {
            c.duplicated += 1;
            c.problem(format!("id {id} is there {n} times"));
        } else if n == 1 && s == Sent::Never {
            c.phantom += 1;
            c.problem(format!("id {id} is there but was never sent"));
        } else if n == 0 && s == Sent::Acked {
            c.lost += 1;
            c.problem(format!("acknowledged id {id} is missing"));
        }
    }
    let first = t0_ms.div_euclid(1000) * 1000;
    let sums = query(client, base, &token, first..last_ms + 1000, "1s", "sum", "").await?;
    // A bucket reaching past the last id handed out may hold points sent since: only buckets
    // whose every millisecond is full of handed-out ids count.
    let full_ms = t0_ms + (ids / SERIES) as i64;
    let complete = |ts: i64| ts + 1000 <= full_ms;
    expected_sums.retain(|ts, _| complete(*ts));
    let mut got: BTreeMap<i64, f64> = sums
        .into_iter()
        .map(|(_, ts, v)| (ts, v))
        .filter(|(ts, _)| complete(*ts))
        .collect();
    for (ts, want) in &expected_sums {
        let have = got.remove(ts).unwrap_or(0.0);
        if have != *want {
            c.sum_mismatches += 1;
            c.problem(format!(
                "1 s bucket {ts}: sum {have}, points add up to {want}"
            ));
        }
    }
    for (ts, have) in got {
        c.sum_mismatches += 1;
        c.problems
            .push(format!("1 s bucket {ts}: sum {have} with no points in it"));
    }
    Ok(c)
}
