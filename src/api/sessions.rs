//! `/api/v1/sessions`: create, list, get, close (or purge), resume.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::domain::{AgentInfo, ContextUsage, SessionStatus};
use crate::error::ErrorResponse;
use crate::sessions::{CreateSession, ForkSession, ListQuery, RewindSession, Rewound, Session, SessionSettings};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/sessions").route(web::post().to(create_session)).route(web::get().to(list_sessions)))
        .service(
            resource("/sessions/{session_id}")
                .route(web::get().to(get_session))
                .route(web::patch().to(update_session))
                .route(web::delete().to(delete_session)),
        )
        .service(resource("/sessions/{session_id}/resume").route(web::post().to(resume_session)))
        .service(resource("/sessions/{session_id}/agent").route(web::get().to(get_agent)))
        .service(resource("/sessions/{session_id}/context").route(web::get().to(get_context)))
        .service(resource("/sessions/{session_id}/fork").route(web::post().to(fork_session)))
        .service(resource("/sessions/{session_id}/rewind").route(web::post().to(rewind_session)));
}

/// Create a session: its directory and a started CLI, without spending a model turn.
#[utoipa::path(
    post, path = "/api/v1/sessions", tag = "sessions",
    request_body(content = CreateSession, description = "The service also takes an empty body, as `{}`"),
    responses(
        (status = 201, description = "Created; the CLI is starting or ready", body = Session),
        (status = 400, description = "`invalid_path`: `subdir` is absolute, has `..` or leads outside", body = ErrorResponse),
        (status = 403, description = "`forbidden`: a user key naming another user, or an option `session.overridable` does not allow", body = ErrorResponse),
        (status = 404, description = "`user_not_found`: the admin named a user that does not exist", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded`: too many live sessions (per user or in all)", body = ErrorResponse),
        (status = 502, description = "`cli_failed`: the CLI could not be started", body = ErrorResponse),
        (status = 503, description = "`memory_pressure` or `storage_unavailable`", body = ErrorResponse),
    ),
)]
pub(super) async fn create_session(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateSession>,
) -> ApiResult {
    let session = state.sessions.create(&caller, body).await?;
    Ok(HttpResponse::Created().json(session))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only this user's sessions (admin key; a user key always sees only its own).
    user_id: Option<String>,
    /// Whole sessions instead of ids.
    #[serde(default)]
    detail: bool,
    /// Only sessions in this status.
    #[param(value_type = Option<SessionStatus>)]
    status: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A session id (the seed's answer), or with `detail=true` the whole session.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum SessionListItem {
    Id(String),
    Session(Box<Session>),
}

/// List the caller's sessions.
#[utoipa::path(
    get, path = "/api/v1/sessions", tag = "sessions",
    params(ListParams),
    responses(
        (status = 200, description = "Ids, or sessions with `detail=true`, newest first", body = Vec<SessionListItem>),
        (status = 403, description = "`forbidden`: a user key asking for another user's sessions", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a bad `status`, `limit` or `offset`", body = ErrorResponse),
    ),
)]
pub(super) async fn list_sessions(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<ListParams>,
) -> ApiResult {
    let params = params.into_inner();
    let query =
        ListQuery { user_id: params.user_id, status: params.status, limit: params.limit, offset: params.offset };
    let rows = state.sessions.list(&caller, query).await?;
    let list: Vec<SessionListItem> = if params.detail {
        rows.into_iter().map(|r| SessionListItem::Session(Box::new(Session::from(r)))).collect()
    } else {
        rows.into_iter().map(|r| SessionListItem::Id(r.session_id)).collect()
    };
    Ok(HttpResponse::Ok().json(list))
}

/// One session.
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = Session),
        (status = 404, description = "`session_not_found` (also for another user's session)", body = ErrorResponse),
        (status = 410, description = "`session_expired`: its TTL passed", body = ErrorResponse),
    ),
)]
pub(super) async fn get_session(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let row = state.sessions.get(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(Session::from(row)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteParams {
    /// Also delete its row, history, events and transcript (it cannot be resumed).
    #[serde(default)]
    purge: bool,
}

/// Close a session: its CLI stops; `resume` reopens it later with its conversation.
#[utoipa::path(
    delete, path = "/api/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path), DeleteParams),
    responses(
        (status = 204, description = "Closed (or purged)"),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<DeleteParams>,
) -> ApiResult {
    state.sessions.close(&caller, &path, params.purge).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Reopen a closed, idle or failed session: the CLI starts again with `--resume`.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/resume", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, description = "Reopened (or already live)", body = Session),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 410, description = "`session_expired`", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded`", body = ErrorResponse),
        (status = 502, description = "`cli_failed`", body = ErrorResponse),
        (status = 503, description = "`memory_pressure` or `storage_unavailable`", body = ErrorResponse),
    ),
)]
pub(super) async fn resume_session(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let row = state.sessions.resume(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(Session::from(row)))
}

