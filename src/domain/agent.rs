//! What the API says about a session's agent: its token usage and what its CLI reported. The
//! CLI's own wire types (`cli::protocol`) are mapped into these at the CLI boundary, so a field
//! renamed by the CLI cannot change the API's schema.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Tokens a turn (or a whole session) used.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// What the session's CLI reported about itself at the start of its last turn.
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct AgentInfo {
    pub model: Option<String>,
    pub claude_code_version: Option<String>,
    pub permission_mode: Option<String>,
    pub tools: Vec<String>,
    pub mcp_servers: Vec<Value>,
    pub skills: Vec<Value>,
}

/// How full the session's context window is (the CLI's `get_context_usage`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ContextUsage {
    /// Tokens the next request would carry (system prompt, tools, conversation, …).
    pub used_tokens: i64,
    /// The model's context window.
    pub window_tokens: i64,
    /// `used_tokens` as a percentage of `window_tokens`, as the CLI rounds it.
    pub percent: f64,
    /// The model the CLI measured for.
    pub model: Option<String>,
    /// Where the tokens go, including the free space and the autocompact buffer.
    pub categories: Vec<ContextCategory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ContextCategory {
    pub name: String,
    pub tokens: i64,
    /// `used`, `deferred`, `buffer` or `free`, when the CLI says.
    pub kind: Option<String>,
}
