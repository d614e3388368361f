//! Session logic behind the REST handlers: validation, working directories, admission by the
//! registry, and the stored row. Handlers stay thin; the runtime plugs its actors in here.

pub mod options;
mod status;
pub mod workspace;

use std::path::PathBuf;
use std::sync::Arc;

use actix::Addr;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actors::{Admit, Registry, Release};
use crate::auth::Caller;
use crate::clock;
use crate::error::ApiError;
use crate::settings::Settings;
use crate::storage::{SessionFilter, SessionRow, Storage};
pub use status::SessionStatus;

const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const DEFAULT_LIST_LIMIT: i64 = 100;
pub const MAX_LIST_LIMIT: i64 = 1000;

/// `POST /sessions` body (seed-compatible).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub user_id: Option<String>,
    pub subdir: Option<String>,
    pub metadata: Option<Value>,
    pub options: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub subdir: String,
    pub cwd: String,
    pub status: String,
    pub created_at: String,
    pub last_active_at: String,
    pub message_count: i64,
    pub total_cost_usd: f64,
    pub usage: Usage,
    pub metadata: Value,
    pub options: Value,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        let parse = |text: &str| {
            serde_json::from_str(text).unwrap_or_else(|_| Value::Object(Default::default()))
        };
        Session {
            metadata: parse(&row.metadata),
            options: parse(&row.options),
            created_at: clock::rfc3339(row.created_at),
            last_active_at: clock::rfc3339(row.last_active_at),
            usage: Usage {
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
            },
            session_id: row.session_id,
            user_id: row.user_id,
            subdir: row.subdir,
            cwd: row.cwd,
            status: row.status,
            message_count: row.message_count,
            total_cost_usd: row.total_cost_usd,
        }
    }
}

/// Which sessions a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Clone)]
pub struct SessionService {
    settings: Arc<Settings>,
    storage: Storage,
    registry: Addr<Registry>,
    /// Canonical `user.base_dir`.
    users_root: PathBuf,
}

