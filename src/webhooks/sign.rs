//! Standard Webhooks signing: secrets `whsec_<base64>`, and
//! `webhook-signature: v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>` keyed with the
//! secret's decoded bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes of a generated secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// A new `whsec_…` secret.
pub fn generate_secret() -> Result<String, String> {
    let mut key = [0u8; SECRET_BYTES];
    getrandom::fill(&mut key).map_err(|e| format!("the random source failed: {e}"))?;
    Ok(format!("{SECRET_PREFIX}{}", B64.encode(key)))
}

/// The key bytes of a `whsec_…` secret, or why it is not one (the message never repeats it).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| format!("must start with `{SECRET_PREFIX}`"))?;
    let key = B64.decode(encoded).map_err(|_| format!("must be `{SECRET_PREFIX}` and base64"))?;
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
        return Err(format!("must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {}", key.len()));
    }
    Ok(key)
}

/// The `webhook-signature` header's value for one attempt.
pub fn signature(key: &[u8], message_id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| format!("HMAC key: {e}"))?;
    mac.update(format!("{message_id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector_signs_as_published() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_are_well_formed_and_bad_ones_are_refused() {
        let s = generate_secret().unwrap();
        assert_eq!(secret_key(&s).unwrap().len(), SECRET_BYTES);
        assert!(secret_key("plain").is_err());
        assert!(secret_key("whsec_!!").is_err());
        assert!(secret_key(&format!("whsec_{}", B64.encode([1u8; 8]))).is_err());
    }
}
