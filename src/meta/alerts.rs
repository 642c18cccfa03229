//! Alert rules, their current states and their history, in the metadata store.
//!
//! Rules change through commands like every piece of metadata; so do state transitions and
//! notification dead letters, which keeps "what fired when" replicated with everything else
//! (the seam the meta Raft group replicates: a transition is applied once, cluster-wide, so
//! two nodes cannot both notify it).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Principal;
use super::command::MetaCommand;
use super::service::{random_id, require_editor, MetaService};
use super::store::{storage, MetaError};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_rules (
    id INTEGER PRIMARY KEY,
    owner_user_id INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_states (
    rule_id INTEGER NOT NULL,
    group_key TEXT NOT NULL,
    state TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (rule_id, group_key)
);
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id INTEGER NOT NULL,
    rule_name TEXT NOT NULL,
    group_key TEXT NOT NULL,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    value REAL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_rule ON alert_events(rule_id, id);
CREATE TABLE IF NOT EXISTS alert_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// Events kept; older ones are dropped as new ones arrive.
const MAX_EVENTS: i64 = 100_000;
const MAX_DEAD_LETTERS: i64 = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRuleRecord {
    pub id: u64,
    pub owner_user_id: u64,
    /// The rule as JSON ([`AlertSpec`]), validated when proposed.
    pub spec: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub version: u64,
}

/// Where notifications go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Channel {
    Webhook { url: String },
    Websocket,
    Log,
}

/// A rule as users write it (SPEC §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    pub name: String,
    /// A panel query (metric, filter, group_by, aggregation, window).
    pub query: Value,
    /// `>`, `>=`, `<`, `<=`, `==`, `!=` or `anomaly`.
    pub condition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// For `anomaly`: `low`, `medium` (default), `high` or a number of deviations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<String>,
    /// How long the condition must hold before the alert fires (and clear before it resolves).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub notification_channels: Vec<Channel>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// While firing, notify again after this long (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renotify_interval: Option<String>,
}

fn default_severity() -> String {
    "warning".into()
}

fn yes() -> bool {
    true
}

pub const CONDITIONS: &[&str] = &[">", ">=", "<", "<=", "==", "!=", "anomaly"];
pub const SEVERITIES: &[&str] = &["info", "warning", "critical"];

