//! `claude-agent-http rotate-credentials-key`: re-seals every user's credentials and every
//! webhook's signing secret under a new key, in one transaction, with the service stopped (a running instance keeps the old key in
//! memory and could not open what is sealed under the new one).
//!
//! With the key in `<data.dir>/credentials.key`, the new key is written beside it as
//! `credentials.key.new` before the transaction and renamed over the old one after it. With
//! `auth.credentials_key` set, the operator brings the new key in a file (`--new-key-file`)
//! and sets it in the settings once this has succeeded.

use std::path::Path;

use super::credentials_key::{CREDENTIALS_KEY_FILE, CredentialsKey, webhook_secret_aad, write_new_key_file};
use crate::settings::Settings;
use crate::storage::Storage;

/// What was done, for the operator.
pub async fn rotate(settings: &Settings, new_key_file: Option<&Path>) -> Result<String, String> {
    let storage = Storage::connect(&settings.session).await.map_err(|e| format!("cannot open the storage: {e}"))?;
    let configured = settings.auth.credentials_key.as_deref().filter(|k| !k.trim().is_empty());
    let old = CredentialsKey::load(configured, &settings.data.dir)?;
    let (new, text) = match new_key_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let key = CredentialsKey::from_base64(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            (key, text.trim().to_string())
        }
        None if configured.is_some() => {
            return Err("auth.credentials_key is set: put a new key (`openssl rand -base64 32`) in a file readable \
                        by this user only, pass it as --new-key-file, then set it as auth.credentials_key"
                .into());
        }
        None => CredentialsKey::generate()?,
    };
    let rows = storage.list_credentials().await.map_err(|e| e.to_string())?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let plain = old.open(&row.user_id, &row.sealed).map_err(|e| format!("user {}: {e}", row.user_id))?;
        let sealed = new.seal(&row.user_id, &plain)?;
        changes.push((row.user_id, row.sealed, sealed));
    }
    // Webhook secrets are sealed under the same key (bound to `webhook:<id>`).
    let hooks = storage.list_webhook_secrets().await.map_err(|e| e.to_string())?;
    let mut hook_changes = Vec::with_capacity(hooks.len());
    for (webhook_id, sealed) in hooks {
        let aad = webhook_secret_aad(&webhook_id);
        let plain = old.open(&aad, &sealed).map_err(|e| format!("webhook {webhook_id}: {e}"))?;
        hook_changes.push((webhook_id, sealed, new.seal(&aad, &plain)?));
    }
    let key_file = settings.data.dir.join(CREDENTIALS_KEY_FILE);
    let pending = settings.data.dir.join(format!("{CREDENTIALS_KEY_FILE}.new"));
    // The new key is on disk before any row depends on it.
    if configured.is_none() {
        write_new_key_file(&pending, &text).map_err(|e| {
            format!(
                "cannot write {} ({e}); if it exists, an earlier rotation was interrupted: if that one's rows \
                 were committed it holds the key, else remove it",
                pending.display()
            )
        })?;
    }
    let failure = match storage.reseal_credentials(&changes, &hook_changes).await {
        Ok(true) => None,
        Ok(false) => Some("credentials were changed meanwhile; stop the service and run again".to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = failure {
        if configured.is_none() {
            let _ = std::fs::remove_file(&pending);
        }
        return Err(format!("nothing changed: {why}"));
    }
    let n = changes.len();
    let h = hook_changes.len();
    if configured.is_some() {
        return Ok(format!(
            "re-sealed {n} user(s)' credentials and {h} webhook secret(s); set auth.credentials_key to the new key before starting the service"
        ));
    }
    std::fs::rename(&pending, &key_file).map_err(|e| {
        format!(
            "re-sealed {n} user(s)' credentials and {h} webhook secret(s), but {} is not renamed to {} ({e}): rename it by hand",
            pending.display(),
            key_file.display()
        )
    })?;
    Ok(format!(
        "re-sealed {n} user(s)' credentials and {h} webhook secret(s); the new key is in {}",
        key_file.display()
    ))
}
