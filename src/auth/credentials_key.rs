//! The key that seals users' provider credentials at rest: `auth.credentials_key` (base64 of
//! 32 bytes, or `CLAUDE_AGENT_AUTH__CREDENTIALS_KEY`), else `<data dir>/credentials.key`
//! (0600), generated on first start. Records are XChaCha20-Poly1305 with a random nonce each,
//! and the user id as associated data: a record copied to another user's row does not open.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const CREDENTIALS_KEY_FILE: &str = "credentials.key";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// Names the format of a sealed record, so another scheme can be told apart later.
const VERSION: &str = "v1:";

/// What a webhook's sealed signing secret is bound to (the associated data, as a user id is
/// for credentials): a record copied to another hook's row does not open.
pub fn webhook_secret_aad(webhook_id: &str) -> String {
    format!("webhook:{webhook_id}")
}

/// The sealing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct CredentialsKey(Arc<XChaCha20Poly1305>);

impl std::fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialsKey(..)")
    }
}

impl CredentialsKey {
    /// The configured key, else the one in the data dir, else a new one written there.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> Result<CredentialsKey, String> {
        if let Some(text) = configured.filter(|k| !k.trim().is_empty()) {
            return Self::from_base64(text)
                .map_err(|e| format!("auth.credentials_key (CLAUDE_AGENT_AUTH__CREDENTIALS_KEY): {e}"));
        }
        let path = data_dir.join(CREDENTIALS_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::from_base64(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read {}: {e}", path.display()));
            }
            Err(_) => {}
        }
        let (key, text) = Self::generate()?;
        match write_new_key_file(&path, &text) {
            Ok(()) => {
                log::warn!("generated the credentials key into {} (readable by this user only)", path.display());
                Ok(key)
            }
            // Another instance on the same data dir wrote one at the same moment: use it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(None, data_dir),
            Err(e) => Err(format!("cannot write {}: {e}", path.display())),
        }
    }

    /// A new random key, and its base64 to keep.
    pub fn generate() -> Result<(CredentialsKey, String), String> {
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| format!("the random source failed: {e}"))?;
        Ok((CredentialsKey::from_bytes(&key), B64.encode(key)))
    }

    pub fn from_base64(text: &str) -> Result<CredentialsKey, String> {
        let bytes = B64.decode(text.trim()).map_err(|_| "not base64".to_string())?;
        if bytes.len() != KEY_BYTES {
            return Err(format!("must be {KEY_BYTES} bytes (base64), not {}", bytes.len()));
        }
        Ok(CredentialsKey::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> CredentialsKey {
        CredentialsKey(Arc::new(XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(bytes))))
    }

    /// `v1:` + base64(nonce ‖ ciphertext), bound to `user_id`.
    pub fn seal(&self, user_id: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| format!("the random source failed: {e}"))?;
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: user_id.as_bytes() })
            .map_err(|_| "sealing failed".to_string())?;
        let mut record = nonce.to_vec();
        record.extend_from_slice(&sealed);
        Ok(format!("{VERSION}{}", B64.encode(record)))
    }

    /// The plaintext of a record sealed for `user_id` under this key; an error (which never
    /// carries the record) for any other key, user or a changed byte.
    pub fn open(&self, user_id: &str, record: &str) -> Result<Vec<u8>, String> {
        let bytes = record
            .strip_prefix(VERSION)
            .and_then(|b| B64.decode(b).ok())
            .filter(|b| b.len() > NONCE_BYTES)
            .ok_or_else(|| "the sealed record is malformed".to_string())?;
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        self.0.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: user_id.as_bytes() }).map_err(|_| {
            "the sealed record does not open with this key for this user (another key, or a copied row)".to_string()
        })
    }
}

/// Writes a key file that must not exist yet, readable by its owner only.
pub fn write_new_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_for_its_user_under_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialsKey::load(None, dir.path()).unwrap();
        let record = key.seal("alice", b"sk-alice").unwrap();
        assert!(!record.contains("sk-alice"));
        assert_eq!(key.open("alice", &record).unwrap(), b"sk-alice");
        assert!(key.open("bob", &record).is_err(), "a row copied to another user must not open");
        let other = CredentialsKey::from_base64(&B64.encode([7u8; 32])).unwrap();
        assert!(other.open("alice", &record).is_err());
        assert_ne!(key.seal("alice", b"sk-alice").unwrap(), record, "a fresh nonce each time");
        // The generated key is kept (0600) and found again at the next start.
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join(CREDENTIALS_KEY_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(CredentialsKey::load(None, dir.path()).unwrap().open("alice", &record).unwrap(), b"sk-alice");
    }

    #[test]
    fn a_configured_key_must_be_32_bytes_of_base64() {
        assert!(CredentialsKey::from_base64("short").is_err());
        assert!(CredentialsKey::from_base64(&B64.encode([1u8; 16])).is_err());
        assert!(CredentialsKey::from_base64(&B64.encode([1u8; 32])).is_ok());
    }
}
