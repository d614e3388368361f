//! The OpenAI-compatible API at `/v1`: `POST /v1/chat/completions` (whole or streamed as
//! `chat.completion.chunk`s ending with `data: [DONE]`) and `GET /v1/models`, with the same
//! keys as `/api/v1` and OpenAI's error shape.
//!
//! A conversation is a session. `X-Session-Id` names it (the caller's, else 404); without it,
//! the hash of the request's `user` tag and every message but the last user one finds the
//! session an earlier answer of that conversation came from (see [`convo::conversation_hash`]),
//! and a new session is made when none did. Only the last user message goes to the agent: the
//! session holds the rest. The session's id comes back in `X-Session-Id`.

mod convo;
mod error;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::actors::{SessionEvent, TurnOutcome};
use crate::api::extract::JsonBody;
use crate::auth::Caller;
use crate::auth::revocation::RevocationWatch;
use crate::clock;
use crate::domain::frames::TurnResult;
use crate::domain::{SessionStatus, Usage};
use crate::error::ApiError;
use crate::metrics::SseClientGuard;
use crate::sessions::CreateSession;
use crate::state::AppState;
use crate::storage::Storage;
use convo::{ChatMessage, Reply};
pub use error::{OpenAiError, OpenAiErrorBody, OpenAiErrorResponse};

pub const SESSION_HEADER: &str = "x-session-id";
const PING_EVERY: Duration = Duration::from_secs(15);

type OpenAiResult = Result<HttpResponse, OpenAiError>;

/// The `/v1` scope: its routes, and OpenAI-shaped answers for unknown routes and methods.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .service(route("/chat/completions").route(web::post().to(post_chat_completions)))
            .service(route("/models").route(web::get().to(list_models)))
            .service(route("/models/{model}").route(web::get().to(get_model)))
            .default_service(web::to(no_route)),
    );
}

fn route(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(wrong_method))
}

async fn wrong_method(req: HttpRequest) -> OpenAiResult {
    let allow = if req.path().ends_with("/chat/completions") { "POST" } else { "GET" };
    Err(ApiError::MethodNotAllowed { allow: allow.into() }.into())
}

async fn no_route(req: HttpRequest) -> OpenAiResult {
    Err(ApiError::NotFound(format!("No route for {} {}", req.method(), req.path())).into())
}

/// `POST /v1/chat/completions`. Fields OpenAI has and an agent cannot honour (`temperature`,
/// `tools`, `max_tokens`, …) are accepted and ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// One of `GET /v1/models`, or a full `claude-…` name when `session.overridable` has
    /// `model`. It applies when the conversation's session is created.
    pub model: String,
    /// The conversation; the last one must be the user's. A first `system` (or `developer`)
    /// message becomes the new session's `append_system_prompt` when `session.overridable`
    /// allows it, and is ignored otherwise.
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// A tag of the end user: conversations of different tags never share a session. With the
    /// admin key (or `auth.mode = "none"`) it names the user the session belongs to.
    pub user: Option<String>,
    /// Only 1.
    pub n: Option<u32>,
    /// Seconds the turn may take (1-3600, default 120); not an OpenAI field.
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// A last chunk with `usage` (and `choices: []`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// OpenAI's `usage`, from the turn's token counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

impl From<&Usage> for CompletionUsage {
    fn from(u: &Usage) -> Self {
        CompletionUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens + u.output_tokens,
        }
    }
}

/// A whole answer (`object: "chat.completion"`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<turn id>`.
    id: String,
    /// `chat.completion`.
    object: &'static str,
    /// Unix seconds.
    created: i64,
    model: String,
    choices: Vec<Choice>,
    usage: CompletionUsage,
}

#[derive(Debug, Serialize, ToSchema)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    /// `stop`, or `length` when the turn hit `max_turns` or `max_budget_usd`.
    finish_reason: &'static str,
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AssistantMessage {
    /// `assistant`.
    role: &'static str,
    /// The answer, with each tool the agent called as a line `[tool: Name {input}]`.
    content: String,
    #[schema(value_type = Option<String>)]
    refusal: Option<String>,
}

