//! `/api/v1/webhooks`: signed webhook subscriptions (a user for their own sessions, the admin
//! for a user or everyone) and their delivery logs.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiResult, resource};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::error::ErrorResponse;
use crate::state::AppState;
use crate::webhooks::{CreateWebhook, Delivery, Webhook};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/webhooks").route(web::post().to(create_webhook)).route(web::get().to(list_webhooks)))
        .service(
            resource("/webhooks/{webhook_id}")
                .route(web::get().to(get_webhook))
                .route(web::delete().to(delete_webhook)),
        )
        .service(resource("/webhooks/{webhook_id}/deliveries").route(web::get().to(list_deliveries)));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// The admin: only this user's hooks (a user key sees its own only).
    user_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesParams {
    /// At most this many, the latest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Subscribe a URL to events. The answer carries the signing secret, the only time it is shown.
#[utoipa::path(
    post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, body = Webhook),
        (status = 400, description = "`unknown_webhook_event`; `webhook_target_refused`: not http(s), or an internal address not in `webhooks.allowed_hosts`", body = ErrorResponse),
        (status = 403, description = "`forbidden`: a user key naming another user", body = ErrorResponse),
        (status = 404, description = "`user_not_found`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: no events, a malformed URL or secret", body = ErrorResponse),
    ),
)]
pub(super) async fn create_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> ApiResult {
    let hook = state.webhooks.create(&caller, body).await?;
    Ok(HttpResponse::Created().json(hook))
}

/// The caller's webhooks (the admin: every one, or a user's with `user_id`).
#[utoipa::path(
    get, path = "/api/v1/webhooks", tag = "webhooks",
    params(ListParams),
    responses(
        (status = 200, body = Vec<Webhook>),
        (status = 403, description = "`forbidden`: a user key naming another user", body = ErrorResponse),
    ),
)]
pub(super) async fn list_webhooks(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<ListParams>,
) -> ApiResult {
    Ok(HttpResponse::Ok().json(state.webhooks.list(&caller, params.user_id.as_deref()).await?))
}

/// One webhook (never its secret).
#[utoipa::path(
    get, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path)),
    responses(
        (status = 200, body = Webhook),
        (status = 404, description = "`not_found`: no such webhook, or another user's", body = ErrorResponse),
    ),
)]
pub(super) async fn get_webhook(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    Ok(HttpResponse::Ok().json(state.webhooks.get(&caller, &path).await?))
}

/// Remove a webhook and its delivery log; deliveries not yet made are dropped.
#[utoipa::path(
    delete, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such webhook, or another user's", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_webhook(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    state.webhooks.delete(&caller, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The webhook's delivery log, newest first: each event's `webhook-id`, attempts and outcome.
#[utoipa::path(
    get, path = "/api/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = String, Path), DeliveriesParams),
    responses(
        (status = 200, body = Vec<Delivery>),
        (status = 404, description = "`not_found`: no such webhook, or another user's", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a bad `limit`", body = ErrorResponse),
    ),
)]
pub(super) async fn list_deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<DeliveriesParams>,
) -> ApiResult {
    let limit = params.limit.unwrap_or(100);
    if !(1..=crate::webhooks::MAX_DELIVERIES_LISTED).contains(&limit) {
        return Err(crate::error::ApiError::query_validation("limit", "must be from 1 to 1000"));
    }
    Ok(HttpResponse::Ok().json(state.webhooks.deliveries(&caller, &path, limit).await?))
}
