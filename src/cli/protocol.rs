//! The CLI's stream-json protocol as typed messages, both ways. Only the fields the service
//! uses are modelled; unknown fields are ignored and unknown message types become
//! [`CliMessage::Unknown`] (logged, never fatal).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain;

// ---------------------------------------------------------------- host → CLI

/// A user turn: `{"type":"user","message":{"role":"user","content":…},…}`.
#[derive(Debug, Serialize)]
pub struct UserInput<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: UserInputMessage<'a>,
    pub parent_tool_use_id: Option<()>,
    pub session_id: &'a str,
    pub uuid: &'a str,
    /// `next`: a message for the running turn, taken at its next tool boundary (steering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct UserInputMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

impl<'a> UserInput<'a> {
    pub fn new(session_id: &'a str, uuid: &'a str, text: &'a str) -> Self {
        UserInput {
            kind: "user",
            message: UserInputMessage { role: "user", content: text },
            parent_tool_use_id: None,
            session_id,
            uuid,
            priority: None,
        }
    }

    /// A message for the running turn (`priority: "next"`): the CLI hands it to the model at
    /// the turn's next tool boundary, or runs it right after the turn if there is none.
    pub fn steer(session_id: &'a str, uuid: &'a str, text: &'a str) -> Self {
        UserInput { priority: Some("next"), ..UserInput::new(session_id, uuid, text) }
    }
}

/// A control request we send (`initialize`, `get_usage`, `interrupt`, `set_model`,
/// `set_permission_mode`, `get_context_usage`).
#[derive(Debug, Serialize)]
pub struct OutgoingControlRequest<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request_id: &'a str,
    pub request: Value,
}

impl<'a> OutgoingControlRequest<'a> {
    pub fn new(request_id: &'a str, request: Value) -> Self {
        OutgoingControlRequest { kind: "control_request", request_id, request }
    }
}

/// Our answer to a request the CLI made.
#[derive(Debug, Serialize)]
pub struct OutgoingControlResponse<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub response: ControlResponseBody<'a>,
}

#[derive(Debug, Serialize)]
pub struct ControlResponseBody<'a> {
    pub subtype: &'static str,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

impl<'a> OutgoingControlResponse<'a> {
    pub fn success(request_id: &'a str, response: Value) -> Self {
        OutgoingControlResponse {
            kind: "control_response",
            response: ControlResponseBody { subtype: "success", request_id, response: Some(response), error: None },
        }
    }

    pub fn error(request_id: &'a str, error: &'a str) -> Self {
        OutgoingControlResponse {
            kind: "control_response",
            response: ControlResponseBody { subtype: "error", request_id, response: None, error: Some(error) },
        }
    }
}

/// One JSON line for stdin (serde only, so the CLI never sees invalid JSON).
pub fn to_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

// ---------------------------------------------------------------- CLI → host

/// One line of the CLI's stdout.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum CliMessage {
    #[serde(rename = "system")]
    System(SystemMessage),
    #[serde(rename = "assistant")]
    Assistant(AssistantMessage),
    #[serde(rename = "user")]
    User(UserMessage),
    #[serde(rename = "result")]
    Result(ResultMessage),
    #[serde(rename = "stream_event")]
    StreamEvent(StreamEventMessage),
    #[serde(rename = "control_request")]
    ControlRequest(IncomingControlRequest),
    #[serde(rename = "control_response")]
    ControlResponse(IncomingControlResponse),
    #[serde(rename = "control_cancel_request")]
    ControlCancel { request_id: String },
    /// What became of a user message we sent with a `uuid`: `queued`, `started`, `completed`,
    /// `cancelled`, `discarded`, `refused`.
    #[serde(rename = "command_lifecycle")]
    CommandLifecycle {
        command_uuid: String,
        #[serde(default)]
        state: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct SystemMessage {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The rest of a `system/init` frame: what the agent can use this turn.
    #[serde(flatten)]
    pub init: Option<AgentInfo>,
}

/// What the CLI reports about itself at the start of each turn (`system/init`), as it spells
/// it; the API shows [`domain::AgentInfo`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AgentInfo {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub claude_code_version: Option<String>,
    #[serde(default, rename = "permissionMode")]
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub mcp_servers: Vec<Value>,
    #[serde(default)]
    pub skills: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct AssistantMessage {
    pub message: ContentMessage,
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
    /// Its uuid in the CLI's transcript (where `--resume-session-at` can cut).
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UserMessage {
    pub message: ContentMessage,
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
    #[serde(default, rename = "isReplay")]
    pub is_replay: bool,
}

#[derive(Debug, Deserialize)]
pub struct ContentMessage {
    #[serde(default)]
    pub content: Content,
}

/// `content` is a string or a list of blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Blocks(Vec::new())
    }
}