/// One streamed chunk (`object: "chat.completion.chunk"`), sent as `data: <json>`; the stream
/// ends with `data: [DONE]`, or with `data: {"error": …}` when the turn fails.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    id: String,
    /// `chat.completion.chunk`.
    object: &'static str,
    created: i64,
    model: String,
    /// One choice; none on the `usage` chunk.
    choices: Vec<ChunkChoice>,
    /// Only with `stream_options.include_usage`: null, then the totals on the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CompletionUsage>)]
    usage: Option<Option<CompletionUsage>>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    #[schema(required = true)]
    finish_reason: Option<&'static str>,
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
struct Delta {
    /// On the first chunk only: `assistant`.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    object: &'static str,
    data: Vec<Model>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    id: String,
    /// `model`.
    object: &'static str,
    /// Unix seconds (0: not known).
    created: i64,
    owned_by: &'static str,
}

fn model(id: String) -> Model {
    Model { id, object: "model", created: 0, owned_by: "anthropic" }
}

/// The models a request may name: the service's default (`defaults.model`, or `default` for
/// the CLI's own), then, when `session.overridable` has `model`, the CLI's aliases `sonnet`,
/// `opus`, `haiku` (full `claude-…` names are accepted too).
#[utoipa::path(
    get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "`invalid_api_key`: no key, or an unknown or revoked one", body = OpenAiErrorResponse),
        (status = 429, description = "`rate_limited`: too many failed authentications from this address", body = OpenAiErrorResponse),
        (status = 503, description = "`storage_unavailable`", body = OpenAiErrorResponse),
    ),
)]
pub(super) async fn list_models(state: web::Data<AppState>, caller: Result<Caller, ApiError>) -> OpenAiResult {
    caller?;
    let data = convo::listed_models(&state.settings).into_iter().map(model).collect();
    Ok(HttpResponse::Ok().json(ModelList { object: "list", data }))
}

/// One model of `GET /v1/models`.
#[utoipa::path(
    get, path = "/v1/models/{model}", tag = "openai",
    params(("model" = String, Path)),
    responses(
        (status = 200, body = Model),
        (status = 401, description = "`invalid_api_key`: no key, or an unknown or revoked one", body = OpenAiErrorResponse),
        (status = 404, description = "`model_not_found`", body = OpenAiErrorResponse),
        (status = 429, description = "`rate_limited`: too many failed authentications from this address", body = OpenAiErrorResponse),
        (status = 503, description = "`storage_unavailable`", body = OpenAiErrorResponse),
    ),
)]
pub(super) async fn get_model(
    state: web::Data<AppState>,
    caller: Result<Caller, ApiError>,
    path: web::Path<String>,
) -> OpenAiResult {
    caller?;
    let id = path.into_inner();
    if !convo::listed_models(&state.settings).contains(&id) {
        let mut e = OpenAiError::model_not_found(&id);
        e.status = actix_web::http::StatusCode::NOT_FOUND;
        return Err(e);
    }
    Ok(HttpResponse::Ok().json(model(id)))
}

