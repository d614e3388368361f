//! `/api/v1/users/{user_id}/credentials`: a user's own provider credentials (the admin, or
//! the user for themselves). Values go in and never come out.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::auth::credentials::validated;
use crate::clock;
use crate::error::{ApiError, ErrorResponse};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/users/{user_id}/credentials")
            .route(web::put().to(put_credentials))
            .route(web::get().to(get_credentials))
            .route(web::delete().to(delete_credentials)),
    );
}

/// The variables a user's CLI processes get in place of the service's. Replaces what the
/// user had; applies from their next CLI start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutCredentials {
    /// Sent as `ANTHROPIC_API_KEY`.
    anthropic_api_key: Option<String>,
    /// Sent as `ANTHROPIC_BASE_URL` (a gateway); an http(s) URL.
    anthropic_base_url: Option<String>,
    /// Provider variables only: `ANTHROPIC_*`, `AWS_*`, `CLAUDE_CODE_USE_BEDROCK`,
    /// `CLAUDE_CODE_USE_VERTEX`, `CLOUD_ML_REGION`, `ANTHROPIC_VERTEX_PROJECT_ID`,
    /// `GOOGLE_APPLICATION_CREDENTIALS`, `VERTEX_REGION_*`.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Which variables are set, never their values.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CredentialsInfo {
    user_id: String,
    /// False when the user's CLIs run on the service's credentials.
    set: bool,
    /// The names of the variables set.
    names: Vec<String>,
    /// RFC 3339, UTC; null when none are set.
    updated_at: Option<String>,
}

/// The user the path names, if the caller may manage their credentials: the admin for any
/// existing user, a user for themselves only.
async fn target_user(state: &AppState, caller: &Caller, user_id: String) -> Result<String, ApiError> {
    match caller {
        Caller::User { user_id: own, .. } if *own == user_id => Ok(user_id),
        Caller::User { .. } => Err(ApiError::Forbidden("A user key can only manage its own user's credentials".into())),
        Caller::Admin => match state.storage.get_user(&user_id).await? {
            Some(_) => Ok(user_id),
            None => Err(ApiError::UserNotFound),
        },
        Caller::Open => caller.require_admin().map(|()| user_id),
    }
}

async fn info(state: &AppState, user_id: String) -> ApiResult {
    let info = match state.credentials.names(&user_id).await? {
        Some((names, at)) => CredentialsInfo { user_id, set: true, names, updated_at: Some(clock::rfc3339(at)) },
        None => CredentialsInfo { user_id, set: false, names: Vec::new(), updated_at: None },
    };
    Ok(HttpResponse::Ok().json(info))
}

/// Set a user's own provider credentials (the admin, or the user for themselves).
#[utoipa::path(
    put, path = "/api/v1/users/{user_id}/credentials", tag = "users",
    params(("user_id" = String, Path)),
    request_body = PutCredentials,
    responses(
        (status = 200, body = CredentialsInfo),
        (status = 403, description = "`forbidden`: another user's", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a variable not allowed, an empty value", body = ErrorResponse),
    ),
)]
pub(super) async fn put_credentials(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PutCredentials>,
) -> ApiResult {
    let user_id = target_user(&state, &caller, path.into_inner()).await?;
    let vars = validated(body.anthropic_api_key, body.anthropic_base_url, body.env)?;
    state.credentials.store(&user_id, &vars, clock::now_ms()).await?;
    log::info!("user {user_id}: credentials set ({})", vars.keys().cloned().collect::<Vec<_>>().join(", "));
    info(&state, user_id).await
}

/// Which of a user's own credentials are set (names only).
#[utoipa::path(
    get, path = "/api/v1/users/{user_id}/credentials", tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, body = CredentialsInfo),
        (status = 403, description = "`forbidden`: another user's", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn get_credentials(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let user_id = target_user(&state, &caller, path.into_inner()).await?;
    info(&state, user_id).await
}

/// Remove a user's own credentials: their next CLI runs on the service's.
#[utoipa::path(
    delete, path = "/api/v1/users/{user_id}/credentials", tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 204, description = "Removed (or there were none)"),
        (status = 403, description = "`forbidden`: another user's", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_credentials(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult {
    let user_id = target_user(&state, &caller, path.into_inner()).await?;
    if state.storage.delete_credentials(&user_id).await? {
        log::info!("user {user_id}: credentials removed");
    }
    Ok(HttpResponse::NoContent().finish())
}
