//! The CLI's content messages (`stream_event`, `assistant`, `user` tool results) as the frames
//! of the running turn, and what the turn's record keeps of them. No actor: the session actor
//! numbers and hands out what this returns.

use serde_json::Value;

use crate::cli::protocol::{CliMessage, ContentBlock, Delta, StreamEvent, tool_result_text};
use crate::domain::ToolCall;
use crate::domain::frames as events;

/// What a turn keeps of the CLI's messages for its record and its `done` frame.
#[derive(Debug, Default)]
pub(super) struct Transcript {
    /// Text streamed since the last complete assistant frame (deltas make it redundant).
    pub(super) streamed_since_block: bool,
    pub(super) assistant_text: String,
    pub(super) tool_calls: Vec<ToolCall>,
}

/// The frames `message` adds to the turn, in order, recording its text and tool calls in
/// `transcript`. A text block streamed as deltas is not sent again whole; messages of
/// sub-agents (with a `parent_tool_use_id`) and replayed user messages add nothing; messages
/// that are not content (control, system, result) add no frame here.
pub(super) fn frames(message: &CliMessage, transcript: &mut Transcript) -> Vec<String> {
    let mut frames = Vec::new();
    match message {
        CliMessage::StreamEvent(e) => {
            if e.parent_tool_use_id.is_none()
                && let StreamEvent::ContentBlockDelta { delta: Delta::Text { text } } = &e.event
            {
                transcript.streamed_since_block = true;
                frames.push(events::text_delta(text));
            }
        }
        CliMessage::Assistant(a) => {
            if a.parent_tool_use_id.is_some() {
                return frames;
            }
            for block in a.message.content.blocks() {
                match block {
                    ContentBlock::Text { text } => {
                        transcript.assistant_text.push_str(text);
                        if !transcript.streamed_since_block {
                            frames.push(events::text_delta(text));
                        }
                    }
                    ContentBlock::ToolUse { id, name, input } => {
                        transcript.tool_calls.push(ToolCall {
                            id: id.clone(),
                            tool: name.clone(),
                            input: input.clone(),
                            output: Value::Null,
                            is_error: false,
                        });
                        frames.push(events::tool_use(id, name, input));
                    }
                    _ => {}
                }
            }
            transcript.streamed_since_block = false;
        }
        CliMessage::User(u) => {
            if u.is_replay || u.parent_tool_use_id.is_some() {
                return frames;
            }
            for block in u.message.content.blocks() {
                if let ContentBlock::ToolResult { tool_use_id, content, is_error } = block {
                    let output = tool_result_text(content);
                    let is_error = is_error.unwrap_or(false);
                    let name = transcript.tool_calls.iter_mut().find(|c| &c.id == tool_use_id).map(|call| {
                        call.output = output.clone();
                        call.is_error = is_error;
                        call.tool.clone()
                    });
                    frames.push(events::tool_result(tool_use_id, name.as_deref(), &output, is_error));
                }
            }
        }
        _ => {}
    }
    frames
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cli(line: Value) -> CliMessage {
        serde_json::from_value(line).expect("a CLI message")
    }

    fn delta(text: &str) -> CliMessage {
        cli(
            json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}}),
        )
    }

    fn assistant(content: Value) -> CliMessage {
        cli(json!({"type": "assistant", "message": {"role": "assistant", "content": content}}))
    }

    fn tool_result(id: &str, content: Value, is_error: Option<bool>) -> CliMessage {
        cli(json!({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error}
        ]}}))
    }

    #[test]
    fn streamed_text_is_sent_as_deltas_and_not_again_with_the_complete_message() {
        let mut t = Transcript::default();
        assert_eq!(frames(&delta("Hel"), &mut t), vec![events::text_delta("Hel")]);
        assert_eq!(frames(&delta("lo"), &mut t), vec![events::text_delta("lo")]);
        let whole = assistant(json!([{"type": "text", "text": "Hello"}]));
        assert!(frames(&whole, &mut t).is_empty(), "the deltas already carried it");
        assert_eq!(t.assistant_text, "Hello", "the record keeps the complete text once");
        // The next block, not streamed (a CLI without partial messages), is sent whole.
        let next = assistant(json!([{"type": "text", "text": " world"}]));
        assert_eq!(frames(&next, &mut t), vec![events::text_delta(" world")]);
        assert_eq!(t.assistant_text, "Hello world");
    }

    #[test]
    fn a_tool_use_and_its_result_become_frames_and_one_recorded_call() {
        let mut t = Transcript::default();
        let input = json!({"command": "ls"});
        let used = assistant(json!([
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "tu_1", "name": "Bash", "input": input}
        ]));
        assert_eq!(
            frames(&used, &mut t),
            vec![events::text_delta("Let me look."), events::tool_use("tu_1", "Bash", &input)]
        );
        let result = tool_result("tu_1", json!([{"type": "text", "text": "a.txt"}]), Some(true));
        let output = tool_result_text(&json!([{"type": "text", "text": "a.txt"}]));
        assert_eq!(frames(&result, &mut t), vec![events::tool_result("tu_1", Some("Bash"), &output, true)]);
        assert_eq!(t.tool_calls.len(), 1);
        let call = &t.tool_calls[0];
        assert_eq!((call.id.as_str(), call.tool.as_str(), &call.input), ("tu_1", "Bash", &input));
        assert_eq!((&call.output, call.is_error), (&output, true));
    }

    #[test]
    fn a_result_for_an_unknown_tool_use_is_sent_without_a_name_and_records_nothing() {
        let mut t = Transcript::default();
        let frames = frames(&tool_result("tu_x", json!("done"), None), &mut t);
        assert_eq!(frames, vec![events::tool_result("tu_x", None, &tool_result_text(&json!("done")), false)]);
        assert!(t.tool_calls.is_empty());
    }

    #[test]
    fn sub_agent_messages_and_replays_add_nothing() {
        let mut t = Transcript::default();
        let sub = |mut line: Value| {
            line["parent_tool_use_id"] = json!("tu_parent");
            cli(line)
        };
        let messages = [
            sub(
                json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}}),
            ),
            sub(
                json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "s", "name": "Read"}]}}),
            ),
            sub(
                json!({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "s", "content": "x"}]}}),
            ),
            cli(
                json!({"type": "user", "isReplay": true, "message": {"content": [{"type": "tool_result", "tool_use_id": "s", "content": "x"}]}}),
            ),
        ];
        for m in &messages {
            assert!(frames(m, &mut t).is_empty(), "{m:?}");
        }
        assert!(!t.streamed_since_block && t.assistant_text.is_empty() && t.tool_calls.is_empty());
    }

    #[test]
    fn messages_that_are_not_content_add_no_frame() {
        let mut t = Transcript::default();
        let others = [
            cli(json!({"type": "system", "subtype": "init", "model": "m"})),
            cli(json!({"type": "result", "subtype": "success", "result": "hi", "total_cost_usd": 0.1})),
            cli(json!({"type": "stream_event", "event": {"type": "message_start"}})),
            cli(json!({"type": "assistant", "message": {"content": "plain text content"}})),
            cli(json!({"type": "something_new"})),
        ];
        for m in &others {
            assert!(frames(m, &mut t).is_empty(), "{m:?}");
        }
        assert!(t.assistant_text.is_empty());
    }
}
