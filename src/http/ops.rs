//! `/healthz` (the process answers), `/readyz` (storage recovered and accepting writes),
//! `/metrics` (Prometheus text format), `/api/v1/cluster` (members and shard placement).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::{Auth, Shared};

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
