//! The alert actor: one task that owns every rule's state machine.
//!
//! Each enabled rule joins the live subscription for its query, as a dashboard panel would,
//! so it is fed the shards' incremental aggregates and the window totals as they change
//! (including as buckets leave the window), never by polling history. Per group of a rule:
//! `ok → pending → firing → resolved`, with `for` holding both directions (a condition must
//! hold for `for` to fire and be clear for `for` to resolve: no flapping storms). Anomaly
//! rules sample the window value once per window into a [`Detector`] per group.
//! Transitions are recorded through metadata commands; notifications are sent on
//! transitions only (and on the re-notify interval), by tasks that never block evaluation.
//!
//! In a cluster only the node leading the metadata group evaluates (and it only while a
//! majority hears it): every node runs this actor, but the others hold no subscriptions. A
//! transition is notified only once it is committed in the metadata group, so a deposed
//! leader that has not noticed yet cannot notify twice; a new leader restores every group's
//! state from the replicated store and does not re-fire what was firing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::anomaly::{sensitivity_k, Detector};
use super::notify::Notifier;
use crate::http::AppState;
use crate::live::{Lagged, LiveQuery, Outgoing, Subscriber};
use crate::meta::{AlertSpec, Channel};
use crate::shard::cell::Agg;

/// The socket id alert subscriptions use in the live registry.
const ALERT_SOCKET: u64 = 0;
/// Messages queued from subscriptions to the alert actor before a rule counts as lagging.
const QUEUE: usize = 8_192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ok,
    Pending,
    Firing,
}

struct Group {
    dims: Value,
    key: String,
    value: Option<f64>,
    state: State,
    /// When the condition started to hold (pending) or to clear (while firing).
    since_ms: Option<i64>,
    last_notified_ms: i64,
    detector: Option<Detector>,
    next_sample_ms: i64,
    band: Option<(f64, f64)>,
    anomalous: bool,
}

struct Rule {
    id: u64,
    version: u64,
    spec: AlertSpec,
    query: LiveQuery,
    for_ms: i64,
    k: Option<f64>,
    groups: BTreeMap<String, Group>,
}

/// Messages to the alert actor besides subscription traffic.
pub enum AlertMsg {
    /// Rules changed in the metadata store.
    Reload,
}

pub struct AlertHandle {
    pub tx: mpsc::Sender<AlertMsg>,
}

impl AlertHandle {
    pub fn reload(&self) {
        let _ = self.tx.try_send(AlertMsg::Reload);
    }
}

pub fn channel() -> (AlertHandle, mpsc::Receiver<AlertMsg>) {
    let (tx, rx) = mpsc::channel(64);
    (AlertHandle { tx }, rx)
}

fn holds(cond: &str, v: f64, t: f64) -> bool {
    match cond {
        ">" => v > t,
        ">=" => v >= t,
        "<" => v < t,
        "<=" => v <= t,
        "==" => v == t,
        "!=" => v != t,
        _ => false,
    }
}

fn group_key(dims: &Value) -> String {
    // serde_json maps are sorted by key: one text per group.
    dims.to_string()
}

/// Runs until the node stops.
pub async fn run(state: Arc<AppState>, mut control: mpsc::Receiver<AlertMsg>) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE);
    let lagged = Arc::new(Lagged::default());
    let notifier = Notifier::new(state.clone());
    let mut rules: HashMap<u64, Rule> = HashMap::new();
    let mut closing = state.live.closing();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Whether this node evaluates (leads the metadata group), and the store's applied index
    // when the rules were last read (rules may change through any node).
    let mut leading = false;
    let mut read_at = 0;
    loop {
        tokio::select! {
            _ = closing.changed() => break,
            msg = control.recv() => match msg {
                Some(AlertMsg::Reload) if leading => reload(&state, &mut rules, &tx, &lagged).await,
                Some(AlertMsg::Reload) => {}
                None => break,
            },
            Some(out) = rx.recv() => {
                if let Outgoing::Shared { id, body, .. } = out {
                    let rule_id: u64 = serde_json::from_str::<String>(&id).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if let Some(rule) = rules.get_mut(&rule_id) {
                        take_totals(rule, &body);
                        evaluate(&state, &notifier, rule, crate::now_ms()).await;
                    }
                }
            }
            _ = lagged.notify.notified() => {
                for id in lagged.take() {
                    let rule_id: u64 = serde_json::from_str::<String>(&id).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if let Some(rule) = rules.get(&rule_id) {
                        join(&state, rule, &tx, &lagged).await;
                    }
                }
            }
            _ = tick.tick() => {
                let leads = state.meta.group().is_leader();
                if leads != leading {
                    leading = leads;
                    // Start from the replicated states (or stop evaluating).
                    leave_all(&state, &mut rules);
                    read_at = 0;
                    info!(evaluating = leads, "alert evaluation follows the metadata group's leader");
                }
                if !leading {
                    continue;
                }
                let applied = state.meta.applied_index();
                if applied != read_at {
                    read_at = applied;
                    reload(&state, &mut rules, &tx, &lagged).await;
                }
                let now = crate::now_ms();
                for rule in rules.values_mut() {
                    evaluate(&state, &notifier, rule, now).await;
                }
            }
        }
    }
    leave_all(&state, &mut rules);
}

