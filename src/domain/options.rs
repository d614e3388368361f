//! The agent options a session can carry: their names, their value checks, and which a create
//! request may set unless `session.overridable` says otherwise.

use serde_json::Value;

/// One per-session agent option (its API name is [`AgentOption::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentOption {
    SystemPrompt,
    AppendSystemPrompt,
    Model,
    PermissionMode,
    AllowedTools,
    DisallowedTools,
    MaxTurns,
    MaxBudgetUsd,
    SettingSources,
    McpServers,
}

pub const PERMISSION_MODES: &[&str] = &["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"];
pub const SETTING_SOURCES: &[&str] = &["user", "project", "local"];
pub const MAX_PROMPT_CHARS: usize = 100_000;

impl AgentOption {
    pub const ALL: [AgentOption; 10] = [
        AgentOption::SystemPrompt,
        AgentOption::AppendSystemPrompt,
        AgentOption::Model,
        AgentOption::PermissionMode,
        AgentOption::AllowedTools,
        AgentOption::DisallowedTools,
        AgentOption::MaxTurns,
        AgentOption::MaxBudgetUsd,
        AgentOption::SettingSources,
        AgentOption::McpServers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AgentOption::SystemPrompt => "system_prompt",
            AgentOption::AppendSystemPrompt => "append_system_prompt",
            AgentOption::Model => "model",
            AgentOption::PermissionMode => "permission_mode",
            AgentOption::AllowedTools => "allowed_tools",
            AgentOption::DisallowedTools => "disallowed_tools",
            AgentOption::MaxTurns => "max_turns",
            AgentOption::MaxBudgetUsd => "max_budget_usd",
            AgentOption::SettingSources => "setting_sources",
            AgentOption::McpServers => "mcp_servers",
        }
    }

    pub fn parse(name: &str) -> Option<AgentOption> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Whether a request may set it when `session.overridable` is not configured. The options
    /// that reach outside the session's directory and tools stay with the operator:
    /// `setting_sources` loads settings files (with their hooks and permissions) and
    /// `mcp_servers` starts programs of the request's choosing.
    pub fn overridable_by_default(self) -> bool {
        !matches!(self, AgentOption::SettingSources | AgentOption::McpServers)
    }

    /// The names of [`overridable_by_default`](Self::overridable_by_default) options.
    pub fn default_overridable() -> Vec<String> {
        Self::ALL.into_iter().filter(|o| o.overridable_by_default()).map(|o| o.name().to_string()).collect()
    }

    /// Every name, comma-separated (for messages).
    pub fn names() -> String {
        Self::ALL.map(AgentOption::name).join(", ")
    }

    /// Checks a value given for this option; the message says what is expected.
    pub fn check(self, value: &Value) -> Result<(), String> {
        match self {
            AgentOption::SystemPrompt | AgentOption::AppendSystemPrompt => match value.as_str() {
                Some(s) if s.chars().count() <= MAX_PROMPT_CHARS => Ok(()),
                Some(_) => Err(format!("must be at most {MAX_PROMPT_CHARS} characters")),
                None => Err("must be a string".into()),
            },
            AgentOption::Model => match value.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 200 && s.chars().all(|c| c.is_ascii_graphic()) => Ok(()),
                _ => Err("must be a model name (1-200 printable ASCII characters)".into()),
            },
            AgentOption::PermissionMode => match value.as_str() {
                Some(s) if PERMISSION_MODES.contains(&s) => Ok(()),
                _ => Err(format!("must be one of {}", PERMISSION_MODES.join(", "))),
            },
            AgentOption::AllowedTools | AgentOption::DisallowedTools => string_list(value, |t| {
                !t.is_empty() && t.len() <= 500 && !t.contains(',') && !t.chars().any(char::is_control)
            })
            .map_err(|_| "must be a list of tool names (no commas)".into()),
            AgentOption::SettingSources => string_list(value, |s| SETTING_SOURCES.contains(&s))
                .map_err(|_| format!("must be a list of {}", SETTING_SOURCES.join(", "))),
            AgentOption::MaxTurns => match value.as_u64() {
                Some(n) if (1..=1000).contains(&n) => Ok(()),
                _ => Err("must be an integer from 1 to 1000".into()),
            },
            AgentOption::MaxBudgetUsd => match value.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(()),
                _ => Err("must be a number greater than 0".into()),
            },
            AgentOption::McpServers => match value {
                Value::Object(servers) if servers.values().all(Value::is_object) => Ok(()),
                _ => Err("must be an object of server name to server config".into()),
            },
        }
    }
}

/// An option a live session's CLI can change without a restart (`PATCH /sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSetting {
    Model(String),
    PermissionMode(String),
}

impl LiveSetting {
    pub fn option(&self) -> AgentOption {
        match self {
            LiveSetting::Model(_) => AgentOption::Model,
            LiveSetting::PermissionMode(_) => AgentOption::PermissionMode,
        }
    }

    pub fn value(&self) -> &str {
        match self {
            LiveSetting::Model(v) | LiveSetting::PermissionMode(v) => v,
        }
    }
}

fn string_list(value: &Value, ok: impl Fn(&str) -> bool) -> Result<(), ()> {
    match value.as_array() {
        Some(items) if items.iter().all(|v| v.as_str().is_some_and(&ok)) => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for o in AgentOption::ALL {
            assert_eq!(AgentOption::parse(o.name()), Some(o));
        }
        let mut names: Vec<_> = AgentOption::ALL.map(AgentOption::name).to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), AgentOption::ALL.len());
        assert_eq!(AgentOption::parse("cwd"), None);
    }

    #[test]
    fn the_default_overridable_set_is_named_not_positional() {
        // The set the settings default to, pinned by name: reordering `ALL` cannot change it.
        assert_eq!(
            AgentOption::default_overridable(),
            [
                "system_prompt",
                "append_system_prompt",
                "model",
                "permission_mode",
                "allowed_tools",
                "disallowed_tools",
                "max_turns",
                "max_budget_usd"
            ]
        );
        assert!(!AgentOption::McpServers.overridable_by_default());
        assert!(!AgentOption::SettingSources.overridable_by_default());
    }

    #[test]
    fn values_are_checked_per_option() {
        assert!(AgentOption::MaxTurns.check(&json!(3)).is_ok());
        assert!(AgentOption::MaxTurns.check(&json!(0)).is_err());
        assert!(AgentOption::PermissionMode.check(&json!("yolo")).is_err());
        assert!(AgentOption::AllowedTools.check(&json!(["Read", "Bash(git:*)"])).is_ok());
        assert!(AgentOption::AllowedTools.check(&json!(["Read,Write"])).is_err());
        assert!(AgentOption::McpServers.check(&json!({"a": {"command": "x"}})).is_ok());
        assert!(AgentOption::McpServers.check(&json!({"a": 1})).is_err());
        assert!(AgentOption::MaxBudgetUsd.check(&json!(f64::MAX)).is_ok());
        assert!(AgentOption::SystemPrompt.check(&json!("x".repeat(MAX_PROMPT_CHARS + 1))).is_err());
    }
}
