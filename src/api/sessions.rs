//! `/api/v1/sessions`: create, list, get, close (or purge), resume.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::sessions::{CreateSession, ListQuery, Session};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/sessions").route(web::post().to(create_session)).route(web::get().to(list_sessions)))
        .service(
            resource("/sessions/{session_id}")
                .route(web::get().to(get_session))
                .route(web::delete().to(delete_session)),
        )
        .service(resource("/sessions/{session_id}/resume").route(web::post().to(resume_session)))
        .service(resource("/sessions/{session_id}/agent").route(web::get().to(get_agent)));
}

async fn create_session(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateSession>,
) -> ApiResult {
    let session = state.sessions.create(&caller, body).await?;
    Ok(HttpResponse::Created().json(session))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    user_id: Option<String>,
    #[serde(default)]
    detail: bool,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_sessions(state: web::Data<AppState>, caller: Caller, params: web::Query<ListParams>) -> ApiResult {
    let params = params.into_inner();
    let query =
        ListQuery { user_id: params.user_id, status: params.status, limit: params.limit, offset: params.offset };
    let rows = state.sessions.list(&caller, query).await?;
    Ok(if params.detail {
        HttpResponse::Ok().json(rows.into_iter().map(Session::from).collect::<Vec<_>>())
    } else {
        HttpResponse::Ok().json(rows.into_iter().map(|r| r.session_id).collect::<Vec<_>>())
    })
}

async fn get_session(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let row = state.sessions.get(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(Session::from(row)))
}

#[derive(Debug, Deserialize)]
struct DeleteParams {
    #[serde(default)]
    purge: bool,
}

async fn delete_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<DeleteParams>,
) -> ApiResult {
    state.sessions.close(&caller, &path, params.purge).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn resume_session(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let row = state.sessions.resume(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(Session::from(row)))
}

/// What the agent can use: tools, MCP servers, skills, model, CLI version (from the CLI's
/// `system/init` of its last turn).
async fn get_agent(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let info = state.sessions.agent_info(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(info))
}