fn leave_all(state: &AppState, rules: &mut HashMap<u64, Rule>) {
    for (_, rule) in rules.drain() {
        state
            .live
            .leave(&rule.query.key, ALERT_SOCKET, sub_id(rule.id));
    }
}

fn sub_id(rule_id: u64) -> Arc<str> {
    Value::String(rule_id.to_string()).to_string().into()
}

async fn join(state: &AppState, rule: &Rule, tx: &mpsc::Sender<Outgoing>, lagged: &Arc<Lagged>) {
    let sub = Subscriber {
        socket: ALERT_SOCKET,
        id: sub_id(rule.id),
        tx: tx.clone(),
        lagged: lagged.clone(),
    };
    if let Err(e) = state.live.join(&rule.query, sub, None).await {
        warn!(rule = rule.id, cause = %e, "alert rule could not subscribe");
    }
}

/// Brings the running rules in line with the store: new and changed rules (re)join their
/// subscription from a fresh state (restored from the stored states); removed ones leave.
async fn reload(
    state: &AppState,
    rules: &mut HashMap<u64, Rule>,
    tx: &mpsc::Sender<Outgoing>,
    lagged: &Arc<Lagged>,
) {
    let records = match state.meta.list_alert_rules() {
        Ok(r) => r,
        Err(e) => {
            warn!(cause = %e, "reading alert rules failed");
            return;
        }
    };
    let stored = state.meta.alert_states().unwrap_or_default();
    let mut keep = HashSet::new();
    for rec in records {
        let Ok(spec) = serde_json::from_str::<AlertSpec>(&rec.spec) else {
            warn!(rule = rec.id, "stored alert rule does not parse; skipped");
            continue;
        };
        if !spec.enabled {
            continue;
        }
        keep.insert(rec.id);
        if rules.get(&rec.id).is_some_and(|r| r.version == rec.version) {
            continue;
        }
        if let Some(old) = rules.remove(&rec.id) {
            state
                .live
                .leave(&old.query.key, ALERT_SOCKET, sub_id(old.id));
        }
        let query =
            match LiveQuery::parse(&spec.query, Some(250), state.live.layout(), crate::now_ms()) {
                Ok(q) => q,
                Err(e) => {
                    warn!(rule = rec.id, cause = %e, "alert rule query no longer valid; skipped");
                    continue;
                }
            };
        let k = (spec.condition == "anomaly")
            .then(|| sensitivity_k(spec.sensitivity.as_deref().unwrap_or("medium")).ok())
            .flatten();
        let mut rule = Rule {
            id: rec.id,
            version: rec.version,
            for_ms: spec.for_ms(),
            k,
            spec,
            query,
            groups: BTreeMap::new(),
        };
        // Restore stored states so a restart neither re-fires nor forgets a firing alert.
        for s in stored.iter().filter(|s| s.rule_id == rec.id) {
            let st = match s.state.as_str() {
                "firing" => State::Firing,
                "pending" => State::Pending,
                _ => State::Ok,
            };
            let key = group_key(&s.dimensions);
            rule.groups.insert(
                key.clone(),
                new_group(rule.k, s.dimensions.clone(), key, st, s.value),
            );
        }
        join(state, &rule, tx, lagged).await;
        info!(rule = rule.id, name = %rule.spec.name, "alert rule active");
        rules.insert(rec.id, rule);
    }
    let gone: Vec<u64> = rules
        .keys()
        .filter(|id| !keep.contains(id))
        .copied()
        .collect();
    for id in gone {
        if let Some(old) = rules.remove(&id) {
            state
                .live
                .leave(&old.query.key, ALERT_SOCKET, sub_id(old.id));
        }
    }
}

fn new_group(k: Option<f64>, dims: Value, key: String, state: State, value: Option<f64>) -> Group {
    Group {
        dims,
        key,
        value,
        state,
        since_ms: None,
        last_notified_ms: crate::now_ms(),
        detector: k.map(Detector::new),
        next_sample_ms: 0,
        band: None,
        anomalous: false,
    }
}

