//! The one error type of the HTTP API. Every variant maps to a status and a stable code in
//! [`ApiError::status_and_code`]; the body is always
//! `{"error": {"code", "message", "fields"?}, "detail": message}`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// On an answer that is [`ApiError::SessionElsewhere`].
pub const MOVED_HEADER: &str = "x-session-moved";

/// The instance that holds a session's lease, on an answer that says so (see
/// [`ApiError::SessionElsewhere`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance_id: String,
    pub url: String,
}

/// One invalid field of a request (422 `validation_error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// Where the field is, for FastAPI's `loc` in `detail`.
    #[serde(skip)]
    pub source: FieldSource,
}

/// The part of the request an invalid field is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldSource {
    #[default]
    Body,
    Query,
    Header,
}

impl FieldError {
    /// A field of the JSON body (`a.b.0` for nested ones).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), source: FieldSource::Body }
    }

    /// A query-string parameter (`query` when the string as a whole is wrong).
    pub fn query(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { source: FieldSource::Query, ..Self::new(field, message) }
    }

    pub fn header(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { source: FieldSource::Header, ..Self::new(field, message) }
    }

    /// FastAPI's item: `loc` (`["body", "options", "model"]`, list indices as integers), `msg`,
    /// and a `type` in pydantic's words where one fits.
    fn fastapi(&self) -> FastApiError {
        let (root, own) = match self.source {
            FieldSource::Body => ("body", "body"),
            FieldSource::Query => ("query", "query"),
            FieldSource::Header => ("header", ""),
        };
        let mut loc = vec![serde_json::Value::from(root)];
        if self.field != own {
            for part in self.field.split('.').filter(|p| !p.is_empty()) {
                loc.push(match part.parse::<u64>() {
                    Ok(index) => index.into(),
                    Err(_) if self.source == FieldSource::Header => part.to_ascii_lowercase().into(),
                    Err(_) => part.into(),
                });
            }
        }
        let kind = if self.message.starts_with("missing field") || self.message == "is required" {
            "missing"
        } else if self.message.starts_with("unknown field") || self.message == "unknown option" {
            "extra_forbidden"
        } else if self.message.starts_with("invalid type") {
            "type_error"
        } else {
            "value_error"
        };
        FastApiError { loc, msg: self.message.clone(), kind }
    }
}

/// One item of a 422's `detail`, as FastAPI writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FastApiError {
    /// Where: `"body"`, `"query"` or `"header"`, then the field's path.
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    /// `missing`, `extra_forbidden`, `type_error` or `value_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `detail`: the message, or on 422 FastAPI's list of invalid fields.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Detail {
    Message(String),
    Fields(Vec<FastApiError>),
}

/// The stable code of an error, `error.code` in every error body. Clients branch on it; the
/// message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidPath,
    Unauthorized,
    Forbidden,
    SessionNotFound,
    UserNotFound,
    NotFound,
    MethodNotAllowed,
    UserExists,
    SessionClosed,
    NoTurnRunning,
    SessionExpired,
    CredentialsRequired,
    BudgetExceeded,
    UnknownWebhookEvent,
    WebhookTargetRefused,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
    SessionBusy,
    QueueFull,
    SessionNotLive,
    PermissionModeUnavailable,
    QuotaExceeded,
    RateLimited,
    CliFailed,
    MemoryPressure,
    Overloaded,
    SessionMoved,
    StorageUnavailable,
    TurnTimeout,
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidPath => "invalid_path",
            UnknownWebhookEvent => "unknown_webhook_event",
            WebhookTargetRefused => "webhook_target_refused",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            SessionNotFound => "session_not_found",
            UserNotFound => "user_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UserExists => "user_exists",
            SessionClosed => "session_closed",
            NoTurnRunning => "no_turn_running",
            SessionExpired => "session_expired",
            CredentialsRequired => "credentials_required",
            BudgetExceeded => "budget_exceeded",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            ValidationError => "validation_error",
            SessionBusy => "session_busy",
            QueueFull => "queue_full",
            SessionNotLive => "session_not_live",
            PermissionModeUnavailable => "permission_mode_unavailable",
            QuotaExceeded => "quota_exceeded",
            RateLimited => "rate_limited",
            CliFailed => "cli_failed",
            MemoryPressure => "memory_pressure",
            Overloaded => "overloaded",
            SessionMoved => "session_moved",
            StorageUnavailable => "storage_unavailable",
            TurnTimeout => "turn_timeout",
            InternalError => "internal_error",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    InvalidRequest(String),
    InvalidPath(String),
    Unauthorized(String),
    Forbidden(String),
    SessionNotFound,
    UserNotFound,
    NotFound(String),
    /// The methods the route has, for the `Allow` header.
    MethodNotAllowed {
        allow: String,
    },
    UserExists,
    SessionClosed,
    NoTurnRunning,
    SessionExpired,
    /// `auth.require_user_credentials` and the user has none of their own.
    CredentialsRequired,
    /// The user is at or over one of their spending limits.
    BudgetExceeded(OverBudget),
    /// A webhook subscribed to an event there is none of (the name).
    UnknownWebhookEvent(String),
    /// A webhook URL that is not http(s) or reaches an internal address (why).
    WebhookTargetRefused(String),
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    Validation(Vec<FieldError>),
    SessionBusy,
    /// The session already holds `session.max_queued` messages for after its turn.
    QueueFull(usize),
    /// The request needs the session's CLI running and it is not (it starts with a turn or a resume).
    SessionNotLive,
    /// The live CLI refuses this permission mode (`bypassPermissions` without the launch flag).
    PermissionModeUnavailable(String),
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },
    /// Too many failed authentications from the client's address.
    RateLimited {
        retry_after_secs: u64,
    },
    CliFailed(String),
    MemoryPressure {
        message: String,
        retry_after_secs: u64,
    },
    Overloaded {
        retry_after_secs: u64,
    },
    /// Another instance holds the session's lease (the request is forwarded to `url` when it
    /// can be; a request that was forwarded already answers this).
    SessionElsewhere {
        owner: String,
        url: Option<String>,
    },
    StorageUnavailable(String),
    TurnTimeout(String),
    Internal(String),
}

