//! API keys: `cah_<key_id>_<secret>`. Only a SHA-256 of the whole key is stored (the key
//! carries 256 random bits, so a slow hash adds nothing); comparison is constant-time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "cah_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A newly issued key: `api_key` is shown once and never stored.
pub struct IssuedKey {
    pub key_id: String,
    pub api_key: String,
    pub hash: String,
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS random source failing is not something a server can carry on without.
    getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
    hex::encode(buf)
}

pub fn issue_key() -> IssuedKey {
    let key_id = random_hex(KEY_ID_BYTES);
    let api_key = format!("{PREFIX}{key_id}_{}", random_hex(SECRET_BYTES));
    let hash = hash_key(&api_key);
    IssuedKey { key_id, api_key, hash }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key id of a key in our format, without looking anything up.
pub fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == KEY_ID_BYTES * 2
        && secret.len() == SECRET_BYTES * 2
        && id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_hexdigit());
    well_formed.then_some(id)
}

/// Constant-time equality of two stored-form hashes.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_verify() {
        let k = issue_key();
        assert_eq!(key_id_of(&k.api_key), Some(k.key_id.as_str()));
        assert!(hashes_match(&hash_key(&k.api_key), &k.hash));
        assert!(!hashes_match(&hash_key("cah_other"), &k.hash));
        assert_ne!(issue_key().api_key, k.api_key);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in ["", "cah_", "cah_zz_yy", "Bearer x", "cah_0123456789abcdef_short"] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
    }
}