impl SessionService {
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        registry: Addr<Registry>,
        users_root: PathBuf,
    ) -> Self {
        Self {
            settings,
            storage,
            registry,
            users_root,
        }
    }

    pub async fn create(&self, caller: &Caller, req: CreateSession) -> Result<Session, ApiError> {
        let user_id = caller.acting_user(req.user_id.as_deref())?;
        if *caller == Caller::Admin && self.storage.get_user(&user_id).await?.is_none() {
            return Err(ApiError::UserNotFound);
        }
        let options =
            options::validate_options(req.options.as_ref(), &self.settings.session.overridable)?;
        let metadata = match req.metadata {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(m @ Value::Object(_)) => m,
            Some(_) => return Err(ApiError::validation("metadata", "must be an object")),
        };
        let metadata =
            serde_json::to_string(&metadata).map_err(|e| ApiError::Internal(e.to_string()))?;
        if metadata.len() > MAX_METADATA_BYTES {
            return Err(ApiError::validation(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
            ));
        }
        let subdir = workspace::normalize_subdir(req.subdir.as_deref().unwrap_or(""))?;
        let user_dir = workspace::user_dir(
            &self.users_root,
            &user_id,
            self.settings.user.auto_create_dir,
        )?;
        let cwd = workspace::resolve_session_dir(&user_dir, &subdir)?;
        let cwd = cwd
            .to_str()
            .ok_or_else(|| ApiError::InvalidPath("working directory is not UTF-8".into()))?;

        let session_id = uuid::Uuid::new_v4().to_string();
        self.registry
            .send(Admit {
                session_id: session_id.clone(),
                user_id: user_id.clone(),
            })
            .await??;
        let now = clock::now_ms();
        let row = SessionRow {
            session_id: session_id.clone(),
            user_id,
            subdir,
            cwd: cwd.to_string(),
            status: SessionStatus::Active.as_str().to_string(),
            created_at: now,
            last_active_at: now,
            message_count: 0,
            total_cost_usd: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            metadata,
            options: Value::Object(options).to_string(),
            cli_session_id: session_id.clone(),
            last_event_id: 0,
        };
        if let Err(e) = self.storage.insert_session(&row).await {
            self.release(vec![session_id]);
            return Err(e.into());
        }
        Ok(row.into())
    }

    /// The caller's session, or 404 for a missing or foreign one (indistinguishable).
    /// A session past its TTL is expired on the spot rather than at the next sweep.
    pub async fn get(&self, caller: &Caller, session_id: &str) -> Result<SessionRow, ApiError> {
        let row = self
            .storage
            .get_session(session_id)
            .await?
            .ok_or(ApiError::SessionNotFound)?;
        if !caller.may_access(&row.user_id) {
            return Err(ApiError::SessionNotFound);
        }
        if self.past_ttl(&row) {
            return self.expire(row).await;
        }
        Ok(row)
    }

    pub async fn list(
        &self,
        caller: &Caller,
        query: ListQuery,
    ) -> Result<Vec<SessionRow>, ApiError> {
        let user_id = caller.visible_user(query.user_id.as_deref())?;
        let status = match query.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(SessionStatus::parse(s).ok_or_else(|| {
                ApiError::validation(
                    "status",
                    "must be one of starting, active, busy, idle, closed, expired, failed",
                )
            })?),
        };
        let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("must be from 1 to {MAX_LIST_LIMIT}"),
            ));
        }
        let offset = query.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::validation("offset", "must not be negative"));
        }
        Ok(self
            .storage
            .list_sessions(&SessionFilter {
                user_id,
                status,
                limit,
                offset,
            })
            .await?)
    }

    /// Closes a session (row kept), or with `purge` deletes it with its history.
    pub async fn close(
        &self,
        caller: &Caller,
        session_id: &str,
        purge: bool,
    ) -> Result<(), ApiError> {
        let row = self.get(caller, session_id).await?;
        self.release(vec![row.session_id.clone()]);
        if purge {
            self.storage.purge_session(&row.session_id).await?;
        } else {
            self.storage
                .transition_session(
                    &row.session_id,
                    &SessionStatus::OPEN,
                    SessionStatus::Closed,
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Reopens a closed, idle or failed session; a live one is returned as it is.
    pub async fn resume(&self, caller: &Caller, session_id: &str) -> Result<SessionRow, ApiError> {
        let row = self.get(caller, session_id).await?;
        let status = SessionStatus::parse(&row.status).unwrap_or(SessionStatus::Failed);
        match status {
            SessionStatus::Expired => Err(ApiError::SessionExpired),
            s if s.is_live() => Ok(row),
            _ => {
                self.registry
                    .send(Admit {
                        session_id: row.session_id.clone(),
                        user_id: row.user_id.clone(),
                    })
                    .await??;
                let now = clock::now_ms();
                let changed = self
                    .storage
                    .transition_session(
                        &row.session_id,
                        &SessionStatus::RESUMABLE,
                        SessionStatus::Active,
                        Some(now),
                    )
                    .await;
                match changed {
                    Ok(Some(row)) => Ok(row),
                    // Someone else changed it meanwhile (closed, expired or resumed): show what it is now.
                    Ok(None) => {
                        let now_row = self.get(caller, session_id).await?;
                        if !SessionStatus::parse(&now_row.status)
                            .is_some_and(SessionStatus::is_live)
                        {
                            self.release(vec![now_row.session_id.clone()]);
                        }
                        if now_row.status == SessionStatus::Expired.as_str() {
                            return Err(ApiError::SessionExpired);
                        }
                        Ok(now_row)
                    }
                    Err(e) => {
                        self.release(vec![row.session_id]);
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Gives these sessions' live slots back to the registry.
    pub fn release(&self, session_ids: Vec<String>) {
        if !session_ids.is_empty() {
            self.registry.do_send(Release { session_ids });
        }
    }

    fn past_ttl(&self, row: &SessionRow) -> bool {
        let ttl_ms = self.settings.session.ttl as i64 * 1000;
        ttl_ms > 0
            && SessionStatus::OPEN_STRS.contains(&row.status.as_str())
            && clock::now_ms() - row.last_active_at > ttl_ms
    }

    async fn expire(&self, row: SessionRow) -> Result<SessionRow, ApiError> {
        self.release(vec![row.session_id.clone()]);
        let expired = self
            .storage
            .transition_session(
                &row.session_id,
                &SessionStatus::OPEN,
                SessionStatus::Expired,
                None,
            )
            .await?;
        Ok(expired.unwrap_or(row))
    }
}
