//! `POST /api/v1/ingest` (JSON) and `POST /api/v1/write` (InfluxDB line protocol); the
//! line-protocol path the InfluxDB-compatible routes (`compat`) share.

use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::Json;
use serde_json::{json, Value};

use super::{bearer, read_body, ApiError, ApiResult, Shared};
use crate::error::Error;
use crate::meta::{Action, Principal};
use crate::telemetry::{Protocol, Skipped};

/// Authenticates an ingest request: the bearer header, or else the seed's
/// `authentication_token` body field (JSON only).
pub(super) async fn authorize(state: &Shared, token: Option<&str>) -> ApiResult<Principal> {
    let principal = state
        .meta
        .authenticate(token.unwrap_or(""), crate::now_ms())
        .await?;
    principal.require(Action::Ingest)?;
    Ok(principal)
}

/// The `Idempotency-Key` header, if any (SPEC §3; JSON bodies may carry `batch_id` instead).
pub(super) fn idempotency_key(parts: &Parts) -> Result<Option<String>, Error> {
    match parts.headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| Error::BadRequest("Idempotency-Key: must be visible ASCII".into())),
    }
}

pub async fn ingest_json(State(state): State<Shared>, req: Request) -> ApiResult<Json<Value>> {
    let started = Instant::now();
    let result = ingest_json_inner(&state, req).await;
    state
        .telemetry
        .record_ingest(Protocol::Json, &result, started.elapsed());
    result.map(|n| Json(json!({"accepted": n})))
}

async fn ingest_json_inner(state: &Shared, req: Request) -> Result<usize, ApiError> {
    let (parts, body) = req.into_parts();
    let header_token = bearer(&parts).map(str::to_owned);
    // Refuse early when the header alone already fails, before reading a large body.
    if let Some(t) = &header_token {
        authorize(state, Some(t)).await?;
    }
    let bytes = read_body(body, state.config.ingest.max_body_bytes).await?;
    let limits = state.limits();
    let request = match protocol::json::parse_ingest(&bytes, &limits) {
        Ok(r) => r,
        Err(e) => {
            // Who is asking comes before what is wrong with the body.
            if header_token.is_none() {
                let token = protocol::json::authentication_token(&bytes);
                authorize(state, token.as_deref()).await?;
            }
            return Err(Error::from(e).into());
        }
    };
    if header_token.is_none() {
        authorize(state, request.authentication_token.as_deref()).await?;
    }
    let key = idempotency_key(&parts)?.or(request.batch_id);
    Ok(state
        .engine
        .write_idempotent(request.points, crate::now_ms(), key.as_deref())
        .await?)
}

pub async fn write_line_protocol(
    State(state): State<Shared>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let started = Instant::now();
    let mut ignored = 0;
    let result = write_lines_inner(&state, req, &mut ignored).await;
    state
        .telemetry
        .record_ingest(Protocol::Line, &result, started.elapsed());
    result.map(|n| Json(json!({"accepted": n, "ignored_string_fields": ignored})))
}

async fn write_lines_inner(
    state: &Shared,
    req: Request,
    ignored: &mut usize,
) -> Result<usize, ApiError> {
    let (mut parts, body) = req.into_parts();
    authorize(state, bearer(&parts)).await?;
    let pairs = query_pairs(state, &mut parts).await?;
    write_lines(state, &parts, body, &pairs, ignored).await
}

/// The request's query string as pairs.
pub(super) async fn query_pairs(
    state: &Shared,
    parts: &mut Parts,
) -> Result<Vec<(String, String)>, ApiError> {
    let query = axum::extract::RawQuery::from_request_parts(parts, state)
        .await
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    Ok(crate::query::pairs(query.0.as_deref()))
}

/// Reads, parses and writes a line-protocol body (the caller has authorized it): `/api/v1/write`
/// and the InfluxDB paths. `precision` from the query (default ns), the body gzip-encoded or not.
pub(super) async fn write_lines(
    state: &Shared,
    parts: &Parts,
    body: axum::body::Body,
    pairs: &[(String, String)],
    ignored: &mut usize,
) -> Result<usize, ApiError> {
    let precision = match pairs.iter().find(|(k, _)| k == "precision") {
        Some((_, p)) => p.parse().map_err(|e: String| Error::BadQuery {
            param: "precision",
            reason: e,
        })?,
        None => protocol::line::Precision::default(),
    };
    let bytes = read_encoded_body(parts, body, state.config.ingest.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::BadRequest(format!(
            "line protocol must be UTF-8; invalid byte at offset {}",
            e.valid_up_to()
        ))
    })?;
    let now = crate::now_ms();
    let batch =
        protocol::line::parse_lines(text, precision, now, &state.limits()).map_err(Error::from)?;
    *ignored = batch.ignored_string_fields;
    let key = idempotency_key(parts)?;
    let n = state
        .engine
        .write_idempotent(batch.points, now, key.as_deref())
        .await?;
    state
        .telemetry
        .record_skipped(Skipped::StringField, batch.ignored_string_fields);
    Ok(n)
}

/// The body, gunzipped if `Content-Encoding: gzip` (as Telegraf sends by default); `limit`
/// bounds both the bytes received and the bytes they inflate to. A plain body is returned as
/// read (no copy).
pub(super) async fn read_encoded_body(
    parts: &Parts,
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let raw = read_body(body, limit).await?;
    let encoding = match parts.headers.get(axum::http::header::CONTENT_ENCODING) {
        None => return Ok(raw),
        Some(v) => v.to_str().unwrap_or("").trim().to_ascii_lowercase(),
    };
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            use std::io::Read;
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Error::BadRequest(format!("body is not valid gzip: {e}")))?;
            if out.len() > limit {
                return Err(Error::TooLarge { limit }.into());
            }
            Ok(out.into())
        }
        other => Err(Error::BadRequest(format!(
            "Content-Encoding {other:?} is not supported; send gzip or no encoding"
        ))
        .into()),
    }
}

impl super::AppState {
    pub fn limits(&self) -> protocol::Limits {
        protocol::Limits {
            max_points: self.config.ingest.max_points_per_request,
            ..protocol::Limits::default()
        }
    }
}