/// What the agent can use: tools, MCP servers, skills, model, CLI version (from the CLI's
/// `system/init` of its last turn).
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/agent", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = AgentInfo),
        (status = 404, description = "`session_not_found`, or `not_found`: the CLI has not reported yet (it does at the start of each turn)", body = ErrorResponse),
    ),
)]
pub(super) async fn get_agent(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let info = state.sessions.agent_info(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Change the session's model or permission mode: at once in its running CLI (between turns),
/// and for every later start of it (respawn, resume). A session with no running CLI only
/// stores them.
#[utoipa::path(
    patch, path = "/api/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path)),
    request_body = SessionSettings,
    responses(
        (status = 200, description = "Applied; the session as `GET` shows it", body = Session),
        (status = 403, description = "`forbidden`: an option `session.overridable` does not allow", body = ErrorResponse),
        (status = 404, description = "`session_not_found` (also for another user's session)", body = ErrorResponse),
        (status = 410, description = "`session_expired`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: an unknown option, a bad value, or one a session cannot change; `permission_mode_unavailable`: the running CLI was not started allowing `bypassPermissions`", body = ErrorResponse),
        (status = 429, description = "`session_busy`: a turn is running (change it after the turn)", body = ErrorResponse),
        (status = 502, description = "`cli_failed`: the CLI refused or did not answer", body = ErrorResponse),
    ),
)]
pub(super) async fn update_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult {
    let row = state.sessions.update_settings(&caller, &path, body).await?;
    Ok(HttpResponse::Ok().json(Session::from(row)))
}

/// How full the session's context window is (the CLI's own count: tokens used, the window,
/// and where they go).
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/context", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = ContextUsage),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 409, description = "`session_not_live`: no CLI runs for it (send a message or resume it)", body = ErrorResponse),
        (status = 410, description = "`session_expired`", body = ErrorResponse),
        (status = 502, description = "`cli_failed`: the CLI did not answer", body = ErrorResponse),
    ),
)]
pub(super) async fn get_context(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let usage = state.sessions.context_usage(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(usage))
}

/// Fork a session: a new session of the same user whose conversation is this one's up to a
/// message (the whole of it by default), in the same directory, another, or a copy of this
/// one's. Counts against quotas like a create; this session is untouched.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/fork", tag = "sessions",
    params(("session_id" = String, Path)),
    request_body(content = ForkSession, description = "The service also takes an empty body, as `{}`"),
    responses(
        (status = 201, description = "The fork, as a create answers; its CLI is starting", body = Session),
        (status = 400, description = "`invalid_path`: `subdir` is absolute, has `..` or leads outside", body = ErrorResponse),
        (status = 404, description = "`session_not_found`, or `not_found`: no such message in this session", body = ErrorResponse),
        (status = 410, description = "`session_expired`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: `copy_files` into the session's own directory or a non-empty one", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded`: too many live sessions (per user or in all)", body = ErrorResponse),
        (status = 502, description = "`cli_failed`: the CLI could not be started", body = ErrorResponse),
        (status = 503, description = "`memory_pressure` or `storage_unavailable`", body = ErrorResponse),
    ),
)]
pub(super) async fn fork_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<ForkSession>,
) -> ApiResult {
    let session = state.sessions.fork(&caller, &path, body).await?;
    Ok(HttpResponse::Created().json(session))
}

/// Rewind the conversation to before one of its user messages: that message and every later
/// one leave the stored history (deleted: `GET /messages` no longer shows them), and the next
/// turn continues from the message before it. With `files: true` the files the agent changed
/// with its Edit/Write tools since are restored (not changes made by shell commands);
/// `dry_run: true` changes nothing and lists the files that would be restored.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/rewind", tag = "sessions",
    params(("session_id" = String, Path)),
    request_body = RewindSession,
    responses(
        (status = 200, description = "Rewound (or, in a dry run, what would be)", body = Rewound),
        (status = 404, description = "`session_not_found`, or `not_found`: no such message in this session", body = ErrorResponse),
        (status = 409, description = "`session_closed`: resume it first", body = ErrorResponse),
        (status = 410, description = "`session_expired`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: not a user message, or its files cannot be restored", body = ErrorResponse),
        (status = 429, description = "`session_busy`: a turn is running (rewind after it)", body = ErrorResponse),
        (status = 502, description = "`cli_failed`: the CLI refused or did not answer", body = ErrorResponse),
    ),
)]
pub(super) async fn rewind_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<RewindSession>,
) -> ApiResult {
    let rewound = state.sessions.rewind(&caller, &path, body).await?;
    Ok(HttpResponse::Ok().json(rewound))
}
