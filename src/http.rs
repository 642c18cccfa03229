//! The HTTP API (axum). Handlers only translate: HTTP ↔ calls into `engine`, `query`, `meta`.
//! Errors become `{"error": kind, "detail": {...}}` through [`Error::status_code`] in one
//! place ([`ApiError`]'s `IntoResponse`).

mod alerts;
mod auth;
mod compat;
mod dashboards;
mod ingest;
mod ops;
mod query;
mod ui;
mod ws;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::Error;
use crate::meta::{MetaService, Principal};
use crate::telemetry::Telemetry;

/// Shared by every handler.
pub struct AppState {
    pub engine: Engine,
    pub meta: MetaService,
    pub live: crate::live::LiveHub,
    pub alerts: crate::alert::evaluator::AlertHandle,
    pub telemetry: Telemetry,
    pub membership: crate::membership::Membership,
    pub config: Config,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/ingest", post(ingest::ingest_json))
        .route("/write", post(ingest::write_line_protocol))
        .route("/prom/write", post(compat::prom_write))
        .route("/metrics", get(query::list_metrics))
        .route("/metrics/{metric}/dimensions", get(query::dimensions))
        .route("/metrics/{metric}/data", get(query::data))
        .route("/metrics/{metric}/window", get(query::window))
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/users", get(auth::list_users).post(auth::create_user))
        .route(
            "/users/{id}",
            patch(auth::update_user).delete(auth::delete_user),
        )
        .route(
            "/api-keys",
            get(auth::list_api_keys).post(auth::create_api_key),
        )
        .route(
            "/api-keys/{id}",
            axum::routing::delete(auth::delete_api_key),
        )
        .route(
            "/dashboards",
            get(dashboards::list).post(dashboards::create),
        )
        .route("/dashboards/import", post(dashboards::import))
        .route(
            "/dashboards/{id}",
            get(dashboards::get_one)
                .put(dashboards::update)
                .delete(dashboards::delete),
        )
        .route("/dashboards/{id}/export", get(dashboards::export))
        .route(
            "/dashboards/{id}/visualizations",
            get(dashboards::list_panels).post(dashboards::create_panel),
        )
        .route(
            "/dashboards/{id}/visualizations/{vid}",
            put(dashboards::update_panel).delete(dashboards::delete_panel),
        )
        .route("/alerts", get(alerts::list).post(alerts::create))
        .route("/alerts/events", get(alerts::events))
        .route("/alerts/dead-letters", get(alerts::dead_letters))
        .route("/alerts/{id}", put(alerts::update).delete(alerts::delete))
        .route("/ws", get(ws::upgrade))
        .route("/cluster", get(ops::cluster))
        .route("/cluster/nodes", post(ops::add_node))
        .route("/cluster/nodes/{id}", delete(ops::remove_node))
        .route("/openapi.json", get(openapi))
        .fallback(not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(ui::index))
        .route("/assets/{*path}", get(ui::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::prometheus))
        // Where InfluxDB 1.x and 2.x clients (Telegraf, the official libraries) write.
        .route("/write", post(compat::influx_v1_write))
        .route("/api/v2/write", post(compat::influx_v2_write))
        .route("/ping", get(compat::ping).head(compat::ping))
        .fallback(not_found)
        // Bodies are read with our own limit so the 413 has our JSON shape.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The OpenAPI document of this API; `tests/it/openapi.rs` keeps it in step with the routes.
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("http/openapi.json"),
    )
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound {
        what: "route".into(),
    })
}

/// An [`Error`] on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.0.kind(), "detail": self.0.detail()});
        error_response(&self.0, body)
    }
}

/// `err`'s status and headers (`Retry-After`, `WWW-Authenticate`) with `body`: our error
/// shape, or another API's (InfluxDB clients read theirs).
pub fn error_response(err: &Error, body: serde_json::Value) -> Response {
    let status =
        StatusCode::from_u16(err.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(cause = %err, "request failed");
    }
    let mut resp = (status, Json(body)).into_response();
    if let Some(secs) = err.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pulseboard\""),
        );
    }
    resp
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The bearer credential of a request, if any: `Authorization: Bearer <t>` (or `Token <t>`,
/// as InfluxDB clients send it).
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim())
}

/// An authenticated caller; rejects with 401 naming why.
pub struct Auth(pub Principal);

impl FromRequestParts<Shared> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = bearer(parts).unwrap_or("");
        let principal = state.meta.authenticate(token, crate::now_ms()).await?;
        Ok(Auth(principal))
    }
}

/// The caller if credentials were sent (rejecting bad ones with 401), `None` if none were:
/// for routes that anonymous callers may use on public things.
pub struct MaybeAuth(pub Option<Principal>);

impl FromRequestParts<Shared> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeAuth(None));
        }
        let token = bearer(parts).unwrap_or("");
        Ok(MaybeAuth(Some(
            state.meta.authenticate(token, crate::now_ms()).await?,
        )))
    }
}

/// A JSON request body; the error names what is wrong and where.
pub fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("body: {e}")))
}

/// Reads a request body up to `limit` bytes; past it, 413 with our error body.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports the length limit as a `LengthLimitError` source.
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError(Error::TooLarge { limit })
        } else {
            ApiError(Error::BadRequest(format!("reading the body failed: {e}")))
        }
    })
}