impl ApiError {
    /// The table: status and stable code of every error the API returns.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        use ApiError::*;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
            InvalidPath(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPath),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            SessionNotFound => (StatusCode::NOT_FOUND, ErrorCode::SessionNotFound),
            UserNotFound => (StatusCode::NOT_FOUND, ErrorCode::UserNotFound),
            NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed),
            UserExists => (StatusCode::CONFLICT, ErrorCode::UserExists),
            SessionClosed => (StatusCode::CONFLICT, ErrorCode::SessionClosed),
            NoTurnRunning => (StatusCode::CONFLICT, ErrorCode::NoTurnRunning),
            SessionExpired => (StatusCode::GONE, ErrorCode::SessionExpired),
            CredentialsRequired => (StatusCode::CONFLICT, ErrorCode::CredentialsRequired),
            ApiError::BudgetExceeded(_) => (StatusCode::PAYMENT_REQUIRED, ErrorCode::BudgetExceeded),
            UnknownWebhookEvent(_) => (StatusCode::BAD_REQUEST, ErrorCode::UnknownWebhookEvent),
            WebhookTargetRefused(_) => (StatusCode::BAD_REQUEST, ErrorCode::WebhookTargetRefused),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::UnsupportedMediaType),
            Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError),
            SessionBusy => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::SessionBusy),
            QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull),
            SessionNotLive => (StatusCode::CONFLICT, ErrorCode::SessionNotLive),
            PermissionModeUnavailable(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::PermissionModeUnavailable),
            QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExceeded),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            CliFailed(_) => (StatusCode::BAD_GATEWAY, ErrorCode::CliFailed),
            MemoryPressure { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::MemoryPressure),
            Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded),
            SessionElsewhere { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::SessionMoved),
            StorageUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StorageUnavailable),
            TurnTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::TurnTimeout),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError),
        }
    }

    pub fn code(&self) -> &'static str {
        self.status_and_code().1.as_str()
    }

    /// Seconds a client should wait before trying again (sent as `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::SessionBusy | ApiError::QueueFull(_) => Some(1),
            ApiError::QuotaExceeded { retry_after_secs, .. }
            | ApiError::MemoryPressure { retry_after_secs, .. }
            | ApiError::Overloaded { retry_after_secs }
            | ApiError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            ApiError::StorageUnavailable(_) => Some(5),
            ApiError::SessionElsewhere { .. } => Some(1),
            ApiError::BudgetExceeded(b) => b.retry_after_secs,
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            InvalidRequest(m) | InvalidPath(m) | Unauthorized(m) | Forbidden(m) | NotFound(m) => m.clone(),
            PayloadTooLarge(m) | UnsupportedMediaType(m) | CliFailed(m) | TurnTimeout(m) => m.clone(),
            QuotaExceeded { message, .. } | MemoryPressure { message, .. } => message.clone(),
            SessionNotFound => "Session not found".into(),
            UserNotFound => "User not found".into(),
            MethodNotAllowed { allow } => format!("Method not allowed on this route (it has {allow})"),
            UserExists => "User already exists".into(),
            SessionClosed => "Session is closed; resume it first".into(),
            NoTurnRunning => "No turn is running in this session".into(),
            SessionExpired => "Session has expired".into(),
            UnknownWebhookEvent(name) => format!(
                "Unknown webhook event `{name}` (known: turn.completed, turn.failed, permission.requested, \
                 session.idle, session.closed, session.expired, budget.reached)"
            ),
            WebhookTargetRefused(why) => format!("Webhook target refused: {why}"),
            ApiError::BudgetExceeded(b) => {
                let resets = match &b.resets_at {
                    Some(at) => format!("it resets at {at}"),
                    None => "it does not reset: start another session".into(),
                };
                format!(
                    "The {} budget is used up: ${:.4} spent of ${:.4}; {resets}",
                    b.limit.replace('_', "-"),
                    b.spent_usd,
                    b.limit_usd
                )
            }
            CredentialsRequired => {
                "This service needs your own model credentials: PUT /api/v1/users/{user_id}/credentials first".into()
            }
            Validation(fields) => match fields.as_slice() {
                [one] => format!("Invalid field `{}`: {}", one.field, one.message),
                _ => format!("{} invalid fields", fields.len()),
            },
            SessionBusy => "A turn is already running in this session".into(),
            QueueFull(max) => format!(
                "This session already holds {max} queued messages (session.max_queued); wait for one to start or cancel one"
            ),
            SessionNotLive => "The session's CLI is not running; send a message or resume it first".into(),
            PermissionModeUnavailable(why) => format!(
                "This permission mode is not available to the running CLI: {why}. Create the session with it \
                 (or set it while no CLI runs) so that the CLI starts with it"
            ),
            Overloaded { .. } => "Too many turns are running; try again shortly".into(),
            SessionElsewhere { owner, .. } => {
                format!("The session is live on another instance ({owner}) that did not answer; try again")
            }
            RateLimited { retry_after_secs } => {
                format!("Too many failed authentications from this address; try again in {retry_after_secs} s")
            }
            StorageUnavailable(m) => format!("Storage is unavailable: {m}"),
            // Internal details go to the log, not to the client.
            Internal(_) => "Internal server error".into(),
        }
    }

    /// 422 for one field of the JSON body.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    /// 422 for one query-string parameter.
    pub fn query_validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::query(field, message)])
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