impl Content {
    pub fn blocks(&self) -> &[ContentBlock] {
        match self {
            Content::Blocks(b) => b,
            Content::Text(_) => &[],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ContentBlock {
    #[serde(rename = "text")]
    Text { text: String },
    #[serde(rename = "tool_use")]
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(rename = "tool_result")]
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Value,
        #[serde(default)]
        is_error: Option<bool>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub struct StreamEventMessage {
    pub event: StreamEvent,
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum StreamEvent {
    #[serde(rename = "content_block_delta")]
    ContentBlockDelta { delta: Delta },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(other)]
    Other,
}

/// Tokens a turn used, as the CLI reports them; the API shows [`domain::Usage`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: i64,
    #[serde(default)]
    pub output_tokens: i64,
}

#[derive(Debug, Deserialize)]
pub struct ResultMessage {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub num_turns: i64,
    #[serde(default)]
    pub duration_ms: i64,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The uuids of the user messages this result answers.
    #[serde(default)]
    pub user_message_uuids: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct IncomingControlRequest {
    pub request_id: String,
    pub request: Value,
}

impl IncomingControlRequest {
    pub fn subtype(&self) -> &str {
        self.request.get("subtype").and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Debug, Deserialize)]
pub struct IncomingControlResponse {
    pub response: IncomingControlResponseBody,
}

#[derive(Debug, Deserialize)]
pub struct IncomingControlResponseBody {
    pub subtype: String,
    pub request_id: String,
    #[serde(default)]
    pub response: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    /// A machine-readable reason some errors carry (`bypass_not_launched`).
    #[serde(default)]
    pub error_code: Option<String>,
}

/// A control request the CLI refused: its message and, when it gives one, its code.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlError {
    pub code: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl IncomingControlResponseBody {
    /// The answer's payload, or why the CLI refused.
    pub fn into_result(self) -> Result<Value, ControlError> {
        if self.subtype == "success" {
            Ok(self.response.unwrap_or(Value::Null))
        } else {
            Err(ControlError { code: self.error_code, message: self.error.unwrap_or_else(|| "error".into()) })
        }
    }
}

/// The answer to `get_context_usage`, as the CLI spells it; the API shows
/// [`domain::ContextUsage`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ContextUsage {
    #[serde(default)]
    pub categories: Vec<ContextCategory>,
    #[serde(rename = "totalTokens")]
    pub total_tokens: i64,
    #[serde(rename = "maxTokens")]
    pub max_tokens: i64,
    #[serde(default)]
    pub percentage: f64,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ContextCategory {
    pub name: String,
    #[serde(default)]
    pub tokens: i64,
    /// `used`, `deferred`, `buffer`, `free` (2.1.330).
    #[serde(default)]
    pub kind: Option<String>,
}

impl From<ContextUsage> for domain::ContextUsage {
    fn from(c: ContextUsage) -> Self {
        domain::ContextUsage {
            used_tokens: c.total_tokens,
            window_tokens: c.max_tokens,
            // The CLI rounds to whole percents (1 for 1.43 %); a meter wants a finer figure.
            percent: if c.max_tokens > 0 {
                (c.total_tokens as f64 * 1000.0 / c.max_tokens as f64).round() / 10.0
            } else {
                c.percentage
            },
            model: c.model,
            categories: c
                .categories
                .into_iter()
                .map(|k| domain::ContextCategory { name: k.name, tokens: k.tokens, kind: k.kind })
                .collect(),
        }
    }
}

/// Parses one stdout line. `Ok(None)` for lines that are not JSON objects (some builds print
/// debug text to stdout); they are skipped.
pub fn parse_line(line: &[u8]) -> Result<Option<CliMessage>, serde_json::Error> {
    let trimmed = line.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return Ok(None);
    }
    serde_json::from_slice(trimmed).map(Some)
}

/// The text of a tool result's `content` (a string, or text blocks joined).
pub fn tool_result_text(content: &Value) -> Value {
    match content {
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
            if texts.len() == blocks.len() { Value::String(texts.join("\n")) } else { content.clone() }
        }
        other => other.clone(),
    }
}

impl From<Usage> for domain::Usage {
    fn from(u: Usage) -> Self {
        domain::Usage { input_tokens: u.input_tokens, output_tokens: u.output_tokens }
    }
}

impl From<AgentInfo> for domain::AgentInfo {
    fn from(i: AgentInfo) -> Self {
        domain::AgentInfo {
            model: i.model,
            claude_code_version: i.claude_code_version,
            permission_mode: i.permission_mode,
            tools: i.tools,
            mcp_servers: i.mcp_servers,
            skills: i.skills,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_init_frame_maps_to_the_api_agent_info() {
        let init = br#"{"type":"system","subtype":"init","session_id":"s","model":"m","permissionMode":"plan","tools":["Read"],"claude_code_version":"2.1","mcp_servers":[],"skills":[]}"#;
        let Some(CliMessage::System(system)) = parse_line(init).unwrap() else { panic!("not a system line") };
        let info = domain::AgentInfo::from(system.init.unwrap());
        assert_eq!(info.permission_mode.as_deref(), Some("plan"));
        // The API spells it in snake case whatever the CLI calls it.
        let shown = serde_json::to_value(&info).unwrap();
        assert_eq!(shown["permission_mode"], "plan");
        assert!(shown.get("permissionMode").is_none());
        assert_eq!(domain::Usage::from(Usage { input_tokens: 3, output_tokens: 4 }).output_tokens, 4);
    }

    #[test]
    fn parses_the_protocol_lines_and_tolerates_the_unknown() {
        let delta = br#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello "}},"session_id":"s","parent_tool_use_id":null,"uuid":"u","new_field":1}"#;
        match parse_line(delta).unwrap().unwrap() {
            CliMessage::StreamEvent(StreamEventMessage {
                event: StreamEvent::ContentBlockDelta { delta: Delta::Text { text } },
                ..
            }) => assert_eq!(text, "Hello "),
            other => panic!("{other:?}"),
        }
        let tool = br#"{"type":"assistant","message":{"id":"m","content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"echo hi"}}]},"parent_tool_use_id":null}"#;
        assert!(matches!(parse_line(tool).unwrap().unwrap(), CliMessage::Assistant(_)));
        let result = br#"{"type":"result","subtype":"success","is_error":false,"duration_ms":136,"num_turns":1,"result":"Hi","total_cost_usd":0.000141,"usage":{"input_tokens":12,"output_tokens":7,"cache_read_input_tokens":0},"modelUsage":{}}"#;
        match parse_line(result).unwrap().unwrap() {
            CliMessage::Result(r) => {
                assert_eq!(r.result.as_deref(), Some("Hi"));
                assert_eq!(r.usage, Usage { input_tokens: 12, output_tokens: 7 });
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_line(br#"{"type":"rate_limit_event","x":1}"#).unwrap(), Some(CliMessage::Unknown)));
        assert!(parse_line(b"[SandboxDebug] hello").unwrap().is_none());
        assert!(parse_line(b"{not json").is_err());
        let ctl = br#"{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"still_queued":[]}}}"#;
        assert!(matches!(parse_line(ctl).unwrap(), Some(CliMessage::ControlResponse(_))));
    }

    #[test]
    fn control_errors_keep_their_code_and_context_usage_maps_to_the_api() {
        // As 2.1.330 answers a refused `set_permission_mode`.
        let refused = br#"{"type":"control_response","response":{"subtype":"error","request_id":"r3","error":"Cannot set permission mode to bypassPermissions","error_code":"bypass_not_launched"}}"#;
        let Some(CliMessage::ControlResponse(r)) = parse_line(refused).unwrap() else { panic!("not a response") };
        let err = r.response.into_result().unwrap_err();
        assert_eq!(err.code.as_deref(), Some("bypass_not_launched"));
        let usage = json!({"categories":[{"id":"system_prompt","name":"System prompt","tokens":2330,"color":"x","kind":"used"},
            {"id":"free_space","name":"Free space","tokens":952690,"kind":"free"}],
            "totalTokens":14310,"maxTokens":1000000,"percentage":1,"model":"m","gridRows":[],"apiUsage":null});
        let mapped = domain::ContextUsage::from(serde_json::from_value::<ContextUsage>(usage).unwrap());
        assert_eq!((mapped.used_tokens, mapped.window_tokens, mapped.percent), (14310, 1_000_000, 1.4));
        assert_eq!(mapped.categories[1].name, "Free space");
        assert_eq!(mapped.categories[1].kind.as_deref(), Some("free"));
        assert!(serde_json::from_value::<ContextUsage>(json!({"categories":[]})).is_err(), "totals are required");
    }

    #[test]
    fn input_lines_are_single_json_objects() {
        let line = to_line(&UserInput::new("", "u1", "say \"hi\"\nnow"));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["message"]["content"], "say \"hi\"\nnow");
        assert_eq!(v["parent_tool_use_id"], Value::Null);
    }
}