/// A chat completion: the conversation's session (see the module's note) takes the last user
/// message as a turn. `stream: true` answers Server-Sent Events: a first chunk with
/// `delta.role`, content deltas, a chunk with `finish_reason`, the `usage` chunk when asked,
/// then `data: [DONE]`.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "openai",
    params(("X-Session-Id" = Option<String>, Header, description = "The session to continue (one of the caller's)")),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer; `X-Session-Id` names its session",
            headers(("X-Session-Id" = String, description = "The conversation's session")),
            content(
                (ChatCompletion = "application/json"),
                (ChatCompletionChunk = "text/event-stream"),
            )),
        (status = 400, description = "`invalid_request` (a missing or bad field; `param` names it), `model_not_found`", body = OpenAiErrorResponse),
        (status = 401, description = "`invalid_api_key`: no key, or an unknown or revoked one", body = OpenAiErrorResponse),
        (status = 403, description = "`forbidden`", body = OpenAiErrorResponse),
        (status = 404, description = "`session_not_found`: `X-Session-Id` is not one of the caller's sessions; `user_not_found`", body = OpenAiErrorResponse),
        (status = 409, description = "`session_closed`, `credentials_required`", body = OpenAiErrorResponse),
        (status = 410, description = "`session_expired`", body = OpenAiErrorResponse),
        (status = 413, description = "`payload_too_large`", body = OpenAiErrorResponse),
        (status = 415, description = "`unsupported_media_type`", body = OpenAiErrorResponse),
        (status = 429, description = "`session_busy`, `quota_exceeded`, `rate_limited`, `budget_exceeded` (type `insufficient_quota`)", body = OpenAiErrorResponse),
        (status = 502, description = "`cli_failed`", body = OpenAiErrorResponse),
        (status = 503, description = "`overloaded`, `memory_pressure`, `storage_unavailable`", body = OpenAiErrorResponse),
        (status = 504, description = "`turn_timeout`", body = OpenAiErrorResponse),
    ),
)]
pub(super) async fn post_chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Result<Caller, ApiError>,
    body: Result<JsonBody<ChatCompletionRequest>, ApiError>,
) -> OpenAiResult {
    let caller = caller?;
    let JsonBody(body) = body?;
    let asked = Asked::validate(&state, &req, body)?;
    let conversation = find_or_create(&state, &caller, &asked).await?;
    let timeout = Duration::from_secs(asked.timeout);
    let revoked = if asked.stream { Some(state.revocations.watch(&caller, &state.storage).await?) } else { None };
    let turn = state.sessions.start_turn(&caller, &conversation.session_id, asked.last_user.clone(), timeout).await?;
    let meta =
        Meta { id: format!("chatcmpl-{}", turn.turn_id), created: clock::now_ms() / 1000, model: asked.model.clone() };
    let mut history = asked.prefix;
    history.push(("user".into(), asked.last_user));
    let remember = Remember {
        storage: state.storage.clone(),
        owner: conversation.owner,
        user_tag: asked.user_tag,
        session_id: conversation.session_id.clone(),
        history,
    };
    let session_header = HeaderValue::from_str(&conversation.session_id)
        .map_err(|e| ApiError::Internal(format!("session id is not a header value: {e}")))?;
    match revoked {
        Some(revoked) => {
            let stream = ChunkStream {
                events: turn.events,
                revoked,
                reply: Reply::default(),
                meta,
                include_usage: asked.include_usage,
                remember: Some(remember),
                started: false,
                done: false,
                _counted: SseClientGuard::new(state.metrics.clone()),
            };
            Ok(HttpResponse::Ok()
                .insert_header((SESSION_HEADER, session_header))
                .insert_header(("content-type", "text/event-stream"))
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .streaming(futures_util::stream::unfold(stream, ChunkStream::next)))
        }
        None => {
            let (reply, result) = whole_turn(turn.events).await?;
            remember.store(reply.content()).await;
            Ok(HttpResponse::Ok().insert_header((SESSION_HEADER, session_header)).json(ChatCompletion {
                id: meta.id,
                object: "chat.completion",
                created: meta.created,
                model: meta.model,
                choices: vec![Choice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: reply.content().to_string(),
                        refusal: None,
                    },
                    finish_reason: convo::finish_reason(&result),
                    logprobs: None,
                }],
                usage: CompletionUsage::from(&result.usage),
            }))
        }
    }
}

/// A request, checked.
struct Asked {
    model: String,
    /// The model a new session gets (`None`: the service's default).
    new_session_model: Option<String>,
    /// The first system message, for a new session's `append_system_prompt` (when allowed).
    system: Option<String>,
    /// Every message before the last user one, as `(role, text)`.
    prefix: Vec<(String, String)>,
    has_history: bool,
    last_user: String,
    user_tag: String,
    /// The admin's (or open mode's) user, from `user`.
    named_user: Option<String>,
    session_header: Option<String>,
    stream: bool,
    include_usage: bool,
    timeout: u64,
}

