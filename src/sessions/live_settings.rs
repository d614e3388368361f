//! A session's model and permission mode changed while it lives (`PATCH /sessions/{id}`), and
//! its context usage. A change is stored first, so a launch that reads the row meanwhile
//! already starts with it, then applied to the live CLI; if the CLI refuses, the stored value
//! is put back.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{SessionService, options};
use crate::auth::Caller;
use crate::domain::{AgentOption, ContextUsage, LiveSetting, SessionStatus};
use crate::error::ApiError;
use crate::storage::SessionRow;

/// `PATCH /sessions/{id}` body: what to change; keys left out stay as they are. Each key must
/// be in `session.overridable` (403 otherwise, as at creation).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// A model name or alias, as at creation (1-200 printable ASCII characters).
    pub model: Option<String>,
    /// `default`, `acceptEdits`, `plan`, `bypassPermissions`, `dontAsk` or `auto`.
    /// `bypassPermissions` reaches a running CLI only if it was started in that mode.
    pub permission_mode: Option<String>,
}

/// The live settings a PATCH body asks for, checked like a create request's `options`
/// (unknown or bad values 422, options `session.overridable` leaves out 403), and only the
/// options a running CLI can change (others 422). The permission mode comes first: it is the
/// one the CLI may refuse, so a refused request changes nothing.
pub(super) fn parse_settings(body: &Value, overridable: &[String]) -> Result<Vec<LiveSetting>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::validation("body", "must be an object"));
    }
    let accepted: Map<String, Value> = options::validate_options(Some(body), overridable)?;
    let mut settings = Vec::with_capacity(2);
    let mut errors = Vec::new();
    for (name, value) in &accepted {
        let text = value.as_str().unwrap_or_default().to_string();
        match AgentOption::parse(name) {
            Some(AgentOption::PermissionMode) => settings.insert(0, LiveSetting::PermissionMode(text)),
            Some(AgentOption::Model) => settings.push(LiveSetting::Model(text)),
            _ => errors.push(crate::error::FieldError::new(
                name.clone(),
                "cannot be changed on an existing session (only model and permission_mode)",
            )),
        }
    }
    if errors.is_empty() { Ok(settings) } else { Err(ApiError::Validation(errors)) }
}

impl SessionService {
    /// Changes the session's model and/or permission mode: at once in its live CLI (refused
    /// with `session_busy` while a turn runs), and in its stored options for every later
    /// launch. A session without a live CLI only stores them.
    pub async fn update_settings(
        &self,
        caller: &Caller,
        session_id: &str,
        body: Value,
    ) -> Result<SessionRow, ApiError> {
        let settings = parse_settings(&body, &self.settings.session.overridable)?;
        let mut row = self.get(caller, session_id).await?;
        if row.status == SessionStatus::Expired {
            return Err(ApiError::SessionExpired);
        }
        for setting in settings {
            let name = setting.option().name();
            let previous =
                serde_json::from_str::<Map<String, Value>>(&row.options).ok().and_then(|mut o| o.remove(name));
            let value = Value::String(setting.value().to_string());
            row =
                self.storage.set_option(&row.session_id, name, Some(value)).await?.ok_or(ApiError::SessionNotFound)?;
            let Some(actor) = self.registry.lookup(&row.session_id).await? else { continue };
            match actor.set_live(setting).await {
                // Stopping or stopped meanwhile: its next launch reads the stored value.
                Ok(()) | Err(ApiError::SessionNotLive) => {}
                Err(e) => {
                    if let Err(undo) = self.storage.set_option(&row.session_id, name, previous).await {
                        log::error!(
                            "session {}: could not restore {name} after the CLI refused it: {undo}",
                            row.session_id
                        );
                    }
                    return Err(e);
                }
            }
        }
        Ok(row)
    }

    /// How full the session's context window is, from its live CLI (`session_not_live` when
    /// none runs: starting one only to measure would cost a CLI start).
    pub async fn context_usage(&self, caller: &Caller, session_id: &str) -> Result<ContextUsage, ApiError> {
        let row = self.get(caller, session_id).await?;
        if row.status == SessionStatus::Expired {
            return Err(ApiError::SessionExpired);
        }
        let actor = self.registry.lookup(&row.session_id).await?.ok_or(ApiError::SessionNotLive)?;
        actor.context_usage().await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn all() -> Vec<String> {
        AgentOption::default_overridable()
    }

    #[test]
    fn the_mode_goes_first_and_only_live_options_are_taken() {
        let got = parse_settings(&json!({"model": "claude-sonnet-4-5", "permission_mode": "plan"}), &all()).unwrap();
        assert_eq!(got, [LiveSetting::PermissionMode("plan".into()), LiveSetting::Model("claude-sonnet-4-5".into())]);
        assert!(parse_settings(&json!({}), &all()).unwrap().is_empty());
        let e = parse_settings(&json!({"max_turns": 3}), &all()).unwrap_err();
        assert_eq!(e.code(), "validation_error");
    }

    #[test]
    fn checked_as_at_creation() {
        // Not in `session.overridable`: 403, as a create request.
        let only_mode = vec!["permission_mode".to_string()];
        assert_eq!(parse_settings(&json!({"model": "m"}), &only_mode).unwrap_err().code(), "forbidden");
        assert_eq!(parse_settings(&json!({"model": "bad model"}), &all()).unwrap_err().code(), "validation_error");
        assert_eq!(parse_settings(&json!({"model": ""}), &all()).unwrap_err().code(), "validation_error");
        assert_eq!(parse_settings(&json!({"permission_mode": "yolo"}), &all()).unwrap_err().code(), "validation_error");
        assert_eq!(parse_settings(&json!({"colour": "red"}), &all()).unwrap_err().code(), "validation_error");
        assert_eq!(parse_settings(&json!([1]), &all()).unwrap_err().code(), "validation_error");
    }
}
