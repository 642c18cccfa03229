//! Batches as `POST /api/v1/ingest` (JSON) with an `Idempotency-Key`.

use std::time::Duration;

use serde_json::Value;

use crate::{ClientError, DataPoint, ErrorCode, Failure, SendFuture, Sender};

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

/// The JSON ingest body, serialized straight from the points.
#[derive(serde::Serialize)]
struct Body<'a> {
    data_points: Vec<Point<'a>>,
}

#[derive(serde::Serialize)]
struct Point<'a> {
    metric: &'a str,
    timestamp: i64,
    value: f64,
    dimensions: Dimensions<'a>,
}

struct Dimensions<'a>(&'a [(protocol::Name, protocol::Name)]);

impl serde::Serialize for Dimensions<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

fn body(points: &[DataPoint]) -> Body<'_> {
    Body {
        data_points: points
            .iter()
            .map(|p| Point {
                metric: &p.metric,
                timestamp: p.timestamp_ms,
                value: p.value,
                dimensions: Dimensions(&p.dimensions),
            })
            .collect(),
    }
}

impl Sender for HttpSender {
    fn send<'a>(
        &'a self,
        node: &'a str,
        batch_id: &'a str,
        points: &'a [DataPoint],
    ) -> SendFuture<'a> {
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