fn invalid(field: &'static str, reason: impl Into<String>) -> MetaError {
    MetaError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl AlertSpec {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(invalid("name", "1 to 200 bytes"));
        }
        crate::query::PanelQuery::from_json(&self.query).map_err(|e| invalid("query", e))?;
        if !CONDITIONS.contains(&self.condition.as_str()) {
            return Err(invalid(
                "condition",
                format!("{:?}: use one of {}", self.condition, CONDITIONS.join(" ")),
            ));
        }
        if self.condition == "anomaly" {
            crate::alert::anomaly::sensitivity_k(self.sensitivity.as_deref().unwrap_or("medium"))
                .map_err(|e| invalid("sensitivity", e))?;
        } else if !self.threshold.is_some_and(f64::is_finite) {
            return Err(invalid(
                "threshold",
                "a finite number is required for this condition",
            ));
        }
        for (field, d) in [
            ("for", &self.for_),
            ("renotify_interval", &self.renotify_interval),
        ] {
            if let Some(d) = d {
                protocol::time::parse_duration_ms(d).map_err(|e| {
                    invalid(
                        if field == "for" {
                            "for"
                        } else {
                            "renotify_interval"
                        },
                        e,
                    )
                })?;
            }
        }
        if !SEVERITIES.contains(&self.severity.as_str()) {
            return Err(invalid(
                "severity",
                format!("{:?}: use info, warning or critical", self.severity),
            ));
        }
        if self.notification_channels.len() > 10 {
            return Err(invalid("notification_channels", "at most 10"));
        }
        for c in &self.notification_channels {
            if let Channel::Webhook { url } = c {
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() <= 2048
                    && reqwest::Url::parse(url).is_ok();
                if !ok {
                    return Err(invalid(
                        "notification_channels",
                        format!("webhook url {url:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        if self.labels.len() > 32 {
            return Err(invalid("labels", "at most 32"));
        }
        Ok(())
    }

    pub fn for_ms(&self) -> i64 {
        self.for_
            .as_deref()
            .and_then(|d| protocol::time::parse_duration_ms(d).ok())
            .unwrap_or(0)
    }

    pub fn renotify_ms(&self) -> Option<i64> {
        self.renotify_interval
            .as_deref()
            .and_then(|d| protocol::time::parse_duration_ms(d).ok())
            .filter(|d| *d > 0)
    }
}

/// A rule's or group's current state as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertStateRow {
    pub rule_id: u64,
    pub dimensions: Value,
    pub state: String,
    pub since_ms: i64,
    pub value: Option<f64>,
}

// ---- apply ----

pub(super) fn apply(tx: &Connection, cmd: &MetaCommand) -> Result<(), MetaError> {
    match cmd {
        MetaCommand::PutAlertRule { rule, base_version } => {
            super::store::check_version(tx, "alert_rules", "alert rule", rule.id, *base_version)?;
            tx.execute(
                "INSERT INTO alert_rules (id, owner_user_id, spec, created_ms, updated_ms, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET spec = excluded.spec,
                   updated_ms = excluded.updated_ms, version = excluded.version",
                params![
                    rule.id as i64,
                    rule.owner_user_id as i64,
                    rule.spec,
                    rule.created_ms,
                    rule.updated_ms,
                    rule.version as i64
                ],
            )
            .map_err(storage("write alert rule"))?;
            // A changed rule starts from scratch: old states no longer mean anything.
            tx.execute(
                "DELETE FROM alert_states WHERE rule_id = ?1",
                [rule.id as i64],
            )
            .map_err(storage("reset alert states"))?;
        }
        MetaCommand::DeleteAlertRule { id } => {
            let n = tx
                .execute("DELETE FROM alert_rules WHERE id = ?1", [*id as i64])
                .map_err(storage("delete alert rule"))?;
            if n == 0 {
                return Err(MetaError::NotFound {
                    what: "alert rule".into(),
                    id: id.to_string(),
                });
            }
            tx.execute("DELETE FROM alert_states WHERE rule_id = ?1", [*id as i64])
                .map_err(storage("delete alert states"))?;
        }
        MetaCommand::AlertTransition {
            rule_id,
            rule_name,
            group_key,
            state,
            severity,
            value,
            at_ms,
            event,
        } => {
            tx.execute(
                "INSERT INTO alert_states (rule_id, group_key, state, since_ms, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(rule_id, group_key) DO UPDATE SET state = excluded.state,
                   since_ms = excluded.since_ms, value = excluded.value",
                params![*rule_id as i64, group_key, state, at_ms, value],
            )
            .map_err(storage("write alert state"))?;
            if *event {
                tx.execute(
                    "INSERT INTO alert_events (rule_id, rule_name, group_key, state, severity, value, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![*rule_id as i64, rule_name, group_key, state, severity, value, at_ms],
                )
                .map_err(storage("write alert event"))?;
                tx.execute(
                    "DELETE FROM alert_events WHERE id <= (SELECT MAX(id) FROM alert_events) - ?1",
                    [MAX_EVENTS],
                )
                .map_err(storage("trim alert events"))?;
            }
        }
        MetaCommand::AlertDeadLetter {
            rule_id,
            channel,
            payload,
            error,
            at_ms,
        } => {
            tx.execute(
                "INSERT INTO alert_dead_letters (rule_id, channel, payload, error, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![*rule_id as i64, channel, payload, error, at_ms],
            )
            .map_err(storage("write dead letter"))?;
            tx.execute(
                "DELETE FROM alert_dead_letters WHERE id <= (SELECT MAX(id) FROM alert_dead_letters) - ?1",
                [MAX_DEAD_LETTERS],
            )
            .map_err(storage("trim dead letters"))?;
        }
        _ => {}
    }
    Ok(())
}

// ---- reads ----

fn rule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRuleRecord> {
    Ok(AlertRuleRecord {
        id: r.get::<_, i64>(0)? as u64,
        owner_user_id: r.get::<_, i64>(1)? as u64,
        spec: r.get(2)?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
        version: r.get::<_, i64>(5)? as u64,
    })
}

fn group_value(key: &str) -> Value {
    serde_json::from_str(key).unwrap_or_else(|_| json!({}))
}

impl super::store::MetaStore {
    pub fn alert_rules(&self) -> Result<Vec<AlertRuleRecord>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, owner_user_id, spec, created_ms, updated_ms, version FROM alert_rules ORDER BY created_ms, id")
            .map_err(storage("list alert rules"))?;
        let rows = stmt
            .query_map([], rule_row)
            .map_err(storage("list alert rules"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list alert rules"))
    }

    pub fn alert_states(&self) -> Result<Vec<AlertStateRow>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT rule_id, group_key, state, since_ms, value FROM alert_states ORDER BY rule_id, group_key")
            .map_err(storage("list alert states"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AlertStateRow {
                    rule_id: r.get::<_, i64>(0)? as u64,
                    dimensions: group_value(&r.get::<_, String>(1)?),
                    state: r.get(2)?,
                    since_ms: r.get(3)?,
                    value: r.get(4)?,
                })
            })
            .map_err(storage("list alert states"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list alert states"))
    }

    pub fn alert_events(&self, rule_id: Option<u64>, limit: u32) -> Result<Vec<Value>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, rule_id, rule_name, group_key, state, severity, value, at_ms FROM alert_events
                 WHERE ?1 IS NULL OR rule_id = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(storage("list alert events"))?;
        let rows = stmt
            .query_map(params![rule_id.map(|r| r as i64), limit], |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "rule_id": r.get::<_, i64>(1)?,
                    "rule": r.get::<_, String>(2)?,
                    "dimensions": group_value(&r.get::<_, String>(3)?),
                    "state": r.get::<_, String>(4)?,
                    "severity": r.get::<_, String>(5)?,
                    "value": r.get::<_, Option<f64>>(6)?,
                    "at": r.get::<_, i64>(7)?,
                }))
            })
            .map_err(storage("list alert events"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list alert events"))
    }

    pub fn dead_letters(&self, limit: u32) -> Result<Vec<Value>, MetaError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, rule_id, channel, payload, error, at_ms FROM alert_dead_letters ORDER BY id DESC LIMIT ?1")
            .map_err(storage("list dead letters"))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "rule_id": r.get::<_, i64>(1)?,
                    "channel": r.get::<_, String>(2)?,
                    "payload": serde_json::from_str::<Value>(&r.get::<_, String>(3)?).unwrap_or(Value::Null),
                    "error": r.get::<_, String>(4)?,
                    "at": r.get::<_, i64>(5)?,
                }))
            })
            .map_err(storage("list dead letters"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("list dead letters"))
    }
}

