//! Rows as stored. Shared by both backends (portable column types only).

use diesel::prelude::*;

use super::schema::{api_keys, sessions, users};
use crate::domain::SessionStatus;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub user_id: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub user_id: Option<String>,
    pub is_admin: bool,
    pub key_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub session_id: String,
    pub user_id: String,
    pub subdir: String,
    pub cwd: String,
    pub status: SessionStatus,
    pub created_at: i64,
    pub last_active_at: i64,
    pub message_count: i64,
    pub total_cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// JSON object.
    pub metadata: String,
    /// JSON object of the per-session option overrides.
    pub options: String,
    pub cli_session_id: String,
    pub last_event_id: i64,
    /// A fork's source CLI session, for its first start (`--resume=<it> --fork-session`).
    pub fork_from: Option<String>,
    /// `--resume-session-at` for the next starts (a fork or a rewind), until a turn continued.
    pub resume_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = super::schema::messages)]
pub struct NewMessage<'a> {
    pub session_id: &'a str,
    pub turn_id: &'a str,
    pub role: &'a str,
    pub text: &'a str,
    pub tool_calls: &'a str,
    pub created_at: i64,
    pub cost_usd: Option<f64>,
    /// The CLI's transcript uuid of the message.
    pub cli_uuid: Option<&'a str>,
}

/// A stored event (the SSE frame's JSON), kept for replay.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::events)]
pub struct EventRow {
    pub session_id: String,
    pub event_id: i64,
    pub turn_id: String,
    pub payload: String,
    pub created_at: i64,
}
