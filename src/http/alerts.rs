//! Alert rules (SPEC §3), their current states and their history.

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, read_body, ApiResult, Auth, Shared};
use crate::error::Error;
use crate::meta::{rule_view, Action, AlertSpec};

const RULE_BODY: usize = 256 * 1024;

/// A rule body, optionally with the version it was edited from.
#[derive(Deserialize)]
struct RuleBody {
    #[serde(flatten)]
    spec: Value,
    #[serde(default)]
    version: Option<u64>,
}

fn parse_rule(bytes: &[u8]) -> Result<(AlertSpec, Option<u64>), Error> {
    let body: RuleBody = json_body(bytes)?;
    let mut spec = body.spec;
    for server_side in ["id", "owner_user_id", "created_ms", "updated_ms", "states"] {
        if let Some(o) = spec.as_object_mut() {
            o.remove(server_side);
        }
    }
    let spec: AlertSpec =
        serde_json::from_value(spec).map_err(|e| Error::BadRequest(format!("body: {e}")))?;
    Ok((spec, body.version))
}

/// Rules with the current state of each of their groups.
pub async fn list(State(state): State<Shared>, Auth(p): Auth) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let states = state.meta.alert_states()?;
    let rules: Vec<Value> = state
        .meta
        .list_alert_rules()?
        .iter()
        .map(|r| {
            let mut v = rule_view(r);
            v["states"] = json!(states
                .iter()
                .filter(|s| s.rule_id == r.id)
                .collect::<Vec<_>>());
            v
        })
        .collect();
    Ok(Json(json!({"alerts": rules})))
}

pub async fn create(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (spec, _) = parse_rule(&read_body(req.into_body(), RULE_BODY).await?)?;
    let rule = state
        .meta
        .put_alert_rule(&p, None, spec, None, crate::now_ms())
        .await?;
    state.alerts.reload();
    Ok((StatusCode::CREATED, Json(rule)))
}

pub async fn update(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (spec, version) = parse_rule(&read_body(req.into_body(), RULE_BODY).await?)?;
    let rule = state
        .meta
        .put_alert_rule(&p, Some(id), spec, version, crate::now_ms())
        .await?;
    state.alerts.reload();
    Ok(Json(rule))
}

pub async fn delete(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
) -> ApiResult<StatusCode> {
    state.meta.delete_alert_rule(&p, id).await?;
    state.alerts.reload();
    Ok(StatusCode::NO_CONTENT)
}

fn limit_and_rule(q: Option<&str>) -> Result<(u32, Option<u64>), Error> {
    let mut limit = 100;
    let mut rule = None;
    for (k, v) in crate::query::pairs(q) {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| Error::BadRequest(format!("limit: {v:?} is not a number")))?
            }
            "rule_id" => {
                rule = Some(
                    v.parse()
                        .map_err(|_| Error::BadRequest(format!("rule_id: {v:?} is not an id")))?,
                )
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown query parameter `{other}`; known: limit, rule_id"
                )))
            }
        }
    }
    Ok((limit, rule))
}

/// `GET /api/v1/alerts/events?rule_id=&limit=`: fired/resolved history, newest first.
pub async fn events(
    State(state): State<Shared>,
    Auth(p): Auth,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let (limit, rule) = limit_and_rule(q.as_deref())?;
    Ok(Json(
        json!({"events": state.meta.alert_events(rule, limit)?}),
    ))
}

/// Notifications that could not be delivered.
pub async fn dead_letters(
    State(state): State<Shared>,
    Auth(p): Auth,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    p.require(Action::Read)?;
    let (limit, _) = limit_and_rule(q.as_deref())?;
    Ok(Json(
        json!({"dead_letters": state.meta.dead_letters(limit)?}),
    ))
}
