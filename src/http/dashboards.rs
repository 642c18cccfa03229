//! Dashboards and visualizations (SPEC §3). Reads of `is_public` dashboards need no login.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{json_body, read_body, ApiResult, Auth, MaybeAuth, Shared};
use crate::meta::{Action, DashboardDocument, DashboardInput, PanelInput};

/// Dashboard documents carry every panel's query and options.
const DASHBOARD_BODY: usize = 4 * 1024 * 1024;

/// Signed-in readers need the read permission; anonymous callers see public dashboards only.
fn reader(p: &Option<crate::meta::Principal>) -> ApiResult<()> {
    if let Some(p) = p {
        p.require(Action::Read)?;
    }
    Ok(())
}

pub async fn list(State(state): State<Shared>, MaybeAuth(p): MaybeAuth) -> ApiResult<Json<Value>> {
    reader(&p)?;
    Ok(Json(
        json!({"dashboards": state.meta.list_dashboards(p.as_ref()).await?}),
    ))
}

pub async fn create(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: DashboardInput = json_body(&read_body(req.into_body(), DASHBOARD_BODY).await?)?;
    let d = state
        .meta
        .create_dashboard(&p, body, crate::now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn get_one(
    State(state): State<Shared>,
    MaybeAuth(p): MaybeAuth,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    reader(&p)?;
    Ok(Json(state.meta.get_dashboard(p.as_ref(), id).await?))
}

pub async fn update(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body: DashboardInput = json_body(&read_body(req.into_body(), DASHBOARD_BODY).await?)?;
    Ok(Json(
        state
            .meta
            .update_dashboard(&p, id, body, crate::now_ms())
            .await?,
    ))
}

pub async fn delete(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
) -> ApiResult<StatusCode> {
    state.meta.delete_dashboard(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_panels(
    State(state): State<Shared>,
    MaybeAuth(p): MaybeAuth,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    reader(&p)?;
    Ok(Json(
        json!({"visualizations": state.meta.list_panels(p.as_ref(), id)?}),
    ))
}

pub async fn create_panel(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: PanelInput = json_body(&read_body(req.into_body(), DASHBOARD_BODY).await?)?;
    let v = state
        .meta
        .put_panel(&p, id, None, body, crate::now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn update_panel(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path((id, vid)): Path<(u64, u64)>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body: PanelInput = json_body(&read_body(req.into_body(), DASHBOARD_BODY).await?)?;
    Ok(Json(
        state
            .meta
            .put_panel(&p, id, Some(vid), body, crate::now_ms())
            .await?,
    ))
}

pub async fn delete_panel(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path((id, vid)): Path<(u64, u64)>,
) -> ApiResult<StatusCode> {
    state
        .meta
        .delete_panel(&p, id, vid, crate::now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn export(
    State(state): State<Shared>,
    MaybeAuth(p): MaybeAuth,
    Path(id): Path<u64>,
) -> ApiResult<Response> {
    reader(&p)?;
    let doc = state.meta.export_dashboard(p.as_ref(), id)?;
    let file = format!("attachment; filename=\"dashboard-{id}.json\"");
    Ok((
        [(header::CONTENT_DISPOSITION, file)],
        Json(serde_json::to_value(doc).unwrap_or(Value::Null)),
    )
        .into_response())
}

pub async fn import(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let doc: DashboardDocument = json_body(&read_body(req.into_body(), DASHBOARD_BODY).await?)?;
    let d = state
        .meta
        .import_dashboard(&p, doc, crate::now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}
