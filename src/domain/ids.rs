//! The shape of identifiers the API accepts.

/// What a valid `user_id` is, for messages.
pub const USER_ID_RULE: &str = "must be 1-64 characters of A-Z, a-z, 0-9, _ and -";

/// `user_id`: 1–64 characters of `[A-Za-z0-9_-]` (it names a directory).
pub fn is_valid_user_id(user_id: &str) -> bool {
    (1..=64).contains(&user_id.len()) && user_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