/// Reads `"totals"` of a snapshot or update into the rule's groups.
fn take_totals(rule: &mut Rule, body: &str) {
    let v: Value = match serde_json::from_str(&format!("{{{body}}}")) {
        Ok(v) => v,
        Err(_) => return,
    };
    for t in v["totals"].as_array().into_iter().flatten() {
        let dims = t["dimensions"].clone();
        let key = group_key(&dims);
        let value = t["value"].as_f64();
        let k = rule.k;
        let g = rule
            .groups
            .entry(key.clone())
            .or_insert_with(|| new_group(k, dims, key, State::Ok, None));
        g.value = value;
    }
}

async fn evaluate(state: &AppState, notifier: &Notifier, rule: &mut Rule, now: i64) {
    let window = rule.query.window_ms.max(1_000);
    let mut transitions = Vec::new();
    for g in rule.groups.values_mut() {
        // No data means 0 for counting aggregations, and nothing to compare otherwise.
        let value = match rule.query.aggregation {
            Agg::Sum | Agg::Count | Agg::Rate => Some(g.value.unwrap_or(0.0)),
            _ => g.value,
        };
        let breach = match (&mut g.detector, value) {
            (Some(d), Some(v)) => {
                if now >= g.next_sample_ms {
                    g.next_sample_ms = now + window;
                    let verdict = d.observe(v);
                    g.anomalous = verdict.anomalous;
                    g.band = d.band();
                }
                g.anomalous
            }
            (Some(_), None) => false,
            (None, Some(v)) => holds(&rule.spec.condition, v, rule.spec.threshold.unwrap_or(0.0)),
            (None, None) => false,
        };
        let next = step(g, breach, rule.for_ms, now);
        if let Some(to) = next {
            transitions.push((g.key.clone(), to, value));
        } else if g.state == State::Firing {
            if let Some(every) = rule.spec.renotify_ms() {
                if now - g.last_notified_ms >= every {
                    g.last_notified_ms = now;
                    notifier.send(
                        &rule.spec,
                        rule.id,
                        payload(rule.id, &rule.spec, g, "firing", value, now),
                    );
                }
            }
        }
    }
    for (key, to, value) in transitions {
        let Some(g) = rule.groups.get_mut(&key) else {
            continue;
        };
        let (name, event) = match to {
            State::Pending => ("pending", false),
            State::Firing => ("firing", true),
            State::Ok => {
                if g.state == State::Firing {
                    ("resolved", true)
                } else {
                    ("ok", false)
                }
            }
        };
        let before = g.state;
        g.state = to;
        if let Err(e) = state
            .meta
            .record_alert_transition(
                rule.id,
                &rule.spec.name,
                &g.key,
                name,
                &rule.spec.severity,
                value,
                now,
                event,
            )
            .await
        {
            // Not committed (this node may no longer lead the metadata group): no notice, and
            // the transition is tried again on the next evaluation.
            warn!(rule = rule.id, cause = %e, "recording an alert transition failed");
            g.state = before;
            continue;
        }
        if event {
            g.last_notified_ms = now;
            notifier.send(
                &rule.spec,
                rule.id,
                payload(rule.id, &rule.spec, g, name, value, now),
            );
        }
    }
}

/// The state machine of one group. Returns the new state when it changes.
fn step(g: &mut Group, breach: bool, for_ms: i64, now: i64) -> Option<State> {
    match (g.state, breach) {
        (State::Ok, true) => {
            if for_ms == 0 {
                g.since_ms = None;
                Some(State::Firing)
            } else {
                g.since_ms = Some(now);
                Some(State::Pending)
            }
        }
        (State::Pending, true) => {
            let since = *g.since_ms.get_or_insert(now);
            if now - since >= for_ms {
                g.since_ms = None;
                Some(State::Firing)
            } else {
                None
            }
        }
        (State::Pending, false) => {
            g.since_ms = None;
            Some(State::Ok)
        }
        (State::Firing, false) => {
            let since = *g.since_ms.get_or_insert(now);
            if now - since >= for_ms {
                g.since_ms = None;
                Some(State::Ok)
            } else {
                None
            }
        }
        (State::Firing, true) => {
            g.since_ms = None;
            None
        }
        (State::Ok, false) => None,
    }
}

fn payload(
    rule_id: u64,
    spec: &AlertSpec,
    g: &Group,
    state: &str,
    value: Option<f64>,
    now: i64,
) -> Value {
    json!({
        "rule_id": rule_id,
        "rule": spec.name,
        "state": state,
        "severity": spec.severity,
        "condition": spec.condition,
        "threshold": spec.threshold,
        "value": value,
        "dimensions": g.dims,
        "band": g.band.map(|(lo, hi)| [lo, hi]),
        "metric": spec.query.get("metric"),
        "labels": spec.labels,
        "at": now,
    })
}

/// Which channels a rule uses (`log` when none are given).
pub fn channels(spec: &AlertSpec) -> Vec<Channel> {
    if spec.notification_channels.is_empty() {
        vec![Channel::Log]
    } else {
        spec.notification_channels.clone()
    }
}