/// Which spending limit refused a turn (`error.budget` of 402 `budget_exceeded`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OverBudget {
    /// `daily`, `monthly` or `per_session`.
    pub limit: &'static str,
    pub limit_usd: f64,
    /// Spent in the limit's period (today, this month, or by the session).
    pub spent_usd: f64,
    /// RFC 3339, UTC: when the period ends (null for `per_session`).
    pub resets_at: Option<String>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
    /// The message again, where the seed's clients read it (FastAPI's `detail`); on 422
    /// FastAPI's list of `{loc, msg, type}`.
    pub detail: Detail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Only on 422 `validation_error`: every invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
    /// Only on 402 `budget_exceeded`: which limit, what was spent, when it resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<OverBudget>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = self {
            log::error!("internal error: {detail}");
        }
        let message = self.message();
        let (fields, detail) = match self {
            ApiError::Validation(f) => (Some(f.clone()), Detail::Fields(f.iter().map(FieldError::fastapi).collect())),
            // Every 422 keeps FastAPI's list in `detail`.
            ApiError::PermissionModeUnavailable(_) => {
                let f = vec![FieldError::new("permission_mode", message.clone())];
                (Some(f.clone()), Detail::Fields(f.iter().map(FieldError::fastapi).collect()))
            }
            _ => (None, Detail::Message(message.clone())),
        };
        let budget = match self {
            ApiError::BudgetExceeded(b) => Some(b.clone()),
            _ => None,
        };
        let body = ErrorResponse { error: ErrorDetail { code, message, fields, budget }, detail };
        let mut response = HttpResponse::build(status);
        if let Some(secs) = self.retry_after_secs() {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if let ApiError::MethodNotAllowed { allow } = self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            response.insert_header((header::ALLOW, value));
        }
        if let ApiError::SessionElsewhere { .. } = self {
            // For a forwarding instance: its idea of the owner is out of date.
            response.insert_header((MOVED_HEADER, "1"));
        }
        let mut response = response.json(body);
        if let ApiError::SessionElsewhere { owner, url: Some(url) } = self {
            // For the forwarding layer: the request goes to the owner instead of this answer.
            response.extensions_mut().insert(Owner { instance_id: owner.clone(), url: url.clone() });
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn body_has_code_message_and_detail() {
        let resp = ApiError::SessionNotFound.error_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let bytes = resp.into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "session_not_found");
        assert_eq!(v["detail"], "Session not found");
    }

    #[test]
    fn service_unavailable_and_quota_carry_retry_after() {
        for e in [
            ApiError::StorageUnavailable("down".into()),
            ApiError::MemoryPressure { message: "m".into(), retry_after_secs: 5 },
            ApiError::QuotaExceeded { message: "q".into(), retry_after_secs: 10 },
            ApiError::RateLimited { retry_after_secs: 30 },
        ] {
            let resp = e.error_response();
            assert!(resp.headers().contains_key(header::RETRY_AFTER), "{e}");
        }
        assert!(!ApiError::SessionNotFound.error_response().headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn every_code_serialises_as_its_stable_string() {
        let errors = [
            ApiError::InvalidRequest(String::new()),
            ApiError::InvalidPath(String::new()),
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::SessionNotFound,
            ApiError::UserNotFound,
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed { allow: "GET".into() },
            ApiError::UserExists,
            ApiError::SessionClosed,
            ApiError::NoTurnRunning,
            ApiError::SessionExpired,
            ApiError::CredentialsRequired,
            ApiError::BudgetExceeded(OverBudget {
                limit: "daily",
                limit_usd: 1.0,
                spent_usd: 1.0,
                resets_at: None,
                retry_after_secs: None,
            }),
            ApiError::UnknownWebhookEvent(String::new()),
            ApiError::WebhookTargetRefused(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::Validation(Vec::new()),
            ApiError::SessionBusy,
            ApiError::QueueFull(1),
            ApiError::SessionNotLive,
            ApiError::PermissionModeUnavailable(String::new()),
            ApiError::QuotaExceeded { message: String::new(), retry_after_secs: 1 },
            ApiError::RateLimited { retry_after_secs: 1 },
            ApiError::CliFailed(String::new()),
            ApiError::MemoryPressure { message: String::new(), retry_after_secs: 1 },
            ApiError::Overloaded { retry_after_secs: 1 },
            ApiError::StorageUnavailable(String::new()),
            ApiError::TurnTimeout(String::new()),
            ApiError::Internal(String::new()),
        ];
        let mut seen = std::collections::HashSet::new();
        for e in &errors {
            let code = e.status_and_code().1;
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str(), "{e:?}");
            assert!(seen.insert(code.as_str()), "{} used twice", code.as_str());
        }
    }

    #[test]
    fn validation_detail_is_fastapis_list() {
        let e = ApiError::Validation(vec![
            FieldError::new("options.allowed_tools.1", "invalid type: integer `3`, expected a string"),
            FieldError::new("session_id", "missing field `session_id`"),
            FieldError::query("limit", "must be from 1 to 1000"),
            FieldError::header("Last-Event-ID", "must be an event id"),
            FieldError::new("body", "invalid type: string, expected a map"),
        ]);
        let bytes = e.error_response().into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["detail"],
            serde_json::json!([
                {"loc": ["body", "options", "allowed_tools", 1], "msg": "invalid type: integer `3`, expected a string", "type": "type_error"},
                {"loc": ["body", "session_id"], "msg": "missing field `session_id`", "type": "missing"},
                {"loc": ["query", "limit"], "msg": "must be from 1 to 1000", "type": "value_error"},
                {"loc": ["header", "last-event-id"], "msg": "must be an event id", "type": "value_error"},
                {"loc": ["body"], "msg": "invalid type: string, expected a map", "type": "type_error"},
            ])
        );
        assert_eq!(v["error"]["code"], "validation_error");
        assert_eq!(
            v["error"]["fields"][0],
            serde_json::json!({"field": "options.allowed_tools.1", "message": "invalid type: integer `3`, expected a string"})
        );
    }

    #[test]
    fn internal_details_are_not_sent() {
        let e = ApiError::Internal("secret path /x".into());
        assert!(!e.message().contains("secret"));
    }
}