// ---- the service ----

pub fn rule_view(r: &AlertRuleRecord) -> Value {
    let mut v: Value = serde_json::from_str(&r.spec).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(r.id));
        o.insert("owner_user_id".into(), json!(r.owner_user_id));
        o.insert("created_ms".into(), json!(r.created_ms));
        o.insert("updated_ms".into(), json!(r.updated_ms));
        o.insert("version".into(), json!(r.version));
    }
    v
}

impl MetaService {
    pub fn list_alert_rules(&self) -> Result<Vec<AlertRuleRecord>, MetaError> {
        self.store().alert_rules()
    }

    pub async fn put_alert_rule(
        &self,
        caller: &Principal,
        id: Option<u64>,
        spec: AlertSpec,
        version: Option<u64>,
        now_ms: i64,
    ) -> Result<Value, MetaError> {
        require_editor(caller, "alert rules")?;
        spec.validate()?;
        let text = serde_json::to_string(&spec).map_err(|e| invalid("rule", e.to_string()))?;
        let current = match id {
            Some(id) => Some(
                self.store()
                    .alert_rules()?
                    .into_iter()
                    .find(|r| r.id == id)
                    .ok_or_else(|| MetaError::NotFound {
                        what: "alert rule".into(),
                        id: id.to_string(),
                    })?,
            ),
            None => None,
        };
        if let (Some(c), Some(v)) = (&current, version) {
            if c.version != v {
                return Err(MetaError::Conflict(format!(
                    "alert rule {} is at version {}, the change was based on {v}; reload it",
                    c.id, c.version
                )));
            }
        }
        let rule = AlertRuleRecord {
            id: current.as_ref().map_or_else(random_id, |c| c.id),
            owner_user_id: current.as_ref().map_or(caller.user_id, |c| c.owner_user_id),
            spec: text,
            created_ms: current.as_ref().map_or(now_ms, |c| c.created_ms),
            updated_ms: now_ms,
            version: current.as_ref().map_or(1, |c| c.version + 1),
        };
        self.propose(MetaCommand::PutAlertRule {
            rule: rule.clone(),
            base_version: current.map(|c| c.version),
        })
        .await?;
        Ok(rule_view(&rule))
    }

    pub async fn delete_alert_rule(&self, caller: &Principal, id: u64) -> Result<(), MetaError> {
        require_editor(caller, "alert rules")?;
        self.propose(MetaCommand::DeleteAlertRule { id }).await
    }

    pub fn alert_states(&self) -> Result<Vec<AlertStateRow>, MetaError> {
        self.store().alert_states()
    }

    pub fn alert_events(&self, rule_id: Option<u64>, limit: u32) -> Result<Vec<Value>, MetaError> {
        self.store().alert_events(rule_id, limit.clamp(1, 1000))
    }

    pub fn dead_letters(&self, limit: u32) -> Result<Vec<Value>, MetaError> {
        self.store().dead_letters(limit.clamp(1, 1000))
    }

    /// Records a state change (and, for `event`, a history entry).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_alert_transition(
        &self,
        rule_id: u64,
        rule_name: &str,
        group_key: &str,
        state: &str,
        severity: &str,
        value: Option<f64>,
        at_ms: i64,
        event: bool,
    ) -> Result<(), MetaError> {
        self.propose(MetaCommand::AlertTransition {
            rule_id,
            rule_name: rule_name.to_owned(),
            group_key: group_key.to_owned(),
            state: state.to_owned(),
            severity: severity.to_owned(),
            value,
            at_ms,
            event,
        })
        .await
    }

    pub async fn record_dead_letter(
        &self,
        rule_id: u64,
        channel: &str,
        payload: &str,
        error: &str,
        at_ms: i64,
    ) -> Result<(), MetaError> {
        self.propose(MetaCommand::AlertDeadLetter {
            rule_id,
            channel: channel.to_owned(),
            payload: payload.to_owned(),
            error: error.to_owned(),
            at_ms,
        })
        .await
    }
}
