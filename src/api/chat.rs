//! `/api/v1/chat`, `/api/v1/chat/stream` and `/api/v1/sessions/{id}/interrupt`.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::TurnErrors;
use super::sse::SseEvent;
use super::{ApiResult, resource, sse};
use crate::actors::TurnOutcome;
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::clock;
use crate::domain::frames::FrameSet;
use crate::domain::{ToolCall, Usage};
use crate::error::{ApiError, ErrorResponse, FieldError};
use crate::sessions::{Accepted, Message, MessageMode, QueuedMessage};
use crate::state::AppState;

pub const MAX_MESSAGE_CHARS: usize = 100_000;
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
pub const MAX_TIMEOUT_SECS: u64 = 3600;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/chat").route(web::post().to(post_chat)))
        .service(resource("/chat/stream").route(web::post().to(post_chat_stream)))
        .service(resource("/sessions/{session_id}/interrupt").route(web::post().to(post_interrupt)))
        .service(
            resource("/sessions/{session_id}/messages")
                .route(web::get().to(list_messages))
                .route(web::post().to(post_message)),
        )
        .service(resource("/sessions/{session_id}/events").route(web::get().to(get_events)))
        .service(resource("/sessions/{session_id}/queue").route(web::get().to(get_queue)))
        .service(resource("/sessions/{session_id}/queue/{message_id}").route(web::delete().to(delete_queued)));
}

/// The seed's chat body; `user_id` is optional (checked against the key when given).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub session_id: String,
    /// 1-100000 characters, not blank.
    #[schema(min_length = 1, max_length = 100000, pattern = "\\S")]
    pub message: String,
    /// Seconds the turn may take (1-3600, default 120); then it is interrupted.
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout: Option<u64>,
    /// The seed's field: must be the key's own user when given.
    pub user_id: Option<String>,
}

impl ChatRequest {
    /// The message and the turn's timeout, or 422 naming what is wrong.
    fn validate(&self, caller: &Caller) -> Result<Duration, ApiError> {
        if let Some(user) = self.user_id.as_deref().filter(|u| !u.is_empty())
            && let Caller::User { user_id: own, .. } = caller
            && own != user
        {
            return Err(ApiError::Forbidden("A user key can only act for its own user".into()));
        }
        validate_turn(&self.message, self.timeout)
    }
}

/// The message (1–100000 characters, not blank) and timeout (1–3600 s) of a turn.
fn validate_turn(message: &str, timeout: Option<u64>) -> Result<Duration, ApiError> {
    let mut errors = Vec::new();
    if message.trim().is_empty() {
        errors.push(FieldError::new("message", "must not be blank"));
    } else if message.chars().count() > MAX_MESSAGE_CHARS {
        errors.push(FieldError::new("message", format!("must be at most {MAX_MESSAGE_CHARS} characters")));
    }
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
        errors.push(FieldError::new("timeout", format!("must be from 1 to {MAX_TIMEOUT_SECS} seconds")));
    }
    if errors.is_empty() { Ok(Duration::from_secs(timeout)) } else { Err(ApiError::Validation(errors)) }
}

/// `POST /chat` answer (seed fields, filled in properly).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ChatResponse {
    session_id: String,
    /// The turn's final answer.
    text: String,
    tool_calls: Vec<ToolCall>,
    /// When the turn ended, RFC 3339, UTC.
    timestamp: String,
    /// This turn's cost.
    cost_usd: f64,
    usage: Usage,
    duration_ms: i64,
    /// Model round trips within the turn.
    num_turns: i64,
    /// The CLI's result subtype: `success`, `error_max_turns`, `interrupted`, ...
    subtype: String,
}

