//! Login/logout, users (admin) and API keys.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bearer, json_body, ApiResult, Auth, Shared};
use crate::meta::{Action, Role, Scope};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// Small JSON bodies (login, users, keys).
const SMALL_BODY: usize = 64 * 1024;

pub async fn login(State(state): State<Shared>, req: Request) -> ApiResult<Json<Value>> {
    let bytes = super::read_body(req.into_body(), SMALL_BODY).await?;
    let body: LoginBody = json_body(&bytes)?;
    let session = state
        .meta
        .login(&body.username, &body.password, crate::now_ms())
        .await?;
    Ok(Json(json!({
        "token": session.token,
        "user_id": session.user_id,
        "role": session.role,
        "expires": session.expires_ms,
    })))
}

pub async fn logout(State(state): State<Shared>, req: Request) -> ApiResult<StatusCode> {
    let (parts, _) = req.into_parts();
    let token = bearer(&parts).unwrap_or("");
    state.meta.authenticate(token, crate::now_ms()).await?;
    state.meta.logout(token).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_users(State(state): State<Shared>, Auth(p): Auth) -> ApiResult<Json<Value>> {
    p.require(Action::ManageUsers)?;
    Ok(Json(json!({"users": state.meta.list_users().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    password: String,
    #[serde(default = "default_role")]
    role: Role,
}

fn default_role() -> Role {
    Role::Viewer
}

pub async fn create_user(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.require(Action::ManageUsers)?;
    let bytes = super::read_body(req.into_body(), SMALL_BODY).await?;
    let body: NewUser = json_body(&bytes)?;
    let user = state
        .meta
        .create_user(&body.username, &body.password, body.role, crate::now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    password: Option<String>,
    role: Option<Role>,
    disabled: Option<bool>,
}

pub async fn update_user(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
    req: Request,
) -> ApiResult<Json<Value>> {
    p.require(Action::ManageUsers)?;
    let bytes = super::read_body(req.into_body(), SMALL_BODY).await?;
    let body: UserPatch = json_body(&bytes)?;
    let user = state
        .meta
        .update_user(id, body.password.as_deref(), body.role, body.disabled)
        .await?;
    Ok(Json(json!(user)))
}

pub async fn delete_user(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
) -> ApiResult<StatusCode> {
    p.require(Action::ManageUsers)?;
    state.meta.delete_user(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    scopes: Vec<Scope>,
}

pub async fn create_api_key(
    State(state): State<Shared>,
    Auth(p): Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.require(Action::ManageKeys)?;
    let bytes = super::read_body(req.into_body(), SMALL_BODY).await?;
    let body: NewKey = json_body(&bytes)?;
    let (view, key) = state
        .meta
        .create_api_key(&p, &body.name, &body.scopes, crate::now_ms())
        .await?;
    let mut out = json!(view);
    out["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list_api_keys(State(state): State<Shared>, Auth(p): Auth) -> ApiResult<Json<Value>> {
    p.require(Action::ManageKeys)?;
    Ok(Json(
        json!({"api_keys": state.meta.list_api_keys(&p).await?}),
    ))
}

pub async fn delete_api_key(
    State(state): State<Shared>,
    Auth(p): Auth,
    Path(id): Path<u64>,
) -> ApiResult<StatusCode> {
    p.require(Action::ManageKeys)?;
    state.meta.delete_api_key(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
