//! What a session actor hands its clients: a numbered event, its frame serialised once and
//! shared by every receiver, and on a turn's last event how the turn ended. It stays with the
//! runtime (not in `domain`) because a failed turn carries the `ApiError` the request answers.

use std::sync::Arc;

use crate::domain::{ToolCall, TurnResult};
use crate::error::ApiError;

/// How a turn ended, for `/chat` (which answers from it instead of re-reading frames).
#[derive(Debug, Clone)]
pub enum TurnOutcome {
    Done { result: TurnResult, tool_calls: Vec<ToolCall> },
    Failed(ApiError),
}

/// A numbered event of a session: its frame as compact JSON, serialised once and shared by
/// every receiver.
#[derive(Debug)]
pub struct SessionEvent {
    pub id: i64,
    pub turn_id: Arc<str>,
    pub json: bytestring::ByteString,
    /// Set on the last event of a turn.
    pub outcome: Option<TurnOutcome>,
}

/// The frame of a failed turn.
pub fn error_frame(err: &ApiError) -> String {
    crate::domain::frames::error(&err.message(), err.code())
}