/// Send a message and wait for the whole answer.
#[utoipa::path(
    post, path = "/api/v1/chat", tag = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, body = ChatResponse),
        (status = 403, description = "`forbidden`: `user_id` is not the key's user", body = ErrorResponse),
        TurnErrors,
        (status = 504, description = "`turn_timeout`: `timeout` seconds passed (waiting for a turn slot, for the CLI to start, or in the turn, which is interrupted)", body = ErrorResponse),
    ),
)]
pub(super) async fn post_chat(
    state: web::Data<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<ChatRequest>,
) -> ApiResult {
    let timeout = req.validate(&caller)?;
    let mut turn = state.sessions.start_sync_turn(&caller, &req.session_id, req.message, timeout).await?;
    while let Some(event) = turn.events.recv().await {
        match &event.outcome {
            Some(TurnOutcome::Done { result, tool_calls }) => {
                return Ok(HttpResponse::Ok().json(ChatResponse {
                    session_id: req.session_id,
                    text: result.text.clone(),
                    tool_calls: tool_calls.clone(),
                    timestamp: clock::rfc3339(clock::now_ms()),
                    cost_usd: result.cost_usd,
                    usage: result.usage.clone(),
                    duration_ms: result.duration_ms,
                    num_turns: result.num_turns,
                    subtype: result.subtype.clone(),
                }));
            }
            Some(TurnOutcome::Failed(err)) => return Err(err.clone()),
            None => {}
        }
    }
    Err(ApiError::Internal("the turn ended without a result".into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StreamParams {
    /// `seed`: only the seed's frame types and keys, for its old clients (default: `api.frames`).
    frames: Option<FrameSet>,
}

/// The frame set a stream asked for, else the service's default.
fn frame_set(state: &AppState, asked: Option<FrameSet>) -> FrameSet {
    asked.unwrap_or(state.settings.api.frames)
}

/// Send a message and stream the turn as Server-Sent Events (`SseEvent`, whose `data` is a
/// `StreamFrame`), ending after `done` or `error`.
/// Errors found before the stream starts are plain HTTP errors; later ones are `error` frames.
#[utoipa::path(
    post, path = "/api/v1/chat/stream", tag = "chat",
    params(StreamParams),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The turn's events, ending with `done` or `error` (`turn_timeout` when `timeout` passes in the turn)", content_type = "text/event-stream", body = SseEvent),
        (status = 403, description = "`forbidden`: `user_id` is not the key's user", body = ErrorResponse),
        TurnErrors,
        (status = 504, description = "`turn_timeout`: `timeout` seconds passed before the turn could start (waiting for a turn slot or for the CLI to start)", body = ErrorResponse),
    ),
)]
pub(super) async fn post_chat_stream(
    state: web::Data<AppState>,
    caller: Caller,
    params: web::Query<StreamParams>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<impl actix_web::Responder, ApiError> {
    let timeout = req.validate(&caller)?;
    let frames = frame_set(&state, params.frames);
    let revoked = state.revocations.watch(&caller, &state.storage).await?;
    let turn = state.sessions.start_turn(&caller, &req.session_id, req.message, timeout).await?;
    Ok(sse::respond(turn.events, true, frames, state.metrics.clone(), revoked))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Interrupting {
    session_id: String,
    /// The turn being interrupted; it ends with `done` (subtype `interrupted`) within 5 s.
    /// Null when no turn ran and only queued messages were cancelled.
    turn_id: Option<String>,
    /// The queued messages cancelled (with `cancel_queue=true`), each with a
    /// `message_dropped` event.
    cancelled: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct InterruptParams {
    /// Also cancel the session's queued messages (else they run after the interrupted turn).
    /// Messages steered into the turn that it has not taken yet always go with it.
    #[serde(default)]
    cancel_queue: bool,
}

/// Interrupt the running turn.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/interrupt", tag = "chat",
    params(("session_id" = String, Path), InterruptParams),
    responses(
        (status = 202, body = Interrupting),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 409, description = "`no_turn_running` (and, with `cancel_queue`, nothing queued)", body = ErrorResponse),
    ),
)]
pub(super) async fn post_interrupt(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<InterruptParams>,
) -> ApiResult {
    let session_id = path.into_inner();
    let done = state.sessions.interrupt_and_cancel(&caller, &session_id, params.cancel_queue).await?;
    Ok(HttpResponse::Accepted().json(Interrupting { session_id, turn_id: done.turn_id, cancelled: done.cancelled }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct MessagesParams {
    /// At most this many (the latest ones; default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only messages with a smaller `id` (paging backwards).
    before: Option<i64>,
}

/// The stored conversation, oldest first.
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/messages", tag = "chat",
    params(("session_id" = String, Path), MessagesParams),
    responses(
        (status = 200, body = Vec<Message>),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: a bad `limit` or `before`", body = ErrorResponse),
    ),
)]
pub(super) async fn list_messages(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<MessagesParams>,
) -> ApiResult {
    let messages = state.sessions.history(&caller, &path, params.before, params.limit).await?;
    Ok(HttpResponse::Ok().json(messages))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageRequest {
    /// 1-100000 characters, not blank.
    #[schema(min_length = 1, max_length = 100000, pattern = "\\S")]
    message: String,
    /// Seconds the turn may take (1-3600, default 120); a queued message's counts from its start.
    #[schema(minimum = 1, maximum = 3600)]
    timeout: Option<u64>,
    /// While a turn runs: `steer` hands the message to it (the agent reads it at its next
    /// tool boundary), `queue` runs it as its own turn after it (and after those queued
    /// before). Without it, a message while a turn runs is `429 session_busy`. With no turn
    /// running, either starts an ordinary turn.
    mode: Option<MessageMode>,
}

/// What became of the message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Disposition {
    /// A turn of its own started now.
    Started,
    /// Handed to the running turn `turn_id`; `message_accepted` says when the agent took it.
    Steered,
    /// Queued: it runs as the turn `turn_id` (= `message_id`) after the running one; its first
    /// event is `message_accepted`.
    Queued,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TurnAccepted {
    /// The turn that answers the message (for `steered`, the running turn).
    turn_id: String,
    /// The turn's first event: follow `/events` with `Last-Event-ID` one below it (null for
    /// `steered` and `queued`: follow from the session's `last_event_id`).
    first_event_id: Option<i64>,
    /// The message's id (`GET /queue`, `DELETE /queue/{message_id}`, `message_accepted`); for
    /// `started`, the turn id.
    message_id: String,
    status: Disposition,
    /// Only for `queued`: 1 runs next.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<usize>,
}

/// Start a turn without holding the connection (or, with `mode`, steer the running turn or
/// queue after it); its events are on `/events`.
#[utoipa::path(
    post, path = "/api/v1/sessions/{session_id}/messages", tag = "chat",
    params(("session_id" = String, Path)),
    request_body = MessageRequest,
    responses(
        (status = 202, body = TurnAccepted),
        TurnErrors,
        (status = 504, description = "`turn_timeout`: `timeout` seconds passed before the turn could start (waiting for a turn slot or for the CLI to start)", body = ErrorResponse),
    ),
)]
pub(super) async fn post_message(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    JsonBody(req): JsonBody<MessageRequest>,
) -> ApiResult {
    let timeout = validate_turn(&req.message, req.timeout)?;
    let accepted = match state.sessions.submit(&caller, &path, req.message, timeout, req.mode).await? {
        Accepted::Started(turn) => TurnAccepted {
            message_id: turn.turn_id.clone(),
            turn_id: turn.turn_id,
            first_event_id: Some(turn.first_event_id),
            status: Disposition::Started,
            position: None,
        },
        Accepted::Steered { message_id, turn_id } => {
            TurnAccepted { turn_id, first_event_id: None, message_id, status: Disposition::Steered, position: None }
        }
        Accepted::Queued { message_id, position } => TurnAccepted {
            turn_id: message_id.clone(),
            first_event_id: None,
            message_id,
            status: Disposition::Queued,
            position: Some(position),
        },
    };
    Ok(HttpResponse::Accepted().json(accepted))
}

