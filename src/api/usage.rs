//! `/api/v1/usage` (a report by day, user or session; JSON, or CSV with `Accept: text/csv`)
//! and `/api/v1/me/usage` (the caller's today and this month against their limits).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiResult, resource};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorResponse};
use crate::sessions::usage::{self, MyUsage, UsageQuery, UsageReportRow};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/usage").route(web::get().to(get_usage)))
        .service(resource("/me/usage").route(web::get().to(get_my_usage)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageParams {
    /// From this UTC day (`2026-12-01`) or RFC 3339 time, included (default: the start of
    /// this month).
    from: Option<String>,
    /// To this day or time, excluded (default: the end of today).
    to: Option<String>,
    /// `day` (default), `user` or `session`.
    group_by: Option<String>,
    /// Only this user's turns (the admin key; a user key always gets its own).
    user_id: Option<String>,
}

/// The report as CSV: a header line, then one line per row.
fn csv(rows: &[UsageReportRow]) -> Result<Vec<u8>, ApiError> {
    let failed = |e: csv::Error| ApiError::Internal(format!("cannot write the CSV report: {e}"));
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(["period", "user_id", "session_id", "turns", "input_tokens", "output_tokens", "cost_usd"])
        .map_err(failed)?;
    for r in rows {
        out.write_record([
            r.period.clone(),
            r.user_id.clone().unwrap_or_default(),
            r.session_id.clone().unwrap_or_default(),
            r.turns.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            r.cost_usd.to_string(),
        ])
        .map_err(failed)?;
    }
    out.into_inner().map_err(|e| ApiError::Internal(format!("cannot write the CSV report: {e}")))
}

/// Tokens and cost of the finished turns, by UTC day, user or session (the admin: everyone
/// or `user_id`; a user: themselves).
#[utoipa::path(
    get, path = "/api/v1/usage", tag = "users",
    params(UsageParams),
    responses(
        (status = 200, description = "The rows (JSON), or with `Accept: text/csv` the same as CSV under a header line",
            content(
                (Vec<UsageReportRow> = "application/json"),
                (String = "text/csv"),
            )),
        (status = 403, description = "`forbidden`: another user's", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a bad `from`, `to` or `group_by`", body = ErrorResponse),
    ),
)]
pub(super) async fn get_usage(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    params: web::Query<UsageParams>,
) -> ApiResult {
    let p = params.into_inner();
    let query = UsageQuery { from: p.from, to: p.to, group_by: p.group_by, user_id: p.user_id };
    let rows = usage::report(&state.storage, &caller, query).await?;
    let wants_csv = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"));
    if wants_csv {
        return Ok(HttpResponse::Ok().content_type("text/csv; charset=utf-8").body(csv(&rows)?));
    }
    Ok(HttpResponse::Ok().json(rows))
}

/// The caller's spend today and this month (UTC) against their limits.
#[utoipa::path(
    get, path = "/api/v1/me/usage", tag = "users",
    responses(
        (status = 200, body = MyUsage),
        (status = 403, description = "`forbidden`: the admin key has no usage of its own", body = ErrorResponse),
    ),
)]
pub(super) async fn get_my_usage(state: web::Data<AppState>, caller: Caller) -> ApiResult {
    let Caller::User { user_id, .. } = &caller else {
        return Err(ApiError::Forbidden("Only a user key has usage of its own; see GET /api/v1/usage".into()));
    };
    Ok(HttpResponse::Ok().json(usage::mine(&state.storage, state.sessions.budgets(), user_id).await?))
}
