//! Tool approval over HTTP: `GET /sessions/{id}/permissions` lists the open requests,
//! `POST /sessions/{id}/permissions/{request_id}` answers one.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiResult, resource};
use crate::actors::PermissionAnswer;
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/sessions/{session_id}/permissions").route(web::get().to(list_permissions)))
        .service(resource("/sessions/{session_id}/permissions/{request_id}").route(web::post().to(answer_permission)));
}

/// A tool use waiting for an answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OpenRequest {
    request_id: String,
    tool_name: String,
    #[schema(value_type = Object)]
    tool_input: Value,
    /// RFC 3339, UTC.
    asked_at: String,
}

/// The session's open permission requests (also sent as `permission_request` frames).
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/permissions", tag = "permissions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, description = "Empty when nothing waits (or the session is not live)", body = Vec<OpenRequest>),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn list_permissions(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let open = state.sessions.permissions(&caller, &path).await?;
    let open: Vec<OpenRequest> = open
        .into_iter()
        .map(|(request_id, p)| OpenRequest {
            request_id,
            tool_name: p.tool_name,
            tool_input: p.tool_input,
            asked_at: p.asked_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(open))
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, Clone, Copy, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Behavior {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Answer {
    behavior: Behavior,
    /// Why, for a denial (the agent sees it).
    message: Option<String>,
    /// The tool's input as edited by the client, for an allow.
    #[schema(value_type = Option<Object>)]
    updated_input: Option<Value>,
    /// Allow this tool for the rest of the session without asking again.
    #[serde(default)]
    always: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Answered {
    request_id: String,
    behavior: Behavior,
}

/// Allow or deny one tool use; the turn goes on.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/permissions/{request_id}", tag = "permissions",
    params(("session_id" = String, Path), ("request_id" = String, Path)),
    request_body = Answer,
    responses(
        (status = 200, body = Answered),
        (status = 404, description = "`session_not_found`, or `not_found`: no such open request (answered, timed out or never asked)", body = ErrorResponse),
    ),
)]
pub(super) async fn answer_permission(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    JsonBody(answer): JsonBody<Answer>,
) -> ApiResult {
    let (session_id, request_id) = path.into_inner();
    if answer.updated_input.as_ref().is_some_and(|v| !v.is_object()) {
        return Err(ApiError::validation("updated_input", "must be an object (the tool's input)"));
    }
    let message = PermissionAnswer {
        request_id: request_id.clone(),
        allow: answer.behavior == Behavior::Allow,
        message: answer.message,
        updated_input: answer.updated_input,
        always: answer.always,
    };
    state.sessions.answer_permission(&caller, &session_id, message).await?;
    Ok(HttpResponse::Ok().json(Answered { request_id, behavior: answer.behavior }))
}
