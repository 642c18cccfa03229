//! Batches as `POST /api/v1/ingest` (JSON) with an `Idempotency-Key`.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::{ClientError, DataPoint, ErrorCode, Failure, Sender};

pub struct HttpSender {
    http: reqwest::Client,
    api_key: String,
}

impl HttpSender {
    pub fn new(api_key: &str, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            http,
            api_key: api_key.to_owned(),
        })
    }
}

fn body(points: &[DataPoint]) -> Value {
    let points: Vec<Value> = points
        .iter()
        .map(|p| {
            let dims: Map<String, Value> = p
                .dimensions
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
                .collect();
            json!({"metric": p.metric.as_str(), "timestamp": p.timestamp_ms, "value": p.value, "dimensions": dims})
        })
        .collect();
    json!({ "data_points": points })
}

impl Sender for HttpSender {
    fn send<'a>(
        &'a self,
        node: &'a str,
        batch_id: &'a str,
        points: &'a [DataPoint],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Failure>> + Send + 'a>>
    {
        Box::pin(async move {
            let r = self
                .http
                .post(format!("{}/api/v1/ingest", node.trim_end_matches('/')))
                .bearer_auth(&self.api_key)
                .header("Idempotency-Key", batch_id)
                .json(&body(points))
                .send()
                .await
                .map_err(|e| Failure::Retry {
                    message: e.to_string(),
                    after: None,
                    switch: true,
                })?;
            let status = r.status().as_u16();
            let after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs);
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            let message = || answer.to_string();
            match status {
                200 => Ok(answer["accepted"].as_u64().unwrap_or(0) as u32),
                429 | 500..=599 => Err(Failure::Retry {
                    message: format!("{status}: {}", message()),
                    after,
                    switch: status == 502 || status == 504,
                }),
                _ => Err(Failure::Fatal {
                    code: match status {
                        401 => ErrorCode::Unauthorized,
                        403 => ErrorCode::Forbidden,
                        413 => ErrorCode::TooLarge,
                        _ => ErrorCode::Invalid,
                    },
                    message: format!("{status}: {}", message()),
                }),
            }
        })
    }
}
