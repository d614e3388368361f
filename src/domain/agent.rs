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
