//! A create request's agent options, checked against [`AgentOption`] and `session.overridable`.

use serde_json::{Map, Value};

use crate::domain::AgentOption;
use crate::error::{ApiError, FieldError};

/// Checks a create request's `options`: unknown names and bad values are 422, names the
/// settings do not let requests override are 403. Returns the accepted overrides.
pub fn validate_options(options: Option<&Value>, overridable: &[String]) -> Result<Map<String, Value>, ApiError> {
    let map = match options {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::validation("options", "must be an object")),
    };
    let mut errors = Vec::new();
    let mut known = Vec::with_capacity(map.len());
    for (name, value) in map {
        match AgentOption::parse(name) {
            Some(option) => known.push((option, name, value)),
            None => errors.push(FieldError::new(format!("options.{name}"), "unknown option")),
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
    for (option, name, value) in known {
        if value.is_null() {
            continue; // null = keep the default
        }
        match option.check(value) {
            Ok(()) => {
                accepted.insert(name.clone(), value.clone());
            }
            Err(message) => errors.push(FieldError::new(format!("options.{name}"), message)),
        }
    }
    if errors.is_empty() { Ok(accepted) } else { Err(ApiError::Validation(errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Vec<String> {
        AgentOption::default_overridable()
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
