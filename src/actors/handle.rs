//! The actors as the rest of the service sees them: handles with async methods. `sessions/`
//! and `api/` never see an actix message or an `Addr` (`scripts/check-layers` refuses it), so
//! the runtime behind these methods can change without touching them.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use serde_json::Value;

use super::SessionEvent;
use super::registry::admission::Urgency;
use super::registry::{GetStats, Launch, Lookup, Registry, RegistryStats, Retire, Shutdown};
use super::session::{
    Admit, AnswerPermission, BudgetLeft, CancelQueued, ClearQueue, GetAgentInfo, GetContextUsage, Interrupt,
    ListPermissions, ListQueue, PendingPermission, QueuedMessage, RewindCommit, RewindFiles, SessionActor, SetLive,
    StartTurn, StopReason, Submit, SubmitMode, Submitted, TurnBudget, TurnRefused, TurnStarted, UnstoredEvents,
};
use crate::cli::launch::UserEnv;
use crate::domain::{AgentInfo, ContextUsage, LiveSetting};
use crate::error::ApiError;
use crate::storage::SessionRow;

/// The registry: finds, launches and stops sessions' actors.
#[derive(Clone)]
pub struct RegistryHandle {
    addr: Addr<Registry>,
}

impl RegistryHandle {
    pub fn new(addr: Addr<Registry>) -> Self {
        Self { addr }
    }

    /// The actor itself, for start-up and tests that send it messages of their own.
    pub fn addr(&self) -> &Addr<Registry> {
        &self.addr
    }

    /// The session's live actor, if it has one.
    pub async fn lookup(&self, session_id: &str) -> Result<Option<SessionHandle>, ApiError> {
        let found = self.addr.send(Lookup { session_id: session_id.to_string() }).await?;
        Ok(found.map(SessionHandle::new))
    }

    /// The session's live actor, launching its CLI in `cwd` (opened and checked beneath the
    /// user's directory) if it has none.
    /// `credentials` are read only if a CLI starts; `urgency`: whether a message waits for this
    /// CLI (it then starts before the others).
    pub async fn launch(
        &self,
        row: SessionRow,
        cwd: OwnedFd,
        credentials: Arc<dyn UserEnv>,
        urgency: Urgency,
    ) -> Result<SessionHandle, ApiError> {
        self.addr.send(Launch { row, cwd, credentials, urgency }).await?.map(SessionHandle::new)
    }

    /// Stops these sessions' processes (without waiting).
    pub fn retire(&self, session_ids: Vec<String>, reason: StopReason) {
        if !session_ids.is_empty() {
            self.addr.do_send(Retire { session_ids, reason });
        }
    }

    pub async fn stats(&self) -> Result<RegistryStats, ApiError> {
        Ok(self.addr.send(GetStats).await?)
    }

    /// Stops every session's CLI (at once with `forced`) and waits until all are reaped.
    pub async fn shutdown(&self, forced: bool) -> Result<(), ApiError> {
        Ok(self.addr.send(Shutdown { forced }).await?)
    }
}

/// One live session's actor. A handle outlives the actor it names: every method says what it
/// answers once the actor has stopped.
#[derive(Clone)]
pub struct SessionHandle {
    addr: Addr<SessionActor>,
}

/// The client's answer to a `permission_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionAnswer {
    pub request_id: String,
    pub allow: bool,
    pub message: Option<String>,
    pub updated_input: Option<Value>,
    /// Allow this tool for the rest of the session without asking.
    pub always: bool,
}

/// A session actor's handle that does not keep the actor alive (for caches).
#[derive(Clone)]
pub struct WeakSessionHandle {
    addr: actix::WeakAddr<SessionActor>,
}

impl WeakSessionHandle {
    /// The handle, while its actor runs.
    pub fn upgrade(&self) -> Option<SessionHandle> {
        self.addr.upgrade().filter(|a| a.connected()).map(SessionHandle::new)
    }
}

impl SessionHandle {
    fn new(addr: Addr<SessionActor>) -> Self {
        Self { addr }
    }

    pub fn downgrade(&self) -> WeakSessionHandle {
        WeakSessionHandle { addr: self.addr.downgrade() }
    }

    /// The actor itself, for tests.
    pub fn addr(&self) -> &Addr<SessionActor> {
        &self.addr
    }