impl Asked {
    fn validate(state: &AppState, req: &HttpRequest, body: ChatCompletionRequest) -> Result<Asked, OpenAiError> {
        let new_session_model = convo::resolve_model(&state.settings, &body.model)
            .map_err(|()| OpenAiError::model_not_found(&body.model))?;
        if body.n.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid("n", "Only n = 1 is supported"));
        }
        let timeout = body.timeout.unwrap_or(super::chat::DEFAULT_TIMEOUT_SECS);
        if !(1..=super::chat::MAX_TIMEOUT_SECS).contains(&timeout) {
            let max = super::chat::MAX_TIMEOUT_SECS;
            return Err(OpenAiError::invalid("timeout", format!("must be from 1 to {max} seconds")));
        }
        let mut messages = body.messages;
        let last = match messages.pop() {
            Some(m) if m.role == "user" => m,
            Some(_) => return Err(OpenAiError::invalid("messages", "The last message must be the user's")),
            None => return Err(OpenAiError::invalid("messages", "At least one message is required")),
        };
        let last_user = last.text();
        if last_user.trim().is_empty() {
            return Err(OpenAiError::invalid("messages", "The last user message must not be blank"));
        }
        if last_user.chars().count() > super::chat::MAX_MESSAGE_CHARS {
            let max = super::chat::MAX_MESSAGE_CHARS;
            return Err(OpenAiError::invalid("messages", format!("The last message must be at most {max} characters")));
        }
        let system_allowed = state.settings.session.overridable.iter().any(|o| o == "append_system_prompt");
        let system = messages.first().filter(|m| m.is_system() && system_allowed).map(ChatMessage::text);
        let has_history = convo::has_history(&messages);
        let prefix = messages.iter().map(|m| (m.role.clone(), m.text())).collect();
        let session_header = match req.headers().get(SESSION_HEADER) {
            None => None,
            Some(v) => match v.to_str().map(str::trim) {
                Ok("") => None,
                Ok(id) => Some(id.to_string()),
                Err(_) => return Err(OpenAiError::invalid("X-Session-Id", "must be a session id")),
            },
        };
        Ok(Asked {
            model: body.model,
            new_session_model,
            system,
            prefix,
            has_history,
            last_user,
            user_tag: body.user.clone().unwrap_or_default(),
            named_user: body.user,
            session_header,
            stream: body.stream,
            include_usage: body.stream_options.is_some_and(|o| o.include_usage),
            timeout,
        })
    }

    fn prefix_hash(&self) -> String {
        convo::conversation_hash(&self.user_tag, self.prefix.iter().map(|(r, t)| (r.as_str(), t.as_str())))
    }
}

/// The session a request continues, and whose it is.
struct Conversation {
    session_id: String,
    owner: String,
}

