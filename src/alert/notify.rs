//! Notifications: the log, live `alert` messages on every WebSocket, and webhooks (JSON POST
//! with a timeout and retries with backoff; a dead letter when they keep failing). Webhooks
//! run in their own tasks, bounded in number, so evaluation never waits for a receiver.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::http::AppState;
use crate::meta::{AlertSpec, Channel};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per webhook notification; waits between them double from `FIRST_BACKOFF`.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_IN_FLIGHT: usize = 256;

pub struct Notifier {
    state: Arc<AppState>,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
}

impl Notifier {
    pub fn new(state: Arc<AppState>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            state,
            http,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn send(&self, spec: &AlertSpec, rule_id: u64, payload: Value) {
        for channel in super::evaluator::channels(spec) {
            match channel {
                Channel::Log => warn!(
                    rule = rule_id,
                    name = %spec.name,
                    state = %payload["state"],
                    severity = %spec.severity,
                    value = %payload["value"],
                    dimensions = %payload["dimensions"],
                    "alert"
                ),
                Channel::Websocket => {
                    let mut msg = payload.clone();
                    msg["type"] = Value::from("alert");
                    self.state.live.publish_alert(msg.to_string());
                }
                Channel::Webhook { url } => self.webhook(rule_id, url, payload.clone()),
            }
        }
    }

    fn webhook(&self, rule_id: u64, url: String, payload: Value) {
        let state = self.state.clone();
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Recorded through the metadata group: not awaited by the alert actor.
            tokio::spawn(async move {
                let why = "too many notifications in flight";
                dead_letter(&state, rule_id, &url, &payload, why).await;
            });
            return;
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut wait = FIRST_BACKOFF;
            let mut last_error = String::new();
            for attempt in 1..=ATTEMPTS {
                match http.post(&url).json(&payload).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => last_error = format!("HTTP {}", r.status()),
                    Err(e) => last_error = e.to_string(),
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
            warn!(rule = rule_id, %url, cause = %last_error, "webhook failed after {ATTEMPTS} attempts");
            dead_letter(
                &state,
                rule_id,
                &url,
                &payload,
                &format!("after {ATTEMPTS} attempts: {last_error}"),
            )
            .await;
        });
    }
}

async fn dead_letter(state: &AppState, rule_id: u64, url: &str, payload: &Value, error: &str) {
    let channel = format!("webhook {url}");
    if let Err(e) = state
        .meta
        .record_dead_letter(
            rule_id,
            &channel,
            &payload.to_string(),
            error,
            crate::now_ms(),
        )
        .await
    {
        warn!(rule = rule_id, cause = %e, "recording a dead letter failed");
    }
}
