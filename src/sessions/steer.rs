//! Messages for a busy session: steered into its running turn or queued for after it
//! (`POST /sessions/{id}/messages` with `mode`), the queue, and an interrupt that clears it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::SessionService;
use super::budgets::Reserved;
use crate::actors::{Admit, SubmitMode, Submitted, TurnBudget, TurnRefused, TurnStarted};
use crate::auth::Caller;
use crate::clock;
use crate::domain::SessionStatus;
use crate::error::ApiError;

/// How a message reaches a session whose turn is running (without `mode`: `429
/// session_busy`). With no turn running, either starts an ordinary turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageMode {
    /// Into the running turn: the agent gets it at its next tool boundary (or right after
    /// its current answer, within the same turn).
    Steer,
    /// After the running turn and those queued before it, as a turn of its own.
    Queue,
}

/// What became of a message.
#[derive(Debug)]
pub enum Accepted {
    /// A turn of its own started now.
    Started(TurnStarted),
    /// Handed to the running turn `turn_id`.
    Steered { message_id: String, turn_id: String },
    /// Queued; `position` 1 runs next. Its turn's id will be `message_id`.
    Queued { message_id: String, position: usize },
}

/// A queued message (`GET /sessions/{id}/queue`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QueuedMessage {
    /// Also the id of the turn it will run as.
    pub message_id: String,
    pub text: String,
    /// RFC 3339, UTC.
    pub queued_at: String,
}

/// What an interrupt did.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// The turn being interrupted (none when only the queue was cancelled).
    pub turn_id: Option<String>,
    /// The queued messages cancelled (`cancel_queue`).
    pub cancelled: Vec<String>,
}

impl SessionService {
    /// Sends a message: without `mode`, as [`SessionService::start_turn`] (busy: 429); with
    /// one, steered into or queued after the running turn, or a turn of its own when none
    /// runs. `timeout` is a queued turn's own, counted from its start.
    pub async fn submit(
        &self,
        caller: &Caller,
        session_id: &str,
        message: String,
        timeout: Duration,
        mode: Option<MessageMode>,
    ) -> Result<Accepted, ApiError> {
        let Some(mode) = mode else {
            return self.start_turn(caller, session_id, message, timeout).await.map(Accepted::Started);
        };
        let mode = match mode {
            MessageMode::Steer => SubmitMode::Steer,
            MessageMode::Queue => SubmitMode::Queue,
        };
        let queue_timeout = Duration::from_secs(self.settings.api.queue_timeout);
        for _ in 0..3 {
            let row = self.get(caller, session_id).await?;
            match row.status {
                SessionStatus::Closed => return Err(ApiError::SessionClosed),
                SessionStatus::Expired => return Err(ApiError::SessionExpired),
                _ => {}
            }
            let actor = match self.recent.get(&row.session_id) {
                Some(actor) => Some(actor),
                None => self.registry.lookup(&row.session_id).await?,
            };
            if let Some(actor) = actor {
                let admit = self.admit_queued(&row.session_id);
                match actor.submit(mode, message.clone(), timeout, queue_timeout, admit).await {
                    Ok(Submitted::Steered { message_id, turn_id }) => {
                        return Ok(Accepted::Steered { message_id, turn_id });
                    }
                    Ok(Submitted::Queued { message_id, position }) => {
                        return Ok(Accepted::Queued { message_id, position });
                    }
                    Ok(Submitted::Idle) => {}
                    Err(TurnRefused::Api(e)) => return Err(e),
                    // Stopping: an ordinary turn launches the session again.
                    Err(TurnRefused::Gone) => self.recent.forget(&row.session_id),
                }
            }
            match self.start_turn(caller, session_id, message.clone(), timeout).await {
                Ok(started) => return Ok(Accepted::Started(started)),
                // A turn started meanwhile: steer or queue after all.
                Err(ApiError::SessionBusy) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::SessionBusy)
    }

    /// The budget check of a queued turn, run when it is about to start.
    fn admit_queued(&self, session_id: &str) -> Admit {
        let (storage, budgets, session_id) = (self.storage.clone(), self.budgets.clone(), session_id.to_string());
        Box::new(move |cli_left| -> Pin<Box<dyn Future<Output = Result<Option<TurnBudget>, ApiError>>>> {
            Box::pin(async move {
                let (row, own) = storage.get_session_and_budget(&session_id).await?.ok_or(ApiError::SessionNotFound)?;
                let reserved = budgets
                    .reserve(&row.user_id, &row.session_id, row.total_cost_usd, own, async move { Some(cli_left) })
                    .await?;
                Ok(match reserved {
                    Reserved::Unbounded => None,
                    Reserved::Held(hold) => Some(TurnBudget { usd: hold.usd, hold: Box::new(hold) }),
                })
            })
        })
    }

    /// The session's queued messages, next first (none when no CLI runs: a queue goes with it).
    pub async fn queue(&self, caller: &Caller, session_id: &str) -> Result<Vec<QueuedMessage>, ApiError> {
        let row = self.get(caller, session_id).await?;
        let Some(actor) = self.registry.lookup(&row.session_id).await? else { return Ok(Vec::new()) };
        Ok(actor
            .queue()
            .await
            .into_iter()
            .map(|q| QueuedMessage { message_id: q.message_id, text: q.text, queued_at: clock::rfc3339(q.queued_at) })
            .collect())
    }

    /// Cancels a queued message that has not started (404 if it started or is unknown).
    pub async fn cancel_queued(&self, caller: &Caller, session_id: &str, message_id: &str) -> Result<(), ApiError> {
        let row = self.get(caller, session_id).await?;
        let actor = self.registry.lookup(&row.session_id).await?.ok_or_else(crate::actors::not_queued)?;
        actor.cancel_queued(message_id.to_string()).await
    }

    /// Interrupts the running turn; with `cancel_queue` the queued messages are cancelled
    /// first (else they run after it). 409 `no_turn_running` when there was nothing to do.
    pub async fn interrupt_and_cancel(
        &self,
        caller: &Caller,
        session_id: &str,
        cancel_queue: bool,
    ) -> Result<Interrupted, ApiError> {
        let row = self.get(caller, session_id).await?;
        let actor = self.registry.lookup(&row.session_id).await?.ok_or(ApiError::NoTurnRunning)?;
        let cancelled = if cancel_queue { actor.clear_queue().await } else { Vec::new() };
        match actor.interrupt().await {
            Ok(turn_id) => Ok(Interrupted { turn_id: Some(turn_id), cancelled }),
            Err(ApiError::NoTurnRunning) if !cancelled.is_empty() => Ok(Interrupted { turn_id: None, cancelled }),
            Err(e) => Err(e),
        }
    }
}
