//! Per-session agent options: which exist, which a request may set, and their checks.

use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};

/// Every option a session can carry. `session.overridable` picks the ones requests may set;
/// by default the first eight (`settings::DEFAULT_OVERRIDABLE`).
pub const OPTION_NAMES: &[&str] = &[
    "system_prompt",
    "append_system_prompt",
    "model",
    "permission_mode",
    "allowed_tools",
    "disallowed_tools",
    "max_turns",
    "max_budget_usd",
    "setting_sources",
    "mcp_servers",
];

const PERMISSION_MODES: &[&str] = &["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"];
const SETTING_SOURCES: &[&str] = &["user", "project", "local"];
const MAX_PROMPT_CHARS: usize = 100_000;

/// Checks a create request's `options`: unknown names and bad values are 422, names the
/// settings do not let requests override are 403. Returns the accepted overrides.
pub fn validate_options(options: Option<&Value>, overridable: &[String]) -> Result<Map<String, Value>, ApiError> {
    let map = match options {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::validation("options", "must be an object")),
    };
    let mut errors = Vec::new();
    for name in map.keys() {
        if !OPTION_NAMES.contains(&name.as_str()) {
            errors.push(FieldError::new(format!("options.{name}"), "unknown option"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let refused: Vec<&str> =
        map.keys().map(String::as_str).filter(|name| !overridable.iter().any(|o| o == name)).collect();
    if !refused.is_empty() {
        return Err(ApiError::Forbidden(format!(
            "these options may not be set per session: {} (see session.overridable)",
            refused.join(", ")
        )));
    }
    let mut accepted = Map::new();
    for (name, value) in map {
        if value.is_null() {
            continue; // null = keep the default
        }
        match check_value(name, value) {
            Ok(()) => {
                accepted.insert(name.clone(), value.clone());
            }
            Err(message) => errors.push(FieldError::new(format!("options.{name}"), message)),
        }
    }
    if errors.is_empty() { Ok(accepted) } else { Err(ApiError::Validation(errors)) }
}

fn check_value(name: &str, value: &Value) -> Result<(), String> {
    match name {
        "system_prompt" | "append_system_prompt" => match value.as_str() {
            Some(s) if s.chars().count() <= MAX_PROMPT_CHARS => Ok(()),
            Some(_) => Err(format!("must be at most {MAX_PROMPT_CHARS} characters")),
            None => Err("must be a string".into()),
        },
        "model" => match value.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 200 && s.chars().all(|c| c.is_ascii_graphic()) => Ok(()),
            _ => Err("must be a model name (1-200 printable ASCII characters)".into()),
        },
        "permission_mode" => match value.as_str() {
            Some(s) if PERMISSION_MODES.contains(&s) => Ok(()),
            _ => Err(format!("must be one of {}", PERMISSION_MODES.join(", "))),
        },
        "allowed_tools" | "disallowed_tools" => string_list(value, |t| {
            !t.is_empty() && t.len() <= 500 && !t.contains(',') && !t.chars().any(char::is_control)
        })
        .map_err(|_| "must be a list of tool names (no commas)".into()),
        "setting_sources" => string_list(value, |s| SETTING_SOURCES.contains(&s))
            .map_err(|_| format!("must be a list of {}", SETTING_SOURCES.join(", "))),
        "max_turns" => match value.as_u64() {
            Some(n) if (1..=1000).contains(&n) => Ok(()),
            _ => Err("must be an integer from 1 to 1000".into()),
        },
        "max_budget_usd" => match value.as_f64() {
            Some(x) if x > 0.0 && x.is_finite() => Ok(()),
            _ => Err("must be a number greater than 0".into()),
        },
        "mcp_servers" => match value {
            Value::Object(servers) if servers.values().all(Value::is_object) => Ok(()),
            _ => Err("must be an object of server name to server config".into()),
        },
        _ => Err("unknown option".into()),
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
    use super::*;
    use serde_json::json;

    fn all() -> Vec<String> {
        crate::settings::DEFAULT_OVERRIDABLE.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_known_overridable_options() {
        let o = json!({"model": "claude-sonnet-4-5", "max_turns": 3, "allowed_tools": ["Read", "Bash(git:*)"]});
        let got = validate_options(Some(&o), &all()).unwrap();
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn unknown_is_422_not_overridable_is_403_bad_value_is_422() {
        let e = validate_options(Some(&json!({"cwd": "/"})), &all()).unwrap_err();
        assert_eq!(e.code(), "validation_error");
        let e = validate_options(Some(&json!({"mcp_servers": {}})), &all()).unwrap_err();
        assert_eq!(e.code(), "forbidden");
        let e = validate_options(Some(&json!({"permission_mode": "yolo"})), &all()).unwrap_err();
        assert_eq!(e.code(), "validation_error");
        let e = validate_options(Some(&json!({"max_turns": 0})), &all()).unwrap_err();
        assert_eq!(e.code(), "validation_error");
    }
}
