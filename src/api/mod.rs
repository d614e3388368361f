//! HTTP handlers, grouped by resource; each module has one `configure`.

mod assets;
mod budgets;
mod chat;
mod credentials;
pub mod extract;
mod files;
pub mod forward;
pub mod middleware;
pub mod openai;
pub mod openapi;
mod permissions;
pub(crate) mod service;
mod sessions;
pub mod sse;
mod usage;
pub(crate) mod users;
mod webhooks;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

pub type ApiResult = Result<HttpResponse, ApiError>;

/// Every route: `/api/v1/...`, the OpenAI-compatible `/v1/...`, the service endpoints, and
/// JSON for unknown routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(sessions::configure)
            .configure(chat::configure)
            .configure(files::configure)
            .configure(permissions::configure)
            .configure(users::configure)
            .configure(credentials::configure)
            .configure(budgets::configure)
            .configure(usage::configure)
            .configure(webhooks::configure),
    )
    .configure(openai::configure)
    .configure(service::configure)
    .configure(assets::configure)
    .configure(openapi::configure);
}

/// A resource whose wrong-method answer is our JSON 405, not actix's empty one.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> ApiResult {
    let allow = openapi::allowed_methods(req.match_pattern().as_deref().unwrap_or(req.path()));
    Err(ApiError::MethodNotAllowed { allow })
}

/// The answer for a path no route matches.
pub async fn not_found(req: HttpRequest) -> ApiResult {
    Err(ApiError::NotFound(format!("No route for {} {}", req.method(), req.path())))
}
