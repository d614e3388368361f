//! Tool approval over HTTP: `GET /sessions/{id}/permissions` lists the open requests,
//! `POST /sessions/{id}/permissions/{request_id}` answers one.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiResult, resource};
use crate::actors::session::AnswerPermission;
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/sessions/{session_id}/permissions").route(web::get().to(list_permissions)))
        .service(resource("/sessions/{session_id}/permissions/{request_id}").route(web::post().to(answer_permission)));
}

#[derive(Debug, Serialize)]
struct OpenRequest {
    request_id: String,
    tool_name: String,
    tool_input: Value,
    asked_at: String,
}

async fn list_permissions(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
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

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Behavior {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    behavior: Behavior,
    /// Why, for a denial (the agent sees it).
    message: Option<String>,
    /// The tool's input as edited by the client, for an allow.
    updated_input: Option<Value>,
    /// Allow this tool for the rest of the session without asking again.
    #[serde(default)]
    always: bool,
}

async fn answer_permission(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    JsonBody(answer): JsonBody<Answer>,
) -> ApiResult {
    let (session_id, request_id) = path.into_inner();
    if answer.updated_input.as_ref().is_some_and(|v| !v.is_object()) {
        return Err(ApiError::validation("updated_input", "must be an object (the tool's input)"));
    }
    let message = AnswerPermission {
        request_id: request_id.clone(),
        allow: answer.behavior == Behavior::Allow,
        message: answer.message,
        updated_input: answer.updated_input,
        always: answer.always,
    };
    state.sessions.answer_permission(&caller, &session_id, message).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "request_id": request_id, "behavior": answer.behavior })))
}
