//! `/api/v1/users/{user_id}/budget`: a user's spending limits (set by the admin; read by the
//! admin or the user), with what was spent in the current UTC day and month.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::clock;
use crate::error::{ApiError, ErrorResponse, FieldError};
use crate::state::AppState;
use crate::storage::BudgetRow;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users/{user_id}/budget").route(web::put().to(put_budget)).route(web::get().to(get_budget)));
}

/// A user's own limits in USD; one left out (or null) falls back to the service's `[budgets]`
/// default. Replaces what the user had.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutBudget {
    /// Per UTC day.
    daily_usd: Option<f64>,
    /// Per UTC month.
    monthly_usd: Option<f64>,
    /// Per session (its total cost).
    per_session_usd: Option<f64>,
}

/// The limits that apply to the user and what they spent.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BudgetInfo {
    user_id: String,
    /// The limits in force (the user's own, else the service's default; null: none).
    daily_usd: Option<f64>,
    monthly_usd: Option<f64>,
    per_session_usd: Option<f64>,
    /// The user's own limits as the admin set them (null: the default applies).
    own: crate::sessions::budgets::Limits,
    spent_today_usd: f64,
    spent_this_month_usd: f64,
    /// RFC 3339, UTC: the next midnight, and the start of the next month.
    day_resets_at: String,
    month_resets_at: String,
    /// RFC 3339, UTC; null when the user has no limits of their own.
    updated_at: Option<String>,
}

/// The user the path names, if the caller may see their budget: the admin for any existing
/// user, a user for themselves only.
async fn target_user(state: &AppState, caller: &Caller, user_id: String) -> Result<String, ApiError> {
    match caller {
        Caller::User { user_id: own, .. } if *own == user_id => Ok(user_id),
        Caller::User { .. } => Err(ApiError::Forbidden("A user key can only see its own user's budget".into())),
        Caller::Admin => match state.storage.get_user(&user_id).await? {
            Some(_) => Ok(user_id),
            None => Err(ApiError::UserNotFound),
        },
        Caller::Open => caller.require_admin().map(|()| user_id),
    }
}

async fn info(state: &AppState, user_id: String) -> ApiResult {
    let s = state.sessions.budgets().standing(&user_id).await?;
    let own = crate::sessions::budgets::Limits {
        daily_usd: s.own.as_ref().and_then(|o| o.daily_usd),
        monthly_usd: s.own.as_ref().and_then(|o| o.monthly_usd),
        per_session_usd: s.own.as_ref().and_then(|o| o.per_session_usd),
    };
    Ok(HttpResponse::Ok().json(BudgetInfo {
        user_id,
        daily_usd: s.limits.daily_usd,
        monthly_usd: s.limits.monthly_usd,
        per_session_usd: s.limits.per_session_usd,
        own,
        spent_today_usd: s.spent_today_usd,
        spent_this_month_usd: s.spent_month_usd,
        day_resets_at: clock::rfc3339(s.day_resets_at),
        month_resets_at: clock::rfc3339(s.month_resets_at),
        updated_at: s.own.map(|o| clock::rfc3339(o.updated_at)),
    }))
}

/// Set a user's spending limits (admin only).
#[utoipa::path(
    put, path = "/api/v1/users/{user_id}/budget", tag = "users",
    params(("user_id" = String, Path)),
    request_body = PutBudget,
    responses(
        (status = 200, body = BudgetInfo),
        (status = 403, description = "`forbidden`: not the admin key", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a limit that is not a number of USD, 0 or more", body = ErrorResponse),
    ),
)]
pub(super) async fn put_budget(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PutBudget>,
) -> ApiResult {
    caller.require_admin()?;
    let user_id = target_user(&state, &caller, path.into_inner()).await?;
    let fields =
        [("daily_usd", body.daily_usd), ("monthly_usd", body.monthly_usd), ("per_session_usd", body.per_session_usd)];
    let invalid: Vec<FieldError> = fields
        .iter()
        .filter(|(_, usd)| usd.is_some_and(|usd| !(usd.is_finite() && usd >= 0.0)))
        .map(|(field, _)| FieldError::new(*field, "must be a number of USD, 0 or more"))
        .collect();
    if !invalid.is_empty() {
        return Err(ApiError::Validation(invalid));
    }
    let row = BudgetRow {
        user_id: user_id.clone(),
        daily_usd: body.daily_usd,
        monthly_usd: body.monthly_usd,
        per_session_usd: body.per_session_usd,
        updated_at: clock::now_ms(),
    };
    state.storage.put_budget(&row).await?;
    log::info!(
        "user {user_id}: budget set (daily {:?}, monthly {:?}, per session {:?})",
        row.daily_usd,
        row.monthly_usd,
        row.per_session_usd
    );
    info(&state, user_id).await
}

/// A user's spending limits and what they spent today and this month (the admin, or the
/// user for themselves).
#[utoipa::path(
    get, path = "/api/v1/users/{user_id}/budget", tag = "users",
    params(("user_id" = String, Path)),
    responses(
        (status = 200, body = BudgetInfo),
        (status = 403, description = "`forbidden`: another user's", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn get_budget(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let user_id = target_user(&state, &caller, path.into_inner()).await?;
    info(&state, user_id).await
}
