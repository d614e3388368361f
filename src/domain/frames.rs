//! What a turn emits: SSE frames with the seed's five keys (`type, text, tool_name,
//! tool_input, error`, unused ones null) plus the fields of their type, and the turn's summary.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::Usage;

/// One tool call of a turn, as `/chat` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCall {
    /// The CLI's `tool_use` id.
    pub id: String,
    pub tool: String,
    pub input: Value,
    /// What the tool returned (text, or the CLI's content blocks); null if it never answered.
    pub output: Value,
    pub is_error: bool,
}

/// The `result` of a `done` frame.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TurnResult {
    pub text: String,
    pub subtype: String,
    pub is_error: bool,
    pub cost_usd: f64,
    pub usage: Usage,
    pub num_turns: i64,
    pub duration_ms: i64,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrameType {
    /// A piece of the answer's text, as the model writes it.
    TextDelta,
    /// The agent calls a tool: `tool_name`, `tool_input`, `tool_use_id`.
    ToolUse,
    /// The tool's answer: `tool_use_id`, `output`, `is_error`.
    ToolResult,
    /// The agent asks to use a tool; answer with `POST /sessions/{id}/permissions/{request_id}`.
    PermissionRequest,
    /// The turn ended: `text` is null (the whole answer is `result.text`, so a client that
    /// joins every frame's `text` shows it once), `result` its figures.
    Done,
    /// The turn failed: `error` (message) and `code` (stable).
    Error,
    /// A steered or queued message was taken: `message_id`, `message` (its text). A queued
    /// message's turn starts with it (its `turn_id` is the message id); a steered one's
    /// comes within the turn it was handed to.
    MessageAccepted,
    /// A steered or queued message will not run: `message_id`, `reason` (`stopped`: its CLI
    /// stopped; `interrupted`: an interrupt dropped it; `cancelled`: the CLI did not take it;
    /// `refused`: its turn could not start, `code` says why) and `error` (for people).
    MessageDropped,
}

/// One SSE frame's `data:` (its `id:` is the event id). The seed's five keys (`type`, `text`,
/// `tool_name`, `tool_input`, `error`) are always present, null when unused; the others appear
/// on the frame types they belong to.
#[derive(Serialize, ToSchema)]
#[schema(as = StreamFrame)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type")]
    kind: FrameType,
    #[schema(required = true)]
    text: Option<&'a str>,
    #[schema(required = true)]
    tool_name: Option<&'a str>,
    #[schema(required = true, value_type = Option<Object>)]
    tool_input: Option<&'a Value>,
    #[schema(required = true)]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_use_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_error: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    /// The steered or queued message's id (`message_accepted`, `message_dropped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    /// The accepted message's text (`message_accepted`; not in `text`, which is the answer's).
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    /// Why a message was dropped (`message_dropped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<DropReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TurnResult>)]
    result: Option<&'a TurnResult>,
    /// The error's stable code, as in error bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = error_code_ref)]
    code: Option<&'a str>,
}

/// `code` is one of the `ErrorCode` schema's values; named, not imported, so this leaf does not
/// depend on the HTTP error type.
fn error_code_ref() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("ErrorCode")
}

impl<'a> Frame<'a> {
    fn new(kind: FrameType) -> Self {
        Frame {
            kind,
            text: None,
            tool_name: None,
            tool_input: None,
            error: None,
            tool_use_id: None,
            output: None,
            is_error: None,
            request_id: None,
            message_id: None,
            message: None,
            reason: None,
            result: None,
            code: None,
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

pub fn text_delta(text: &str) -> String {
    Frame { text: Some(text), ..Frame::new(FrameType::TextDelta) }.json()
}

pub fn tool_use(id: &str, name: &str, input: &Value) -> String {
    Frame { tool_name: Some(name), tool_input: Some(input), tool_use_id: Some(id), ..Frame::new(FrameType::ToolUse) }
        .json()
}

pub fn tool_result(id: &str, name: Option<&str>, output: &Value, is_error: bool) -> String {
    Frame {
        tool_name: name,
        tool_use_id: Some(id),
        output: Some(output),
        is_error: Some(is_error),
        ..Frame::new(FrameType::ToolResult)
    }
    .json()
}

pub fn permission_request(request_id: &str, tool_name: &str, tool_input: &Value) -> String {
    Frame {
        tool_name: Some(tool_name),
        tool_input: Some(tool_input),
        request_id: Some(request_id),
        ..Frame::new(FrameType::PermissionRequest)
    }
    .json()
}

pub fn done(result: &TurnResult) -> String {
    Frame { result: Some(result), ..Frame::new(FrameType::Done) }.json()
}

/// The failure frame: `message` for people, `code` the stable code clients branch on.
pub fn error(message: &str, code: &str) -> String {
    Frame { error: Some(message), code: Some(code), ..Frame::new(FrameType::Error) }.json()
}

pub fn message_accepted(message_id: &str, text: &str) -> String {
    Frame { message_id: Some(message_id), message: Some(text), ..Frame::new(FrameType::MessageAccepted) }.json()
}

/// Why a steered or queued message will not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The session's CLI stopped (closed, evicted, crashed, restarted) before it ran.
    Stopped,
    /// An interrupt dropped it (`cancel_queue`, or a steer the interrupted turn had not taken).
    Interrupted,
    /// The CLI did not take it.
    Cancelled,
    /// Its turn could not start: `code` says why.
    Refused,
}

/// A steered or queued message that will not run; `code` only for `refused`.
pub fn message_dropped(message_id: &str, reason: DropReason, why: &str, code: Option<&str>) -> String {
    Frame {
        message_id: Some(message_id),
        reason: Some(reason),
        error: Some(why),
        code,
        ..Frame::new(FrameType::MessageDropped)
    }
    .json()
}

/// Which frames a stream sends: all of them, or only what the seed's `StreamChunk` knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FrameSet {
    /// Every frame type, with the fields of its type.
    #[default]
    Full,
    /// The seed's four types (`text_delta`, `tool_use`, `done`, `error`) with its five keys
    /// only: `tool_result` and `permission_request` frames are left out.
    Seed,
}

/// The seed's `StreamChunk`: what a `seed` stream sends of a frame.
#[derive(serde::Deserialize, Serialize)]
struct SeedChunk<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tool_name: Option<std::borrow::Cow<'a, str>>,
    tool_input: Option<Value>,
    #[serde(borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
}

