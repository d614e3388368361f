//! Session logic behind the REST handlers: validation, working directories, admission by the
//! registry, and the stored row. Handlers stay thin; the runtime plugs its actors in here.

pub mod budgets;
mod credentials;
pub mod files;
mod forks;
mod live_settings;
pub mod options;
mod recent_actors;
mod steer;
pub mod usage;
pub mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::actors::{
    CLIENT_BUFFER, EventHub, PendingPermission, PermissionAnswer, RegistryHandle, SessionEvent, SessionHandle,
    StopReason, TurnBudget, TurnRefused, TurnStarted, Urgency,
};
use crate::auth::Caller;
use crate::auth::credentials::UserCredentials;
use crate::cli::launch::UserEnv;
use crate::clock;
use crate::domain::{AgentInfo, SessionStatus, Usage};
use crate::error::ApiError;
use crate::settings::Settings;
use crate::storage::{SessionFilter, SessionRow, Storage};
use budgets::{Budgets, Reserved};
use credentials::LaunchCredentials;
pub use forks::{ForkSession, RewindSession, Rewound};
pub use live_settings::SessionSettings;
use recent_actors::RecentActors;
pub use steer::{Accepted, Interrupted, MessageMode, QueuedMessage};

const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const DEFAULT_LIST_LIMIT: i64 = 100;
pub const MAX_LIST_LIMIT: i64 = 1000;

/// `POST /sessions` body (seed-compatible). An empty body counts as `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Whose session: only the admin key (or `auth.mode = "none"`) names it; a user key acts
    /// for its own user.
    pub user_id: Option<String>,
    /// Working directory inside the user's directory (relative, no `..`); created if missing.
    pub subdir: Option<String>,
    /// Anything the client wants kept with the session (a JSON object, at most 16 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Agent options for this session, among those `session.overridable` allows:
    /// `system_prompt`, `append_system_prompt`, `model`, `permission_mode` (`default`,
    /// `acceptEdits`, `plan`, `bypassPermissions`, `dontAsk`, `auto`), `allowed_tools`,
    /// `disallowed_tools`, `max_turns` (1-1000), `max_budget_usd`, `setting_sources`
    /// (`user`, `project`, `local`), `mcp_servers` (the CLI's `mcpServers` shape).
    #[schema(value_type = Option<Object>)]
    pub options: Option<Value>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    /// The working directory relative to the user's directory (`""` for the directory itself).
    pub subdir: String,
    /// The working directory's absolute path on the server.
    pub cwd: String,
    pub status: SessionStatus,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub last_active_at: String,
    /// Turns so far.
    pub message_count: i64,
    pub total_cost_usd: f64,
    pub usage: Usage,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The options the session runs with (its overrides of the service's defaults).
    #[schema(value_type = Object)]
    pub options: Value,
    /// The latest event id kept for the session (follow `/events` from here).
    pub last_event_id: i64,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        let parse = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| Value::Object(Default::default()));
        Session {
            metadata: parse(&row.metadata),
            options: parse(&row.options),
            created_at: clock::rfc3339(row.created_at),
            last_active_at: clock::rfc3339(row.last_active_at),
            usage: Usage { input_tokens: row.input_tokens, output_tokens: row.output_tokens },
            session_id: row.session_id,
            user_id: row.user_id,
            subdir: row.subdir,
            cwd: row.cwd,
            status: row.status,
            message_count: row.message_count,
            total_cost_usd: row.total_cost_usd,
            last_event_id: row.last_event_id,
        }
    }
}

/// One message of the stored conversation (`GET /sessions/{id}/messages`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Message {
    /// Cursor for `before=`.
    pub id: i64,
    pub turn_id: String,
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    /// The assistant's tool calls of the turn (empty for the user's message).
    #[schema(value_type = Vec<crate::domain::ToolCall>)]
    pub tool_calls: Value,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The turn's cost, on the assistant's message.
    pub cost_usd: Option<f64>,
}