/// `X-Session-Id`'s session (the caller's, else 404), else the one the prefix's hash maps to
/// for this owner (if still open), else a new one.
async fn find_or_create(state: &AppState, caller: &Caller, asked: &Asked) -> Result<Conversation, OpenAiError> {
    if let Some(id) = &asked.session_header {
        let row = state.sessions.get(caller, id).await?;
        return Ok(Conversation { session_id: row.session_id, owner: row.user_id });
    }
    let owner = match caller {
        Caller::User { user_id, .. } => user_id.clone(),
        Caller::Admin | Caller::Open => match asked.named_user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => caller.acting_user(Some(user)).map_err(|_| {
                OpenAiError::invalid(
                    "user",
                    format!("`user` names the session's user: {}", crate::domain::ids::USER_ID_RULE),
                )
            })?,
            None => return Err(OpenAiError::invalid("user", "With the admin key, `user` must name the user")),
        },
    };
    if asked.has_history
        && let Some(id) =
            state.storage.find_openai_conversation(&owner, &asked.prefix_hash()).await.map_err(ApiError::from)?
    {
        match state.sessions.get(caller, &id).await {
            Ok(row) if !matches!(row.status, SessionStatus::Closed | SessionStatus::Expired) => {
                return Ok(Conversation { session_id: row.session_id, owner: row.user_id });
            }
            // Closed or expired since, or gone: the conversation goes on in a new session.
            Ok(_) | Err(ApiError::SessionNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut options = serde_json::Map::new();
    if let Some(model) = &asked.new_session_model {
        options.insert("model".into(), Value::String(model.clone()));
    }
    if let Some(system) = asked.system.as_ref().filter(|s| !s.trim().is_empty()) {
        options.insert("append_system_prompt".into(), Value::String(system.clone()));
    }
    let mut metadata = json!({"source": "openai"});
    if !asked.user_tag.is_empty() {
        metadata["openai_user"] = Value::String(asked.user_tag.clone());
    }
    let create = CreateSession {
        user_id: (!matches!(caller, Caller::User { .. })).then(|| owner.clone()),
        subdir: None,
        metadata: Some(metadata),
        options: Some(Value::Object(options)),
    };
    let session = state.sessions.create(caller, create).await?;
    Ok(Conversation { session_id: session.session_id, owner: session.user_id })
}

/// What to store once the answer is known: the conversation as the client will send it back
/// next time (its messages, this one, the answer) → this session.
struct Remember {
    storage: Storage,
    owner: String,
    user_tag: String,
    session_id: String,
    history: Vec<(String, String)>,
}

impl Remember {
    async fn store(mut self, answer: &str) {
        self.history.push(("assistant".into(), answer.to_string()));
        let hash = convo::conversation_hash(&self.user_tag, self.history.iter().map(|(r, t)| (r.as_str(), t.as_str())));
        // The answer stands without it: the next request then starts a new session.
        if let Err(e) =
            self.storage.put_openai_conversation(&self.owner, &hash, &self.session_id, clock::now_ms()).await
        {
            log::warn!("session {}: cannot record its OpenAI conversation: {e}", self.session_id);
        }
    }
}

/// The whole turn: its content and result, or its failure.
async fn whole_turn(mut events: mpsc::Receiver<Arc<SessionEvent>>) -> Result<(Reply, TurnResult), OpenAiError> {
    let mut reply = Reply::default();
    while let Some(event) = events.recv().await {
        match &event.outcome {
            Some(TurnOutcome::Done { result, .. }) => {
                reply.done(result);
                return Ok((reply, result.clone()));
            }
            Some(TurnOutcome::Failed(e)) => return Err(e.clone().into()),
            None => {
                if let Ok(frame) = serde_json::from_str::<Value>(&event.json) {
                    reply.frame(&frame);
                }
            }
        }
    }
    Err(ApiError::Internal("the turn ended without a result".into()).into())
}

/// What every chunk repeats.
struct Meta {
    id: String,
    created: i64,
    model: String,
}

/// The streamed answer: one `data:` line per content piece, ending after `[DONE]` or an error
/// (or at once when the key is revoked). The turn goes on if the client leaves.
struct ChunkStream {
    events: mpsc::Receiver<Arc<SessionEvent>>,
    revoked: RevocationWatch,
    reply: Reply,
    meta: Meta,
    include_usage: bool,
    remember: Option<Remember>,
    started: bool,
    done: bool,
    _counted: SseClientGuard,
}

type Item = Result<Bytes, std::convert::Infallible>;

impl ChunkStream {
    fn chunk(&self, delta: Delta, finish_reason: Option<&'static str>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason, logprobs: None }],
            usage: self.include_usage.then_some(None),
        };
        data_line(&chunk)
    }

    fn content(&self, piece: String) -> String {
        self.chunk(Delta { content: Some(piece), ..Delta::default() }, None)
    }

    /// The last lines: what the end adds, the finish, the usage when asked, `[DONE]`.
    fn ending(&mut self, result: &TurnResult) -> String {
        let mut out = String::new();
        if let Some(piece) = self.reply.done(result) {
            out.push_str(&self.content(piece));
        }
        out.push_str(&self.chunk(Delta::default(), Some(convo::finish_reason(result))));
        if self.include_usage {
            let usage = ChatCompletionChunk {
                id: self.meta.id.clone(),
                object: "chat.completion.chunk",
                created: self.meta.created,
                model: self.meta.model.clone(),
                choices: Vec::new(),
                usage: Some(Some(CompletionUsage::from(&result.usage))),
            };
            out.push_str(&data_line(&usage));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }

    async fn next(mut self) -> Option<(Item, Self)> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            let first = self.chunk(Delta { role: Some("assistant"), content: Some(String::new()) }, None);
            return Some((Ok(Bytes::from(first)), self));
        }
        loop {
            let event = tokio::select! {
                () = &mut self.revoked => return None,
                event = tokio::time::timeout(PING_EVERY, self.events.recv()) => event,
            };
            let event = match event {
                Err(_) => return Some((Ok(Bytes::from_static(b": ping\n\n")), self)),
                Ok(None) => {
                    self.done = true;
                    let e = OpenAiError::from(ApiError::Internal("the turn ended without a result".into()));
                    return Some((Ok(Bytes::from(data_line(&e.body()))), self));
                }
                Ok(Some(event)) => event,
            };
            match &event.outcome {
                Some(TurnOutcome::Done { result, .. }) => {
                    self.done = true;
                    let out = self.ending(result);
                    if let Some(remember) = self.remember.take() {
                        remember.store(self.reply.content()).await;
                    }
                    return Some((Ok(Bytes::from(out)), self));
                }
                Some(TurnOutcome::Failed(e)) => {
                    self.done = true;
                    let body = OpenAiError::from(e.clone()).body();
                    return Some((Ok(Bytes::from(data_line(&body))), self));
                }
                None => {
                    let piece = serde_json::from_str::<Value>(&event.json).ok().and_then(|f| self.reply.frame(&f));
                    if let Some(piece) = piece {
                        let line = self.content(piece);
                        return Some((Ok(Bytes::from(line)), self));
                    }
                }
            }
        }
    }
}

fn data_line(value: &impl Serialize) -> String {
    format!("data: {}\n\n", serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}
