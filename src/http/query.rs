//! Query routes: metric list, dimension drill-down, range data, sliding window.

use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiResult, Auth, Shared};
use crate::meta::Action;
use crate::query::{DataRequest, WindowRequest};

/// Values listed per dimension key in the drill-down answer.
const TOP_VALUES: usize = 20;

pub async fn list_metrics(State(state): State<Shared>, Auth(p): Auth) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let mut metrics: Vec<(String, u64)> = state.engine.metrics().await?.into_iter().collect();
    metrics.sort();
    let list: Vec<Value> = metrics
        .into_iter()
        .map(|(name, series)| json!({"name": name, "series": series}))
        .collect();
    Ok(Json(json!({"metrics": list})))
}

pub async fn dimensions(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(metric): Path<String>,
) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let dims = state.engine.dimensions(&metric).await?;
    let mut keys: Vec<Value> = dims
        .into_iter()
        .map(|(key, values)| {
            let distinct = values.len();
            let mut values: Vec<(String, u64)> = values.into_iter().collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            values.truncate(TOP_VALUES);
            let top: Vec<Value> = values
                .into_iter()
                .map(|(v, n)| json!({"value": v, "series": n}))
                .collect();
            json!({"key": key, "distinct_values": distinct, "top_values": top})
        })
        .collect();
    keys.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    Ok(Json(json!({"metric": metric, "dimensions": keys})))
}

pub async fn data(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(metric): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    p.require(Action::Read)?;
    let started = Instant::now();
    let now = crate::now_ms();
    let req = DataRequest::parse(&metric, q.as_deref(), now)?;
    let plan = req.plan(state.engine.layout(), now)?;
    let partial = state.engine.query(plan).await?;
    let out = req.render(partial);
    state.telemetry.record_query(started.elapsed());
    if req.csv {
        let body = req.render_csv(&out);
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    Ok(Json(out).into_response())
}

pub async fn window(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(metric): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let started = Instant::now();
    let req = WindowRequest::parse(&metric, q.as_deref())?;
    let plan = req.plan(state.engine.layout(), crate::now_ms())?;
    let partial = state.engine.query(plan.clone()).await?;
    let out = req.render(&plan, partial);
    state.telemetry.record_query(started.elapsed());
    Ok(Json(serde_json::to_value(out).unwrap_or(Value::Null)))
}
