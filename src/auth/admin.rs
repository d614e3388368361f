//! The admin key: configured (`CLAUDE_AGENT_ADMIN_KEY` / `auth.admin_key`), or generated on
//! first start into `<data dir>/admin.key` (mode 0600) with only its hash in storage.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::keys;
use crate::storage::{ApiKeyRow, Storage, StorageError};

pub const ADMIN_KEY_FILE: &str = "admin.key";

/// How admin requests are recognised.
#[derive(Debug, Clone)]
pub enum AdminKey {
    /// A key from the settings; stored admin keys are not accepted while one is configured.
    Configured { hash: String },
    /// The generated key, whose hash is in storage.
    Stored,
}

/// Makes sure an admin key exists. Generates and announces one (once) if none is configured
/// or stored. The row is written first and removed again if the file cannot be written, so
/// a failed start leaves no key nobody knows.
pub async fn ensure_admin_key(
    configured: Option<&str>,
    storage: &Storage,
    data_dir: &Path,
) -> Result<AdminKey, String> {
    if let Some(key) = configured.filter(|k| !k.is_empty()) {
        if key.len() < 16 {
            return Err(
                "the configured admin key (auth.admin_key / CLAUDE_AGENT_ADMIN_KEY) must be at least 16 characters"
                    .into(),
            );
        }
        return Ok(AdminKey::Configured { hash: keys::hash_key(key) });
    }
    if storage.admin_key_exists().await.map_err(|e| e.to_string())? {
        return Ok(AdminKey::Stored);
    }
    let issued = keys::issue_key();
    let row = ApiKeyRow {
        key_id: issued.key_id.clone(),
        user_id: None,
        is_admin: true,
        key_hash: issued.hash.clone(),
        created_at: crate::clock::now_ms(),
        revoked_at: None,
    };
    match storage.insert_key(&row).await {
        Ok(()) => {}
        // Another instance generated one at the same moment: use theirs.
        Err(StorageError::Conflict(_)) => return Ok(AdminKey::Stored),
        Err(e) => return Err(e.to_string()),
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    if let Err(e) = write_secret_file(&path, &issued.api_key) {
        let _ = storage.delete_key(&issued.key_id).await;
        return Err(format!("cannot write the admin key to {}: {e}", path.display()));
    }
    log::warn!("generated an admin key; it is in {} (readable by this user only)", path.display());
    Ok(AdminKey::Stored)
}

/// Writes `secret` to a new file readable by its owner only (replacing an old one).
fn write_secret_file(path: &PathBuf, secret: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