impl From<crate::storage::MessageRow> for Message {
    fn from(row: crate::storage::MessageRow) -> Self {
        Message {
            id: row.id,
            tool_calls: serde_json::from_str(&row.tool_calls).unwrap_or_else(|_| Value::Array(Vec::new())),
            created_at: clock::rfc3339(row.created_at),
            turn_id: row.turn_id,
            role: row.role,
            text: row.text,
            cost_usd: row.cost_usd,
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
    registry: RegistryHandle,
    hub: Arc<EventHub>,
    /// Canonical `user.base_dir`.
    users_root: PathBuf,
    /// Users' own provider credentials, given to a CLI when one starts.
    credentials: Arc<dyn UserEnv>,
    budgets: Budgets,
    /// The actors of recent turns: a warm session's turn skips the registry.
    recent: RecentActors,
    /// With several instances: the leases this one holds.
    cluster: Option<Arc<crate::actors::cluster::Cluster>>,
}

impl SessionService {
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        registry: RegistryHandle,
        hub: Arc<EventHub>,
        users_root: PathBuf,
        credentials: UserCredentials,
    ) -> Self {
        let budgets = Budgets::new(settings.clone(), storage.clone());
        let credentials = Arc::new(LaunchCredentials { credentials, budgets: budgets.clone() });
        Self {
            settings,
            storage,
            registry,
            hub,
            users_root,
            credentials,
            budgets,
            recent: Default::default(),
            cluster: None,
        }
    }

    /// In a cluster, a local actor is used only while this instance still holds its lease.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::actors::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Users' spending limits and what they spent.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Canonical `user.base_dir`.
    pub fn users_root(&self) -> &std::path::Path {
        &self.users_root
    }

    pub async fn create(&self, caller: &Caller, req: CreateSession) -> Result<Session, ApiError> {
        let user_id = caller.acting_user(req.user_id.as_deref())?;
        if *caller == Caller::Admin && self.storage.get_user(&user_id).await?.is_none() {
            return Err(ApiError::UserNotFound);
        }
        let options = options::validate_options(req.options.as_ref(), &self.settings.session.overridable)?;
        let metadata = match req.metadata {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(m @ Value::Object(_)) => m,
            Some(_) => return Err(ApiError::validation("metadata", "must be an object")),
        };
        let metadata = serde_json::to_string(&metadata).map_err(|e| ApiError::Internal(e.to_string()))?;
        if metadata.len() > MAX_METADATA_BYTES {
            return Err(ApiError::validation(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
            ));
        }
        let subdir = workspace::normalize_subdir(req.subdir.as_deref().unwrap_or(""))?;
        let (users_root, user, sub) = (self.users_root.clone(), user_id.clone(), subdir.clone());
        let auto_create = self.settings.user.auto_create_dir;
        let cwd = workspace::blocking(move || {
            let dir = workspace::create_session_dir(&users_root, &user, &sub, auto_create)?;
            // Informational (the CLI's transcript is named after it): the directory is always
            // reached again from the user's handle and `subdir`, never by this path.
            Ok(workspace::current_path(&dir).unwrap_or_else(|| users_root.join(&user).join(&sub)))
        })
        .await?;
        let cwd = cwd.to_str().ok_or_else(|| ApiError::InvalidPath("working directory is not UTF-8".into()))?;

        let row = new_session_row(user_id, subdir, cwd, metadata, Value::Object(options).to_string());
        self.storage.insert_session(&row).await?;
        // The CLI starts now, in the background, so the first message finds it ready. A refused
        // or failed launch leaves no row behind.
        if let Err(e) = self.launch(&row, Urgency::Background).await {
            if let Err(purge) = self.storage.purge_session(&row.session_id).await {
                log::error!(
                    "session {}: launch failed ({e}) and its row could not be removed: {purge}",
                    row.session_id
                );
            }
            return Err(e);
        }
        Ok(row.into())
    }

    /// The caller's session, or 404 for a missing or foreign one (indistinguishable).
    /// A session past its TTL is expired on the spot rather than at the next sweep.
    pub async fn get(&self, caller: &Caller, session_id: &str) -> Result<SessionRow, ApiError> {
        let row = self.storage.get_session(session_id).await?.ok_or(ApiError::SessionNotFound)?;
        self.checked(caller, row).await
    }

    /// A stored session as `caller` may see it: 404 if not theirs, expired once past its TTL.
    async fn checked(&self, caller: &Caller, row: SessionRow) -> Result<SessionRow, ApiError> {
        if !caller.may_access(&row.user_id) {
            return Err(ApiError::SessionNotFound);
        }
        if self.past_ttl(&row) {
            return self.expire(row).await;
        }
        Ok(self.live_status(row))
    }

    /// The stored row with the status its actor knows: `busy` reaches the database only for a
    /// turn longer than the writer's grace (and the CLI's `active` may wait with it).
    fn live_status(&self, mut row: SessionRow) -> SessionRow {
        if matches!(row.status, SessionStatus::Active | SessionStatus::Starting)
            && self.hub.turns().running(&row.session_id)
        {
            row.status = SessionStatus::Busy;
        }
        row
    }

    pub async fn list(&self, caller: &Caller, query: ListQuery) -> Result<Vec<SessionRow>, ApiError> {
        let user_id = caller.visible_user(query.user_id.as_deref())?;
        let status = match query.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(SessionStatus::parse(s).ok_or_else(|| {
                ApiError::query_validation(
                    "status",
                    "must be one of starting, active, busy, idle, closed, expired, failed",
                )
            })?),
        };
        let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(ApiError::query_validation("limit", format!("must be from 1 to {MAX_LIST_LIMIT}")));
        }
        let offset = query.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::query_validation("offset", "must not be negative"));
        }
        let rows = self.storage.list_sessions(&SessionFilter { user_id, status, limit, offset }).await?;
        // Filtered again after the overlay: an `active` row in a turn is `busy`.
        Ok(rows
            .into_iter()
            .map(|row| self.live_status(row))
            .filter(|row| status.is_none_or(|s| row.status == s))
            .collect())
    }

    /// Closes a session (row kept), or with `purge` deletes it with its history and transcript
    /// (never its working directory).
    pub async fn close(&self, caller: &Caller, session_id: &str, purge: bool) -> Result<(), ApiError> {
        let row = self.get(caller, session_id).await?;
        if purge {
            self.keep_forks_of(&row).await?;
            self.storage.purge_session(&row.session_id).await?;
            self.retire(vec![row.session_id.clone()], StopReason::Purged);
            self.remove_transcript(&row).await;
        } else {
            self.storage.transition_session(&row.session_id, &SessionStatus::OPEN, SessionStatus::Closed, None).await?;
            self.retire(vec![row.session_id.clone()], StopReason::Closed);
        }
        Ok(())
    }

    /// Reopens a closed, idle or failed session (its CLI resumes the conversation); a live one
    /// is returned as it is. Counts against quotas and memory like a create.
    pub async fn resume(&self, caller: &Caller, session_id: &str) -> Result<SessionRow, ApiError> {
        let row = self.get(caller, session_id).await?;
        let previous = row.status;
        if previous == SessionStatus::Expired {
            return Err(ApiError::SessionExpired);
        }
        if previous.is_live() {
            return Ok(row);
        }
        let now = clock::now_ms();
        let reopened = self
            .storage
            .transition_session(&row.session_id, &SessionStatus::RESUMABLE, SessionStatus::Starting, Some(now))
            .await?;
        let Some(reopened) = reopened else {
            // Changed meanwhile (closed, expired or resumed): answer with what it is now.
            let current = self.get(caller, session_id).await?;
            if current.status == SessionStatus::Expired {
                return Err(ApiError::SessionExpired);
            }
            return Ok(current);
        };
        if let Err(e) = self.launch(&reopened, Urgency::Background).await {
            let back = self.storage.transition_session(&row.session_id, &[SessionStatus::Starting], previous, None);
            if let Err(undo) = back.await {
                log::error!("session {}: could not restore its status after a refused resume: {undo}", row.session_id);
            }
            return Err(e);
        }
        Ok(reopened)
    }

    /// Starts a turn and returns its events. A session without a live CLI (idle after an
    /// eviction, a crash or a restart) is respawned with `--resume`, invisibly to the client.
    /// `timeout` bounds the whole request from now: the launch, the wait for a turn slot and
    /// for the CLI to be ready, and the turn itself (`504 turn_timeout`).
    pub async fn start_turn(
        &self,
        caller: &Caller,
        session_id: &str,
        message: String,
        timeout: Duration,
    ) -> Result<TurnStarted, ApiError> {
        self.start_turn_with(caller, session_id, message, timeout, false).await
    }

    /// [`SessionService::start_turn`] for a client that waits for the whole answer: its events
    /// hold the turn's last one only (the one with the outcome), so it is not woken for each.
    pub async fn start_sync_turn(
        &self,
        caller: &Caller,
        session_id: &str,
        message: String,
        timeout: Duration,
    ) -> Result<TurnStarted, ApiError> {
        self.start_turn_with(caller, session_id, message, timeout, true).await
    }

    async fn start_turn_with(
        &self,
        caller: &Caller,
        session_id: &str,
        message: String,
        timeout: Duration,
        outcome_only: bool,
    ) -> Result<TurnStarted, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let queue_timeout = Duration::from_secs(self.settings.api.queue_timeout);
        for _ in 0..3 {
            let (actor, reserved) = self.live_actor(caller, session_id, deadline).await?;
            let budget = match reserved {
                Reserved::Unbounded => None,
                Reserved::Held(hold) => Some(TurnBudget { usd: hold.usd, hold: Box::new(hold) }),
            };
            // The actor bounds this by `deadline` itself: dropping the send could leave a turn
            // started that nobody reads.
            match actor.start_turn(message.clone(), deadline, queue_timeout, budget, outcome_only).await {
                Ok(started) => return Ok(started),
                Err(TurnRefused::Api(e)) => return Err(e),
                // The actor is stopping or just stopped: look again, the registry relaunches.
                Err(TurnRefused::Gone) => self.recent.forget(session_id),
            }
        }
        Err(ApiError::CliFailed("the CLI keeps exiting before it is ready; see the service log".into()))
    }

    /// The session's live actor, launched (resumed) if it has none, and what the turn may
    /// spend (see [`Budgets::reserve`]). The launch may wait for the session's previous
    /// process to be reaped: that wait ends at `deadline`.
    async fn live_actor(
        &self,
        caller: &Caller,
        session_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(SessionHandle, Reserved), ApiError> {
        // The session and its owner's budget row in one storage operation (one hop per turn less).
        let (row, own_budget) =
            self.storage.get_session_and_budget(session_id).await?.ok_or(ApiError::SessionNotFound)?;
        let row = self.checked(caller, row).await?;
        match row.status {
            SessionStatus::Closed => return Err(ApiError::SessionClosed),
            SessionStatus::Expired => return Err(ApiError::SessionExpired),
            _ => {}
        }
        let (mut actor, recent) = match self.recent.get(&row.session_id) {
            Some(actor) => (Some(actor), true),
            None => (self.registry.lookup(&row.session_id).await?, false),
        };
        if let (Some(_), Some(cluster)) = (&actor, &self.cluster)
            && !cluster.still_owns(&row.session_id).await
        {
            // Its lease went to another instance while this one was paused or cut off: its
            // CLI is being stopped, and the launch below finds the new owner.
            self.recent.forget(&row.session_id);
            actor = None;
        }
        // Before the CLI is asked anything, so a user over a limit spends nothing more.
        let cli_left = async {
            match &actor {
                Some(actor) => Some(actor.budget_left().await),
                None => None,
            }
        };
        let reserved =
            self.budgets.reserve(&row.user_id, &row.session_id, row.total_cost_usd, own_budget, cli_left).await?;
        if let Some(actor) = actor {
            if !recent {
                self.recent.record(&row.session_id, &actor);
            }
            return Ok((actor, reserved));
        }
        self.storage
            .transition_session(&row.session_id, &SessionStatus::RESUMABLE, SessionStatus::Starting, None)
            .await?;
        // Dropping the wait is safe: the registry finishes the launch and keeps the actor.
        let actor = tokio::time::timeout_at(deadline, self.launch(&row, Urgency::Turn))
            .await
            .map_err(|_| ApiError::TurnTimeout("The turn's timeout passed while starting the CLI".into()))??;
        self.recent.record(&row.session_id, &actor);
        Ok((actor, reserved))
    }

    /// The stored conversation: the `limit` latest messages before message id `before`, oldest first.
    pub async fn history(
        &self,
        caller: &Caller,
        session_id: &str,
        before: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Vec<Message>, ApiError> {
        let row = self.get(caller, session_id).await?;
        let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(ApiError::query_validation("limit", format!("must be from 1 to {MAX_LIST_LIMIT}")));
        }
        let rows = self.storage.list_messages(&row.session_id, before, limit).await?;
        Ok(rows.into_iter().map(Message::from).collect())
    }

    /// Every event of the session after `after`: the stored ones, then those not yet stored,
    /// then live ones, with no gap and no duplicate at the seams. The live feed is subscribed
    /// to first, so an event is always in one of the three; duplicates are dropped by id.
    pub async fn follow(
        &self,
        caller: &Caller,
        session_id: &str,
        after: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Arc<SessionEvent>>, ApiError> {
        let row = self.get(caller, session_id).await?;
        let mut live = self.hub.subscribe(&row.session_id);
        let unstored = match self.registry.lookup(&row.session_id).await? {
            Some(actor) => actor.unstored_events(after).await,
            None => Vec::new(),
        };
        let mut replay: std::collections::BTreeMap<i64, Arc<SessionEvent>> = self
            .storage
            .list_events(&row.session_id, after)
            .await?
            .into_iter()
            .map(|e| {
                let event =
                    SessionEvent { id: e.event_id, turn_id: e.turn_id.into(), json: e.payload.into(), outcome: None };
                (e.event_id, Arc::new(event))
            })
            .collect();
        replay.extend(unstored.into_iter().map(|e| (e.id, e)));
        let (tx, rx) = tokio::sync::mpsc::channel(CLIENT_BUFFER);
        let moved = self.moved_elsewhere(row.session_id.clone());
        actix_web::rt::spawn(async move {
            let forward = async {
                let mut last = after;
                for (id, event) in replay {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    last = id;
                }
                // A follower that falls behind the live buffer is dropped: it reconnects with its last id.
                while let Ok(event) = live.recv().await {
                    if event.id > last {
                        last = event.id;
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            };
            // The client leaving drops the stream, which closes `tx`: a quiet or closed session
            // may never have another event to fail on, so the task waits for either.
            tokio::select! {
                () = forward => {}
                () = tx.closed() => {}
                // Another instance runs the session now: the stream ends, and the client's
                // reconnection (with its last id) is forwarded to that instance.
                () = moved => {}
            }
            // `live` goes with the task: the hub drops the session's channel with its last follower.
        });
        Ok(rx)
    }

    /// Resolves once another instance holds the session's lease (never on a single instance):
    /// a follower here would not see its events.
    fn moved_elsewhere(&self, session_id: String) -> impl std::future::Future<Output = ()> + use<> {
        let (cluster, storage) = (self.cluster.clone(), self.storage.clone());
        async move {
            let Some(cluster) = cluster else { return std::future::pending().await };
            let every = cluster.lease_poll();
            loop {
                tokio::time::sleep(every).await;
                if cluster.owns(&session_id) {
                    continue;
                }
                if let Ok(Some(_)) = storage.owner_elsewhere(&session_id, cluster.instance_id()).await {
                    return;
                }
            }
        }
    }

    /// What the session's CLI reported at the start of its last turn (404 before its first
    /// turn, or once its process was stopped).
    pub async fn agent_info(&self, caller: &Caller, session_id: &str) -> Result<AgentInfo, ApiError> {
        let row = self.get(caller, session_id).await?;
        let unknown =
            || ApiError::NotFound("The CLI has not reported yet: it does so at the start of each turn".into());
        let actor = self.registry.lookup(&row.session_id).await?.ok_or_else(unknown)?;
        actor.agent_info().await.ok_or_else(unknown)
    }

    /// The session's open tool-approval requests.
    pub async fn permissions(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<Vec<(String, PendingPermission)>, ApiError> {
        let row = self.get(caller, session_id).await?;
        Ok(match self.registry.lookup(&row.session_id).await? {
            Some(actor) => actor.permissions().await,
            None => Vec::new(),
        })
    }

    /// Answers one tool-approval request (404 if it is unknown or already answered).
    pub async fn answer_permission(
        &self,
        caller: &Caller,
        session_id: &str,
        answer: PermissionAnswer,
    ) -> Result<(), ApiError> {
        let row = self.get(caller, session_id).await?;
        let gone = || ApiError::NotFound("No open permission request with this id".into());
        let actor = self.registry.lookup(&row.session_id).await?.ok_or_else(gone)?;
        actor.answer_permission(answer).await
    }

    /// The working directory of one of the caller's sessions (for its files), opened beneath
    /// the user's directory: `invalid_path` if it has been replaced by a link leading out.
    pub async fn session_dir(&self, caller: &Caller, session_id: &str) -> Result<Dir, ApiError> {
        let row = self.get(caller, session_id).await?;
        let users_root = self.users_root.clone();
        workspace::blocking(move || workspace::open_session_dir(&users_root, &row.user_id, &row.subdir)).await
    }

    /// Interrupts the running turn; its id is returned.
    pub async fn interrupt(&self, caller: &Caller, session_id: &str) -> Result<String, ApiError> {
        let row = self.get(caller, session_id).await?;
        let actor = self.registry.lookup(&row.session_id).await?.ok_or(ApiError::NoTurnRunning)?;
        actor.interrupt().await
    }

    /// Stops these sessions' processes (their rows were updated by the caller).
    pub fn retire(&self, session_ids: Vec<String>, reason: StopReason) {
        self.registry.retire(session_ids, reason);
    }

    /// Starts the session's CLI, once its directory is verified: a directory replaced by a
    /// link leading out of the user's is `invalid_path` and no CLI starts; a missing one is
    /// made again beneath the user's handle.
    async fn launch(&self, row: &SessionRow, urgency: Urgency) -> Result<SessionHandle, ApiError> {
        let (users_root, user, subdir) = (self.users_root.clone(), row.user_id.clone(), row.subdir.clone());
        let auto_create = self.settings.user.auto_create_dir;
        // The CLI is started in this handle (fchdir), never at the path `row.cwd`: a directory
        // swapped for a link after this check is not entered.
        let dir = workspace::blocking(move || workspace::create_session_dir(&users_root, &user, &subdir, auto_create))
            .await?;
        let cwd = std::os::fd::OwnedFd::from(dir.into_std_file());
        self.registry.launch(row.clone(), cwd, self.credentials.clone(), urgency).await
    }

    /// Removes the session's transcript beneath the user's directory handle (a link planted at
    /// `.claude` or on the way is not followed out).
    async fn remove_transcript(&self, row: &SessionRow) {
        let users_root = self.users_root.clone();
        let row = row.clone();
        let removed = workspace::blocking(move || {
            let config_dir = users_root.join(&row.user_id).join(".claude");
            match crate::cli::command::transcript_path(&config_dir, &row.cwd, &row.cli_session_id) {
                Some(path) => workspace::remove_user_file(&users_root, &row.user_id, &path),
                None => Ok(()),
            }
        });
        if let Err(e) = removed.await {
            log::warn!("session {}: cannot remove its transcript: {e:?}", row.session_id);
        }
    }

    fn past_ttl(&self, row: &SessionRow) -> bool {
        let ttl_ms = self.settings.session.ttl as i64 * 1000;
        ttl_ms > 0 && SessionStatus::OPEN.contains(&row.status) && clock::now_ms() - row.last_active_at > ttl_ms
    }

    async fn expire(&self, row: SessionRow) -> Result<SessionRow, ApiError> {
        self.retire(vec![row.session_id.clone()], StopReason::Expired);
        let expired = self
            .storage
            .transition_session(&row.session_id, &SessionStatus::OPEN, SessionStatus::Expired, None)
            .await?;
        Ok(expired.unwrap_or(row))
    }
}

/// A new session's row: its own id (the CLI's too), starting, nothing counted yet.
fn new_session_row(user_id: String, subdir: String, cwd: &str, metadata: String, options: String) -> SessionRow {
    let session_id = uuid::Uuid::new_v4().to_string();
    let now = clock::now_ms();
    SessionRow {
        cli_session_id: session_id.clone(),
        session_id,
        user_id,
        subdir,
        cwd: cwd.to_string(),
        status: SessionStatus::Starting,
        created_at: now,
        last_active_at: now,
        message_count: 0,
        total_cost_usd: 0.0,
        input_tokens: 0,
        output_tokens: 0,
        metadata,
        options,
        last_event_id: 0,
        fork_from: None,
        resume_at: None,
    }
}