    /// Starts a turn; `Gone` if the actor is stopping or stopped (launch the session again).
    /// The actor bounds the turn by `deadline` itself, so a dropped call cannot leave a turn
    /// started that nobody reads. With `outcome_only` the returned events hold the last one only.
    pub async fn start_turn(
        &self,
        message: String,
        deadline: tokio::time::Instant,
        queue_timeout: Duration,
        budget: Option<TurnBudget>,
        outcome_only: bool,
    ) -> Result<TurnStarted, TurnRefused> {
        match self.addr.send(StartTurn { message, deadline, queue_timeout, budget, outcome_only }).await {
            Ok(answer) => answer,
            Err(_) => Err(TurnRefused::Gone),
        }
    }

    /// What the CLI may still spend in its life (`None`: it has no budget, or it is gone).
    pub async fn budget_left(&self) -> Option<f64> {
        self.addr.send(BudgetLeft).await.ok().flatten()
    }

    /// The events after `after` not yet stored (none once the actor stopped: it stored them).
    pub async fn unstored_events(&self, after: i64) -> Vec<Arc<SessionEvent>> {
        self.addr.send(UnstoredEvents { after }).await.unwrap_or_default()
    }

    /// What the CLI reported at the start of its last turn.
    pub async fn agent_info(&self) -> Option<AgentInfo> {
        self.addr.send(GetAgentInfo).await.ok().flatten()
    }

    /// The open tool-approval requests (none once the actor stopped).
    pub async fn permissions(&self) -> Vec<(String, PendingPermission)> {
        self.addr.send(ListPermissions).await.unwrap_or_default()
    }

    /// Answers one tool-approval request: 404 if it is unknown, answered, or its actor stopped.
    pub async fn answer_permission(&self, answer: PermissionAnswer) -> Result<(), ApiError> {
        let PermissionAnswer { request_id, allow, message, updated_input, always } = answer;
        let message = AnswerPermission { request_id, allow, message, updated_input, always };
        self.addr.send(message).await.map_err(|_| no_open_request())?
    }

    /// Applies a new model or permission mode to the live CLI: `session_busy` in a turn,
    /// `session_not_live` once the actor stopped.
    pub async fn set_live(&self, setting: LiveSetting) -> Result<(), ApiError> {
        self.addr.send(SetLive(setting)).await.map_err(|_| ApiError::SessionNotLive)?
    }

    /// The CLI's context usage (`session_not_live` once the actor stopped).
    pub async fn context_usage(&self) -> Result<ContextUsage, ApiError> {
        self.addr.send(GetContextUsage).await.map_err(|_| ApiError::SessionNotLive)?
    }

    /// Steers a message into the running turn or queues it for after it (`Idle`: nothing runs,
    /// start an ordinary turn; `Gone`: the actor is stopping).
    pub async fn submit(
        &self,
        mode: SubmitMode,
        message: String,
        timeout: Duration,
        queue_timeout: Duration,
        admit: Admit,
    ) -> Result<Submitted, TurnRefused> {
        match self.addr.send(Submit { mode, message, timeout, queue_timeout, admit }).await {
            Ok(answer) => answer,
            Err(_) => Err(TurnRefused::Gone),
        }
    }

    /// The queued messages, next first (none once the actor stopped: they went with it).
    pub async fn queue(&self) -> Vec<QueuedMessage> {
        self.addr.send(ListQueue).await.unwrap_or_default()
    }

    /// Cancels a queued message that has not started (404 otherwise).
    pub async fn cancel_queued(&self, message_id: String) -> Result<(), ApiError> {
        self.addr.send(CancelQueued { message_id }).await.map_err(|_| super::session::not_queued())?
    }

    /// Cancels every queued message; their ids.
    pub async fn clear_queue(&self) -> Vec<String> {
        self.addr.send(ClearQueue).await.unwrap_or_default()
    }

    /// Rewinds the live CLI: the files changed since the user message `files_at` (its CLI
    /// uuid) restored, then `commit` run and the CLI stopped (its next start resumes where the
    /// commit said). Nothing changes with `dry_run`. The files changed, as the CLI names them.
    pub async fn rewind(
        &self,
        files_at: Option<String>,
        dry_run: bool,
        commit: Option<RewindCommit>,
    ) -> Result<Vec<String>, ApiError> {
        self.addr.send(RewindFiles { files_at, dry_run, commit }).await.map_err(|_| ApiError::SessionNotLive)?
    }

    /// Interrupts the running turn and returns its id (409 `no_turn_running` once stopped).
    pub async fn interrupt(&self) -> Result<String, ApiError> {
        self.addr.send(Interrupt).await.map_err(|_| ApiError::NoTurnRunning)?
    }
}

fn no_open_request() -> ApiError {
    ApiError::NotFound("No open permission request with this id".into())
}

/// An actor that cannot take a message (its mailbox closed): the runtime's fault, not the client's.
impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(format!("actor mailbox: {e}"))
    }
}
