//! A user's own provider credentials: the environment variables their CLI processes get in
//! place of the service's (an Anthropic key, a gateway, Bedrock or Vertex). Only provider
//! variables are accepted, so a user cannot reach the CLI's other switches (or `PATH`,
//! `LD_PRELOAD`) through them.

use std::collections::BTreeMap;

use super::credentials_key::CredentialsKey;
use crate::error::{ApiError, FieldError};
use crate::storage::{CredentialsRow, Storage};

/// Variable names a user may set: these exactly, or beginning with one of the prefixes.
const ALLOWED_NAMES: &[&str] = &[
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
    "CLAUDE_CODE_SKIP_VERTEX_AUTH",
    "CLOUD_ML_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
];
const ALLOWED_PREFIXES: &[&str] = &["ANTHROPIC_", "AWS_", "VERTEX_REGION_"];

const MAX_VALUE_BYTES: usize = 16 * 1024;
const MAX_VARIABLES: usize = 32;

pub fn allowed_name(name: &str) -> bool {
    let well_formed = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    well_formed && (ALLOWED_NAMES.contains(&name) || ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// The variables a user's request asks for, checked: every refusal names its field.
pub fn validated(
    api_key: Option<String>,
    base_url: Option<String>,
    env: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut errors = Vec::new();
    let mut vars = BTreeMap::new();
    for (field, name, value) in
        [("anthropic_api_key", "ANTHROPIC_API_KEY", api_key), ("anthropic_base_url", "ANTHROPIC_BASE_URL", base_url)]
    {
        if let Some(value) = value {
            if env.contains_key(name) {
                errors.push(FieldError::new(format!("env.{name}"), format!("is given as `{field}` too")));
            }
            vars.insert(name.to_string(), (field.to_string(), value));
        }
    }
    for (name, value) in env {
        if !allowed_name(&name) {
            errors.push(FieldError::new(
                format!("env.{name}"),
                "is not a provider variable (ANTHROPIC_*, AWS_*, CLAUDE_CODE_USE_BEDROCK, CLAUDE_CODE_USE_VERTEX, \
                 CLOUD_ML_REGION, GOOGLE_APPLICATION_CREDENTIALS, ...)",
            ));
            continue;
        }
        vars.entry(name.clone()).or_insert((format!("env.{name}"), value));
    }
    for (name, (field, value)) in &vars {
        // Messages describe the value, never repeat it: it is a secret.
        if value.is_empty() {
            errors.push(FieldError::new(field, "must not be empty"));
        } else if value.len() > MAX_VALUE_BYTES {
            errors.push(FieldError::new(field, format!("must be at most {MAX_VALUE_BYTES} bytes")));
        } else if value.contains('\0') {
            errors.push(FieldError::new(field, "must not contain a NUL character"));
        } else if name == "ANTHROPIC_BASE_URL"
            && !url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        {
            errors.push(FieldError::new(field, "must be an http(s) URL"));
        }
    }
    if vars.is_empty() {
        errors.push(FieldError::new("env", "nothing to store (DELETE removes a user's credentials)"));
    }
    if vars.len() > MAX_VARIABLES {
        errors.push(FieldError::new("env", format!("at most {MAX_VARIABLES} variables")));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(vars.into_iter().map(|(name, (_, value))| (name, value)).collect())
}

/// Users' credentials as stored: sealed on the way in, opened only for a CLI's launch.
#[derive(Clone)]
pub struct UserCredentials {
    storage: Storage,
    key: CredentialsKey,
    /// `auth.require_user_credentials`.
    required: bool,
}

impl UserCredentials {
    pub fn new(storage: Storage, key: CredentialsKey, required: bool) -> Self {
        Self { storage, key, required }
    }

    /// Seals and stores `vars` (from [`validated`]) as `user_id`'s, replacing what they had.
    pub async fn store(&self, user_id: &str, vars: &BTreeMap<String, String>, now: i64) -> Result<(), ApiError> {
        let plain = serde_json::to_vec(vars).map_err(|e| ApiError::Internal(format!("credentials: {e}")))?;
        let sealed = self.key.seal(user_id, &plain).map_err(ApiError::Internal)?;
        let names = serde_json::to_string(&vars.keys().collect::<Vec<_>>())
            .map_err(|e| ApiError::Internal(format!("credentials: {e}")))?;
        let row = CredentialsRow { user_id: user_id.to_string(), sealed, names, updated_at: now };
        Ok(self.storage.put_credentials(&row).await?)
    }

    /// The names a user has set and when, without opening anything.
    pub async fn names(&self, user_id: &str) -> Result<Option<(Vec<String>, i64)>, ApiError> {
        let Some(row) = self.storage.get_credentials(user_id).await? else { return Ok(None) };
        let names = serde_json::from_str(&row.names)
            .map_err(|e| ApiError::Internal(format!("user {user_id}: stored credential names: {e}")))?;
        Ok(Some((names, row.updated_at)))
    }

    /// The variables a CLI of `user_id` starts with: theirs, or none (the service's then
    /// apply), or `credentials_required` when the settings allow no fallback. Read at each
    /// launch, so a change applies from the user's next CLI start.
    pub async fn for_launch(&self, user_id: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        let Some(row) = self.storage.get_credentials(user_id).await? else {
            return if self.required { Err(ApiError::CredentialsRequired) } else { Ok(None) };
        };
        // The error names the user and the cause, never the record (it goes to the log only).
        let plain =
            self.key.open(user_id, &row.sealed).map_err(|e| ApiError::Internal(format!("user {user_id}: {e}")))?;
        let vars = serde_json::from_slice(&plain)
            .map_err(|_| ApiError::Internal(format!("user {user_id}: the opened credentials are not a JSON object")))?;
        Ok(Some(vars))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_provider_variables_are_accepted() {
        for ok in ["ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "AWS_REGION", "CLAUDE_CODE_USE_BEDROCK", "CLOUD_ML_REGION"] {
            assert!(allowed_name(ok), "{ok}");
        }
        for bad in ["PATH", "LD_PRELOAD", "CLAUDE_CODE_ENTRYPOINT", "HOME", "anthropic_api_key", "ANTHROPIC-X", ""] {
            assert!(!allowed_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_refusal_names_the_field_and_never_the_value() {
        let env = [("LD_PRELOAD".to_string(), "x".to_string())].into_iter().collect();
        let Err(ApiError::Validation(fields)) = validated(Some("sk-secret\0".into()), None, env) else { panic!() };
        let fields: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
        assert!(fields.iter().any(|f| f.starts_with("env.LD_PRELOAD")), "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with("anthropic_api_key")), "{fields:?}");
        assert!(!fields.concat().contains("sk-secret"));
        let ok = validated(Some("sk".into()), Some("https://gw.example".into()), BTreeMap::new()).unwrap();
        assert_eq!(ok["ANTHROPIC_API_KEY"], "sk");
        assert_eq!(ok["ANTHROPIC_BASE_URL"], "https://gw.example");
    }
}
