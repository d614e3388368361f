//! The leaf every layer shares: what a session is and says, with no knowledge of HTTP, actors,
//! the CLI's wire format or storage. Imports std, serde, utoipa and diesel's type traits only
//! (never `crate::` outside `domain`; `scripts/check-layers` enforces it).

pub mod agent;
pub mod frames;
pub mod ids;
pub mod options;
pub mod status;
pub mod webhooks;

pub use agent::{AgentInfo, ContextCategory, ContextUsage, Usage};
pub use frames::{ToolCall, TurnResult};
pub use options::{AgentOption, LiveSetting};
pub use status::SessionStatus;
