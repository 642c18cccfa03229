//! `/healthz` (the process answers), `/readyz` (storage recovered and accepting writes),
//! `/metrics` (Prometheus text format), `/api/v1/cluster` (members and shard placement).

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::{json_body, read_body, ApiResult, Auth, Shared};
use crate::error::Error;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<Shared>) -> impl IntoResponse {
    // The router is built only after recovery, so answering at all means recovered; a log
    // that stopped after an I/O error makes the node unready.
    if state.engine.log_stats().errors > 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "write-ahead log failed");
    }
    (StatusCode::OK, "ready")
}

pub async fn prometheus(State(state): State<Shared>) -> impl IntoResponse {
    let stats = state.engine.stats().await.ok();
    let mut body = state.telemetry.render(&state.engine, stats.as_ref());
    crate::telemetry::render_live(&mut body, &state.live);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// `GET /api/v1/cluster`: any signed-in user may look.
pub async fn cluster(
    State(state): State<Shared>,
    _auth: Auth,
) -> Json<crate::membership::ClusterView> {
    Json(state.membership.view().await)
}

/// `POST /api/v1/cluster/nodes` (admin) with `{"quic_addr": "host:port"}`: the node there,
/// started with `serve --await-join` and this cluster's secret, joins through this node and
/// takes its share of the shards. `201` with the node as `GET /api/v1/cluster` lists it once
/// it is a member; `202` if it is still joining after 60 s.
pub async fn add_node(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    p.require(crate::meta::Action::ManageCluster)?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddNode {
        quic_addr: String,
    }
    let body: AddNode = json_body(&read_body(req.into_body(), 4096).await?)?;
    let addr: std::net::SocketAddr = body.quic_addr.parse().map_err(|e| {
        Error::BadRequest(format!(
            "body: quic_addr {:?} is not an IP address and port: {e}",
            body.quic_addr
        ))
    })?;
    match state
        .membership
        .invite(addr, std::time::Duration::from_secs(60))
        .await?
    {
        Some(node) => Ok((StatusCode::CREATED, Json(serde_json::json!(node)))),
        None => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"quic_addr": addr.to_string(), "status": "joining"})),
        )),
    }
}

/// `DELETE /api/v1/cluster/nodes/{id}` (admin): the node stops being a replica of every group
/// (a learner takes its vote where there is one); then it can be stopped. Answers the groups
/// changed.
pub async fn remove_node(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
) -> ApiResult<Json<serde_json::Value>> {
    p.require(crate::meta::Action::ManageCluster)?;
    let groups = state.membership.remove_node(id).await?;
    Ok(Json(
        serde_json::json!({"removed": id, "groups": groups.groups.len()}),
    ))
}