/// The messages queued for after the running turn, next first (`mode: "queue"`). A queue
/// lives with the session's CLI: when it stops, its messages are dropped (`message_dropped`).
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/queue", tag = "chat",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = Vec<QueuedMessage>),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
    ),
)]
pub(super) async fn get_queue(state: web::Data<AppState>, caller: Caller, path: web::Path<String>) -> ApiResult {
    let queue = state.sessions.queue(&caller, &path).await?;
    Ok(HttpResponse::Ok().json(queue))
}

/// Cancel a queued message that has not started (its `message_dropped` event says `cancelled`).
#[utoipa::path(
    delete, path = "/api/v1/sessions/{session_id}/queue/{message_id}", tag = "chat",
    params(("session_id" = String, Path), ("message_id" = String, Path)),
    responses(
        (status = 204, description = "Cancelled; it never runs"),
        (status = 404, description = "`session_not_found`, or `not_found`: no such message waits (it started already, or never was)", body = ErrorResponse),
    ),
)]
pub(super) async fn delete_queued(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult {
    let (session_id, message_id) = path.into_inner();
    state.sessions.cancel_queued(&caller, &session_id, &message_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsParams {
    /// Replay what follows this event id (the `Last-Event-ID` header wins when both are sent).
    last_event_id: Option<i64>,
    /// `seed`: only the seed's frame types and keys (default: `api.frames`).
    frames: Option<FrameSet>,
}

/// The EventSource stream of every turn of a session: replay after `Last-Event-ID` (header,
/// or `?last_event_id=`), then live, with no gap and no duplicate. Browsers may authenticate
/// with `?access_token=`.
#[utoipa::path(
    get, path = "/api/v1/sessions/{session_id}/events", tag = "chat",
    params(
        ("session_id" = String, Path),
        ("Last-Event-ID" = Option<i64>, Header, description = "Replay what follows this event id"),
        EventsParams,
    ),
    security(("bearer" = []), ("api_key" = []), ("access_token" = [])),
    responses(
        (status = 200, description = "Every turn's events, replayed then live", content_type = "text/event-stream", body = SseEvent),
        (status = 404, description = "`session_not_found`", body = ErrorResponse),
        (status = 422, description = "`validation_error`: `Last-Event-ID` is not an event id", body = ErrorResponse),
    ),
)]
pub(super) async fn get_events(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<EventsParams>,
    req: actix_web::HttpRequest,
) -> Result<impl actix_web::Responder, ApiError> {
    let header = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim);
    let after = match header.filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| ApiError::Validation(vec![FieldError::header("Last-Event-ID", "must be an event id")]))?,
        None => params.last_event_id.unwrap_or(0),
    };
    let revoked = state.revocations.watch(&caller, &state.storage).await?;
    let events = state.sessions.follow(&caller, &path, after).await?;
    Ok(sse::respond(events, false, frame_set(&state, params.frames), state.metrics.clone(), revoked))
}
