//! Errors on the `/v1` routes, in OpenAI's shape `{"error": {"message", "type", "param",
//! "code"}}`, mapped from [`ApiError`] at the edge by one table ([`OpenAiError::from`]).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// An error as OpenAI's clients read it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `insufficient_quota`, `server_error`.
    pub kind: &'static str,
    /// Our stable code (`session_busy`, …), or OpenAI's where clients know one
    /// (`invalid_api_key`, `model_not_found`).
    pub code: String,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// Another instance owns the session: the forwarding layer sends the request there.
    pub owner: Option<Box<crate::error::Owner>>,
}

/// The body of every error on `/v1`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorResponse {
    pub error: OpenAiErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error`, `insufficient_quota` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(required = true)]
    pub param: Option<String>,
    /// The service's stable code (see `ErrorCode`), `invalid_api_key` or `model_not_found`.
    #[schema(required = true)]
    pub code: Option<String>,
}

impl OpenAiError {
    /// 400 `model_not_found`: a `model` this service does not offer.
    pub fn model_not_found(model: &str) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "model_not_found".into(),
            message: format!("The model `{model}` does not exist or is not offered here; see GET /v1/models"),
            param: Some("model".into()),
            retry_after_secs: None,
            owner: None,
        }
    }

    /// 400 for one request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: ErrorCode::InvalidRequest.as_str().into(),
            message: message.into(),
            param: Some(param.into()),
            retry_after_secs: None,
            owner: None,
        }
    }

    /// The JSON body, also sent as a stream's last event when a turn fails mid-stream.
    pub fn body(&self) -> OpenAiErrorResponse {
        OpenAiErrorResponse {
            error: OpenAiErrorBody {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: Some(self.code.clone()),
            },
        }
    }
}

/// The table: our code → OpenAI's status and type. Statuses stay ours except where OpenAI's
/// clients expect another: a body that does not validate is 400 (not 422), a spent budget is
/// 429 `insufficient_quota` (OpenAI's answer to a spending limit).
fn openai_status_and_type(code: ErrorCode, ours: StatusCode) -> (StatusCode, &'static str) {
    use ErrorCode::*;
    match code {
        InvalidRequest
        | InvalidPath
        | ValidationError
        | PermissionModeUnavailable
        | UnknownWebhookEvent
        | WebhookTargetRefused => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        PayloadTooLarge | UnsupportedMediaType | MethodNotAllowed => (ours, "invalid_request_error"),
        SessionClosed | SessionExpired | SessionNotLive | NoTurnRunning | CredentialsRequired | UserExists => {
            (ours, "invalid_request_error")
        }
        Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Forbidden => (StatusCode::FORBIDDEN, "permission_error"),
        SessionNotFound | UserNotFound | NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        SessionBusy | QueueFull | QuotaExceeded | RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        BudgetExceeded => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        CliFailed | MemoryPressure | Overloaded | SessionMoved | StorageUnavailable | TurnTimeout | InternalError => {
            (ours, "server_error")
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        let (ours, code) = e.status_and_code();
        let (status, kind) = openai_status_and_type(code, ours);
        if let ApiError::Internal(detail) = &e {
            log::error!("internal error: {detail}");
        }
        let param = match &e {
            ApiError::Validation(fields) => fields.first().map(|f| f.field.clone()),
            _ => None,
        };
        let code = match code {
            ErrorCode::Unauthorized => "invalid_api_key".to_string(),
            other => other.as_str().to_string(),
        };
        let owner = match &e {
            ApiError::SessionElsewhere { owner, url: Some(url) } => {
                Some(Box::new(crate::error::Owner { instance_id: owner.clone(), url: url.clone() }))
            }
            _ => None,
        };
        OpenAiError { status, kind, code, message: e.message(), param, retry_after_secs: e.retry_after_secs(), owner }
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        // OpenAI's clients retry a 429 by themselves unless told not to: a spent budget does not
        // come back in a second.
        if self.kind == "insufficient_quota" {
            response.insert_header(("x-should-retry", "false"));
        }
        if self.code == ErrorCode::SessionMoved.as_str() {
            response.insert_header((crate::error::MOVED_HEADER, "1"));
        }
        let mut response = response.json(self.body());
        if let Some(owner) = &self.owner {
            response.extensions_mut().insert(owner.as_ref().clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    #[test]
    fn our_errors_map_to_openai_statuses_and_types() {
        let cases = [
            (ApiError::Unauthorized("x".into()), 401, "authentication_error", "invalid_api_key"),
            (ApiError::SessionNotFound, 404, "not_found_error", "session_not_found"),
            (ApiError::SessionBusy, 429, "rate_limit_error", "session_busy"),
            (ApiError::RateLimited { retry_after_secs: 3 }, 429, "rate_limit_error", "rate_limited"),
            (
                ApiError::MemoryPressure { message: "m".into(), retry_after_secs: 2 },
                503,
                "server_error",
                "memory_pressure",
            ),
            (ApiError::StorageUnavailable("d".into()), 503, "server_error", "storage_unavailable"),
            (ApiError::InvalidRequest("j".into()), 400, "invalid_request_error", "invalid_request"),
            (ApiError::SessionExpired, 410, "invalid_request_error", "session_expired"),
            (ApiError::CliFailed("c".into()), 502, "server_error", "cli_failed"),
        ];
        for (e, status, kind, code) in cases {
            let o = OpenAiError::from(e.clone());
            assert_eq!((o.status.as_u16(), o.kind, o.code.as_str()), (status, kind, code), "{e:?}");
        }
    }

    #[test]
    fn validation_is_400_naming_the_field_and_retry_after_survives() {
        let o = OpenAiError::from(ApiError::Validation(vec![FieldError::new("messages", "missing field `messages`")]));
        assert_eq!((o.status.as_u16(), o.param.as_deref()), (400, Some("messages")));
        let resp = OpenAiError::from(ApiError::SessionBusy).error_response();
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        // A spent budget: OpenAI's spending-limit answer, which its clients must not retry.
        let spent = crate::error::OverBudget {
            limit: "daily",
            limit_usd: 1.0,
            spent_usd: 1.0,
            resets_at: None,
            retry_after_secs: None,
        };
        let o = OpenAiError::from(ApiError::BudgetExceeded(spent));
        assert_eq!((o.status.as_u16(), o.kind, o.code.as_str()), (429, "insufficient_quota", "budget_exceeded"));
        assert_eq!(o.error_response().headers().get("x-should-retry").unwrap(), "false");
        assert!(OpenAiError::from(ApiError::SessionBusy).error_response().headers().get("x-should-retry").is_none());
        let body = serde_json::to_value(OpenAiError::model_not_found("gpt-4").body()).unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
