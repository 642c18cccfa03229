//! Ingest from what users already run, unchanged: InfluxDB 1.x (`POST /write`) and 2.x
//! (`POST /api/v2/write`) line protocol, as Telegraf and the official client libraries send
//! it, and Prometheus remote write (`POST /api/v1/prom/write`).
//!
//! Pulseboard has no databases or buckets: `db`, `rp`, `org` and `bucket` are accepted and
//! ignored. The credential is a Pulseboard API key (or session token) in any place those
//! clients put one: `Authorization: Token|Bearer <key>`, HTTP basic auth with the key as
//! the password, or InfluxDB 1.x's `p=<key>` query parameter. Success is `204 No Content`,
//! as those clients expect; errors keep their HTTP status and take the client's error shape
//! (`{"error"}` for 1.x, `{"code","message"}` for 2.x), so the client shows our message.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::ingest::{authorize, idempotency_key, query_pairs, write_lines};
use super::{error_response, read_body, ApiError, Shared};
use crate::error::Error;
use crate::telemetry::{Protocol, Skipped};

/// `GET|HEAD /ping`: InfluxDB clients check the server with it.
pub async fn ping() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        "x-influxdb-version",
        HeaderValue::from_static(concat!("pulseboard-", env!("CARGO_PKG_VERSION"))),
    );
    resp
}

/// The credential wherever InfluxDB and Prometheus clients send it.
fn credential(parts: &Parts, pairs: &[(String, String)]) -> Option<String> {
    if let Some(t) = super::bearer(parts) {
        return Some(t.to_owned());
    }
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|user_pass| user_pass.split_once(':').map(|(_, p)| p.to_owned()));
    basic.or_else(|| pairs.iter().find(|(k, _)| k == "p").map(|(_, v)| v.clone()))
}

#[derive(Clone, Copy)]
enum Influx {
    V1,
    V2,
}

/// An error in the InfluxDB client's shape.
struct InfluxError(Influx, ApiError);

impl IntoResponse for InfluxError {
    fn into_response(self) -> Response {
        let err = &self.1 .0;
        let message = err.to_string();
        let body = match self.0 {
            Influx::V1 => json!({"error": message}),
            Influx::V2 => json!({"code": influx_code(err), "message": message}),
        };
        error_response(err, body)
    }
}

/// InfluxDB 2.x's error codes for our statuses.
fn influx_code(err: &Error) -> &'static str {
    match err.status_code() {
        400 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        413 => "request too large",
        429 => "too many requests",
        503 => "unavailable",
        _ => "internal error",
    }
}

pub async fn influx_v1_write(State(state): State<Shared>, req: Request) -> Response {
    influx_write(state, req, Influx::V1).await
}

pub async fn influx_v2_write(State(state): State<Shared>, req: Request) -> Response {
    influx_write(state, req, Influx::V2).await
}

async fn influx_write(state: Shared, req: Request, flavor: Influx) -> Response {
    let started = Instant::now();
    let result = async {
        let (mut parts, body) = req.into_parts();
        let pairs = query_pairs(&state, &mut parts).await?;
        authorize(&state, credential(&parts, &pairs).as_deref()).await?;
        let mut ignored = 0;
        write_lines(&state, &parts, body, &pairs, &mut ignored).await
    }
    .await;
    state
        .telemetry
        .record_ingest(Protocol::Line, &result, started.elapsed());
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => InfluxError(flavor, e).into_response(),
    }
}

/// `POST /api/v1/prom/write`: Prometheus remote write 1.0. Prometheus retries a request after
/// a 5xx or 429 and sends no idempotency key; an `Idempotency-Key` header (a proxy may add
/// one) is honoured. No key is made up from the body: keys are remembered for a day per shard,
/// and at remote write's request rates that memory would grow without a useful bound.
pub async fn prom_write(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut partial = None;
    let result = async {
        let (mut parts, body) = req.into_parts();
        let pairs = query_pairs(&state, &mut parts).await?;
        authorize(&state, credential(&parts, &pairs).as_deref()).await?;
        let limit = state.config.ingest.max_body_bytes;
        let raw = read_body(body, limit).await?;
        // Remote write bodies are compressed: the limit applies to what they inflate to, too.
        let batch =
            protocol::prom::decode_write(&raw, limit, &state.limits()).map_err(|e| match e {
                protocol::prom::PromError::TooLarge { limit, .. } => Error::TooLarge { limit },
                other => Error::BadRequest(other.to_string()),
            })?;
        if batch.rejected_series > 0 {
            partial = Some(format!(
                "rejected {} series (written: every other sample): {}",
                batch.rejected_series,
                batch.rejections.join("; ")
            ));
        }
        let key = idempotency_key(&parts)?;
        let n = state
            .engine
            .write_idempotent(batch.points, crate::now_ms(), key.as_deref())
            .await?;
        let t = &state.telemetry;
        t.record_skipped(Skipped::NonFiniteSample, batch.ignored_samples);
        t.record_skipped(Skipped::Histogram, batch.ignored_histograms);
        Ok(n)
    }
    .await;
    state
        .telemetry
        .record_ingest(Protocol::Prom, &result, started.elapsed());
    result?;
    match partial {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(reason) => Err(Error::BadRequest(reason).into()),
    }
}