/// A frame as the seed's clients get it: `None` for a type they do not know (their pydantic
/// `Literal` would raise), else the frame cut down to the five keys.
pub fn seed_frame(json: &str) -> Option<String> {
    let chunk: SeedChunk = serde_json::from_str(json).ok()?;
    matches!(chunk.kind, "text_delta" | "tool_use" | "done" | "error").then(|| serde_json::to_string(&chunk).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_has_the_five_seed_keys() {
        let frames = [
            text_delta("hi"),
            tool_use("t1", "Bash", &serde_json::json!({"command": "ls"})),
            tool_result("t1", Some("Bash"), &Value::String("out".into()), false),
            done(&TurnResult {
                text: "x".into(),
                subtype: "success".into(),
                is_error: false,
                cost_usd: 0.1,
                usage: Usage::default(),
                num_turns: 1,
                duration_ms: 5,
            }),
            permission_request("r1", "Bash", &serde_json::json!({"command": "rm"})),
            error("boom", "cli_failed"),
        ];
        let done: Value = serde_json::from_str(&frames[3]).unwrap();
        assert_eq!(done["text"], Value::Null, "the answer is in result.text only");
        assert_eq!(done["result"]["text"], "x");
        for f in frames {
            let v: Value = serde_json::from_str(&f).unwrap();
            for key in ["type", "text", "tool_name", "tool_input", "error"] {
                assert!(v.get(key).is_some(), "{key} in {f}");
            }
        }
        let e: Value = serde_json::from_str(&error("boom", "cli_failed")).unwrap();
        assert_eq!(
            (e["type"].as_str(), e["error"].as_str(), e["code"].as_str()),
            (Some("error"), Some("boom"), Some("cli_failed"))
        );
    }

    #[test]
    fn the_schema_of_code_is_the_error_code_enum() {
        let schema = serde_json::to_value(<Frame as utoipa::PartialSchema>::schema()).unwrap();
        let code = &schema["properties"]["code"];
        assert!(code.to_string().contains("#/components/schemas/ErrorCode"), "{code}");
    }

    #[test]
    fn frames_carry_the_fields_of_their_type_only() {
        let v: Value = serde_json::from_str(&text_delta("hé")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "text_delta", "text": "hé", "tool_name": null, "tool_input": null, "error": null})
        );
        let v: Value = serde_json::from_str(&tool_result("t1", None, &Value::String("out".into()), true)).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["tool_use_id"].as_str(), v["is_error"].as_bool()),
            (Some("tool_result"), Some("t1"), Some(true))
        );
        assert!(v.get("result").is_none() && v.get("code").is_none() && v.get("request_id").is_none());
        let v: Value = serde_json::from_str(&permission_request("r1", "Bash", &serde_json::json!({}))).unwrap();
        assert_eq!((v["type"].as_str(), v["request_id"].as_str()), (Some("permission_request"), Some("r1")));
    }

    #[test]
    fn seed_frames_keep_the_seed_types_and_keys_only() {
        let used = tool_use("t1", "Bash", &serde_json::json!({"command": "ls"}));
        let seed: Value = serde_json::from_str(&seed_frame(&used).unwrap()).unwrap();
        assert_eq!(
            seed,
            serde_json::json!({"type": "tool_use", "text": null, "tool_name": "Bash",
                "tool_input": {"command": "ls"}, "error": null})
        );
        assert!(seed_frame(&tool_result("t1", None, &Value::Null, false)).is_none());
        assert!(seed_frame(&permission_request("r", "Bash", &Value::Null)).is_none());
        let escaped = text_delta("a \"quoted\"\nline");
        let seed: Value = serde_json::from_str(&seed_frame(&escaped).unwrap()).unwrap();
        assert_eq!(seed["text"], "a \"quoted\"\nline");
    }
}
