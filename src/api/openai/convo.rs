//! The pure parts of the OpenAI-compatible API: the request's messages, the hash that finds a
//! conversation's session again, the models a request may name, and the answer's content
//! built from a turn's frames (the same text streamed or not, so the hash of what the client
//! sends back is the hash stored).

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::domain::frames::TurnResult;
use crate::settings::Settings;

/// The model id `GET /v1/models` lists for the service's own default when `defaults.model`
/// is unset (the CLI then picks its default): naming it sets no model.
pub const DEFAULT_MODEL_ID: &str = "default";
/// The CLI's model aliases (`claude --model sonnet`), offered when requests may set `model`.
pub const MODEL_ALIASES: &[&str] = &["sonnet", "opus", "haiku"];

/// One message of `messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or a list of parts of which the `text` ones are read; null on an assistant
    /// message that only called tools.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub content: Value,
}

impl ChatMessage {
    /// The message's text: the string, or its text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    pub fn is_system(&self) -> bool {
        self.role == "system" || self.role == "developer"
    }
}

/// The hash naming a conversation so far: the client's `user` tag and every message's role and
/// text (trimmed: clients differ in the whitespace they send back). Length-prefixed fields, so
/// no two different conversations share an input.
pub fn conversation_hash<'a>(user_tag: &str, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"openai-conversation-v1");
    field(user_tag.as_bytes());
    for (role, text) in messages {
        field(role.as_bytes());
        field(text.trim().as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Whether a prefix already holds a conversation (something besides system messages): an
/// empty or system-only prefix starts a new one each time, else every new chat of a user
/// would land in one session.
pub fn has_history(prefix: &[ChatMessage]) -> bool {
    prefix.iter().any(|m| !m.is_system())
}

/// The ids `GET /v1/models` lists: the service's default, then (when `session.overridable`
/// has `model`) the CLI's aliases.
pub fn listed_models(settings: &Settings) -> Vec<String> {
    let mut ids = vec![settings.defaults.model.clone().unwrap_or_else(|| DEFAULT_MODEL_ID.to_string())];
    if model_overridable(settings) {
        for alias in MODEL_ALIASES {
            if !ids.iter().any(|id| id == alias) {
                ids.push(alias.to_string());
            }
        }
    }
    ids
}

fn model_overridable(settings: &Settings) -> bool {
    settings.session.overridable.iter().any(|o| o == "model")
}

/// What a request's `model` means: `Ok(None)` = the service's default (no per-session model),
/// `Ok(Some(name))` = that model for a new session, `Err(())` = not one this service offers.
/// Besides the listed ids, a full Claude model name (`claude-…`) is accepted when requests may
/// set `model`: new models come out faster than settings change.
#[allow(clippy::result_unit_err)]
pub fn resolve_model(settings: &Settings, asked: &str) -> Result<Option<String>, ()> {
    let default = settings.defaults.model.as_deref().unwrap_or(DEFAULT_MODEL_ID);
    if asked == default || asked == DEFAULT_MODEL_ID {
        return Ok(None);
    }
    if !model_overridable(settings) {
        return Err(());
    }
    let named = asked.starts_with("claude-")
        && crate::domain::AgentOption::Model.check(&Value::String(asked.to_string())).is_ok();
    if MODEL_ALIASES.contains(&asked) || named { Ok(Some(asked.to_string())) } else { Err(()) }
}

/// Builds the assistant's content from a turn's frames: text deltas as they come, and each tool
/// call as a line `[tool: Name {input}]`.
#[derive(Debug, Default)]
pub struct Reply {
    content: String,
    saw_text: bool,
}

impl Reply {
    /// The piece of content one frame adds (none for the frames that add nothing).
    pub fn frame(&mut self, frame: &Value) -> Option<String> {
        let piece = match frame["type"].as_str()? {
            "text_delta" => {
                self.saw_text = true;
                frame["text"].as_str()?.to_string()
            }
            "tool_use" => {
                let name = frame["tool_name"].as_str().unwrap_or("tool");
                let input = serde_json::to_string(&frame["tool_input"]).unwrap_or_default();
                let lead = if self.content.is_empty() || self.content.ends_with('\n') { "" } else { "\n" };
                format!("{lead}[tool: {name} {input}]\n")
            }
            _ => return None,
        };
        self.push(piece)
    }

    /// The piece the turn's end adds: its final text, when no delta carried any.
    pub fn done(&mut self, result: &TurnResult) -> Option<String> {
        if self.saw_text || result.text.is_empty() {
            return None;
        }
        self.saw_text = true;
        self.push(result.text.clone())
    }

    fn push(&mut self, piece: String) -> Option<String> {
        if piece.is_empty() {
            return None;
        }
        self.content.push_str(&piece);
        Some(piece)
    }

    pub fn content(&self) -> &str {
        &self.content
    }
}

/// OpenAI's `finish_reason` for a turn's result subtype.
pub fn finish_reason(result: &TurnResult) -> &'static str {
    match result.subtype.as_str() {
        "error_max_turns" | "error_max_budget_usd" => "length",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Usage;

    fn result(text: &str, subtype: &str) -> TurnResult {
        TurnResult {
            text: text.into(),
            subtype: subtype.into(),
            is_error: false,
            cost_usd: 0.0,
            usage: Usage { input_tokens: 1, output_tokens: 2 },
            num_turns: 1,
            duration_ms: 1,
        }
    }

    #[test]
    fn the_hash_is_stable_and_tells_conversations_apart() {
        let a = conversation_hash("", [("user", "hi"), ("assistant", "hello")]);
        assert_eq!(a, conversation_hash("", [("user", " hi\n"), ("assistant", "hello")]), "trimmed");
        assert_eq!(a.len(), 64);
        assert_ne!(a, conversation_hash("u2", [("user", "hi"), ("assistant", "hello")]), "the user tag counts");
        assert_ne!(a, conversation_hash("", [("assistant", "hi"), ("assistant", "hello")]), "roles count");
        // Field boundaries count: the same bytes split differently are another conversation.
        assert_ne!(
            conversation_hash("", [("user", "ab"), ("user", "c")]),
            conversation_hash("", [("user", "a"), ("user", "bc")])
        );
        // Pinned (checked with Python's hashlib over the same length-prefixed fields): a change of
        // the hash's input would orphan every stored conversation.
        assert_eq!(a, "e96594d27c7c14f6fb8fbe21416422a6b9715d5a8b37e8b93e2a1fe000224a06");
    }

    #[test]
    fn content_is_text_or_text_parts() {
        let m: ChatMessage = serde_json::from_value(json!({"role": "user", "content": "x"})).unwrap();
        assert_eq!(m.text(), "x");
        let m: ChatMessage = serde_json::from_value(json!({"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}, {"type": "text", "text": "b"}
        ]}))
        .unwrap();
        assert_eq!(m.text(), "a\nb");
        let m: ChatMessage = serde_json::from_value(json!({"role": "assistant", "content": null})).unwrap();
        assert_eq!(m.text(), "");
        let sys: ChatMessage = serde_json::from_value(json!({"role": "system", "content": "s"})).unwrap();
        assert!(!has_history(std::slice::from_ref(&sys)));
        assert!(has_history(&[sys, m]));
    }

    #[test]
    fn tool_calls_become_lines_and_text_is_kept_in_order() {
        let mut r = Reply::default();
        assert_eq!(r.frame(&json!({"type": "text_delta", "text": "Let me look."})).as_deref(), Some("Let me look."));
        let tool = r.frame(&json!({"type": "tool_use", "tool_name": "Bash", "tool_input": {"command": "ls"}}));
        assert_eq!(tool.as_deref(), Some("\n[tool: Bash {\"command\":\"ls\"}]\n"));
        assert_eq!(r.frame(&json!({"type": "tool_result", "output": "a"})), None);
        r.frame(&json!({"type": "text_delta", "text": "Done."}));
        assert_eq!(r.done(&result("Done.", "success")), None, "the deltas already said it");
        assert_eq!(r.content(), "Let me look.\n[tool: Bash {\"command\":\"ls\"}]\nDone.");
    }

    #[test]
    fn a_turn_without_deltas_answers_its_final_text() {
        let mut r = Reply::default();
        r.frame(&json!({"type": "tool_use", "tool_name": "Write", "tool_input": {"file_path": "a"}}));
        assert_eq!(r.done(&result("written", "success")).as_deref(), Some("written"));
        assert_eq!(r.content(), "[tool: Write {\"file_path\":\"a\"}]\nwritten");
        assert_eq!(finish_reason(&result("", "error_max_turns")), "length");
        assert_eq!(finish_reason(&result("", "success")), "stop");
    }

    #[test]
    fn models_follow_the_settings() {
        let mut s = Settings::default();
        assert_eq!(listed_models(&s), ["default", "sonnet", "opus", "haiku"]);
        assert_eq!(resolve_model(&s, "default"), Ok(None));
        assert_eq!(resolve_model(&s, "opus"), Ok(Some("opus".into())));
        assert_eq!(resolve_model(&s, "claude-sonnet-4-5"), Ok(Some("claude-sonnet-4-5".into())));
        assert_eq!(resolve_model(&s, "gpt-4o"), Err(()));
        assert_eq!(resolve_model(&s, "claude- bad"), Err(()));
        s.defaults.model = Some("claude-x".into());
        s.session.overridable.retain(|o| o != "model");
        assert_eq!(listed_models(&s), ["claude-x"]);
        assert_eq!(resolve_model(&s, "claude-x"), Ok(None));
        assert_eq!(resolve_model(&s, "opus"), Err(()), "not overridable: only the default");
    }
}
