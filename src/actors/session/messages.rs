//! What the handles send a session actor, and its answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::permissions::PendingPermission;
use super::{CLIENT_BUFFER, SETTINGS_TIMEOUT, SessionActor, StopReason, Turn};
use crate::actors::event::SessionEvent;
use crate::actors::persist::PersistJob;
use crate::actors::registry::Activity;
use crate::cli::protocol::{self, UserInput, to_line};
use crate::clock;
use crate::domain::{AgentInfo, ContextUsage, LiveSetting, SessionStatus};
use crate::error::ApiError;

/// Reply to a turn request.
#[derive(Debug)]
pub struct TurnStarted {
    pub turn_id: String,
    pub first_event_id: i64,
    pub events: mpsc::Receiver<Arc<SessionEvent>>,
}

/// Why a turn could not start.
#[derive(Debug)]
pub enum TurnRefused {
    /// The actor is stopping: launch the session again.
    Gone,
    Api(ApiError),
}

/// Start a turn: `message` goes to the CLI once a turn slot is free and the CLI is ready.
/// `deadline` (the request's start plus the turn's `timeout`) bounds every phase: the wait
/// for a slot, for readiness, and the turn itself.
#[derive(Message)]
#[rtype(result = "Result<TurnStarted, TurnRefused>")]
pub struct StartTurn {
    pub message: String,
    pub deadline: tokio::time::Instant,
    pub queue_timeout: Duration,
    /// What the turn may spend, when its user's limits bound it.
    pub budget: Option<TurnBudget>,
    /// The client wants the turn's last event only (a sync chat): it is not woken for the others.
    pub outcome_only: bool,
}

/// What a turn may spend of its user's budget, and the hold on it (kept with the turn).
pub struct TurnBudget {
    pub usd: f64,
    pub hold: Box<dyn Send>,
}

/// What the CLI may still spend in its life (its `--max-budget-usd` less what it spent);
/// `None` when it has no budget.
#[derive(Message)]
#[rtype(result = "Option<f64>")]
pub struct BudgetLeft;

impl Handler<BudgetLeft> for SessionActor {
    type Result = Option<f64>;

    fn handle(&mut self, _: BudgetLeft, _: &mut Context<Self>) -> Option<f64> {
        self.budget_left()
    }
}

impl SessionActor {
    pub(super) fn budget_left(&self) -> Option<f64> {
        self.budget_cap.map(|cap| (cap - (self.cost.total() - self.cost_at_start)).max(0.0))
    }
}

fn timed_out_while(what: &str) -> ApiError {
    ApiError::TurnTimeout(format!("The turn's timeout passed while {what}"))
}

impl Handler<StartTurn> for SessionActor {
    type Result = ResponseActFuture<Self, Result<TurnStarted, TurnRefused>>;

    fn handle(&mut self, msg: StartTurn, ctx: &mut Context<Self>) -> Self::Result {
        // A CLI that failed to start says why. One that is stopping after it was ready (a
        // protocol error, say) is `Gone`: the registry, on another thread, may not have seen
        // its `Stopping` yet when it handed this actor out, and the caller launches anew.
        if let Some(why) = &self.start_error
            && !(self.ready && self.stopping.is_some())
        {
            return Box::pin(fut::ready(Err(TurnRefused::Api(ApiError::CliFailed(why.clone())))));
        }
        if self.exited || self.stopping.is_some() || self.stop_after_turn.is_some_and(|r| !r.spares_a_turn()) {
            return Box::pin(fut::ready(Err(TurnRefused::Gone)));
        }
        if self.turn.is_some() || self.reserved || self.committing.is_some() || !self.queue.is_empty() {
            return Box::pin(fut::ready(Err(TurnRefused::Api(ApiError::SessionBusy))));
        }
        if let Some(budget) = &msg.budget
            && self.budget_left().is_none_or(|left| left > budget.usd + 1e-9)
        {
            // This CLI may spend more than the turn may (its budget was set when the user's
            // other sessions had spent or held less): started again with the turn's.
            log::info!("session {}: the CLI's budget is above the turn's ${}; restarting it", self.id, budget.usd);
            self.begin_stop(StopReason::BudgetSpent, ctx);
            return Box::pin(fut::ready(Err(TurnRefused::Gone)));
        }
        if let Some(grace) = self.draining.take() {
            // The CLI is still in a timed-out turn. Waiting for it would spend this turn's
            // timeout on the old one (up to INTERRUPT_GRACE, forever for a hung CLI): replace
            // it instead; the caller launches it again with `--resume`.
            ctx.cancel_future(grace);
            log::info!("session {}: a new turn replaces the CLI still in a timed-out turn", self.id);
            self.begin_stop(StopReason::Unresponsive, ctx);
            return Box::pin(fut::ready(Err(TurnRefused::Gone)));
        }
        let StartTurn { message, deadline, queue_timeout, budget, outcome_only } = msg;
        self.begin_turn(TurnSpec { message, deadline, queue_timeout, budget, outcome_only, queued_id: None })
    }
}

/// A turn about to start: a client's, or the next queued message's (`queued_id`, which is
/// then the turn's id; nobody reads its events but followers).
pub(super) struct TurnSpec {
    pub(super) message: String,
    pub(super) deadline: tokio::time::Instant,
    pub(super) queue_timeout: Duration,
    pub(super) budget: Option<TurnBudget>,
    pub(super) outcome_only: bool,
    pub(super) queued_id: Option<Arc<str>>,
}

impl SessionActor {
    /// Waits for a turn slot and readiness (within the deadline), then sends the message and
    /// makes it the running turn. The caller checked the session is free.
    pub(super) fn begin_turn(&mut self, msg: TurnSpec) -> ResponseActFuture<Self, Result<TurnStarted, TurnRefused>> {
        self.reserved = true;
        // In a turn from now for the registry: a session about to start one is not evicted.
        self.registry.do_send(Activity { session_id: self.id.clone(), generation: self.generation, in_turn: true });
        let slot = self.turn_slots.clone().acquire_owned();
        // A CLI that is not ready yet keeps starting (bounded by INITIALIZE_TIMEOUT): each
        // request waits for it only within its own deadline, so a short timeout never kills a
        // CLI that a later request could use.
        let ready = if self.ready {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            self.ready_waiters.retain(|w| !w.is_closed());
            self.ready_waiters.push(tx);
            Some(rx)
        };
        let deadline = msg.deadline;
        let slot_deadline = deadline.min(tokio::time::Instant::now() + msg.queue_timeout);
        let metrics = self.metrics.clone();
        let wait = async move {
            // FIFO: the slots go to waiters in the order they asked.
            let permit = match tokio::time::timeout_at(slot_deadline, slot).await {
                Ok(permit) => permit.map_err(|_| ApiError::Internal("the turn slots are closed".into()))?,
                Err(_) if slot_deadline == deadline => return Err(timed_out_while("waiting for a turn slot")),
                Err(_) => {
                    metrics.refused("overloaded");
                    return Err(ApiError::Overloaded { retry_after_secs: 1 });
                }
            };
            if let Some(ready) = ready {
                tokio::time::timeout_at(deadline, ready)
                    .await
                    .map_err(|_| timed_out_while("waiting for the CLI to become ready"))?
                    .map_err(|_| ApiError::CliFailed("the CLI ended before it was ready".into()))??;
            }
            Ok::<_, ApiError>(permit)
        };
        Box::pin(wait.into_actor(self).map(move |waited, act, ctx| {
            act.reserved = false;
            let client_turn = msg.queued_id.is_none();
            let idle_again = |act: &mut Self, ctx: &mut Context<Self>| {
                act.registry.do_send(Activity {
                    session_id: act.id.clone(),
                    generation: act.generation,
                    in_turn: false,
                });
                // Messages queued behind a client's turn that never started run now (a queued
                // turn's own failure is handled where it was started).
                if client_turn {
                    act.start_next_queued(ctx);
                }
            };
            let permit = match waited {
                Ok(permit) => permit,
                Err(e) => {
                    idle_again(act, ctx);
                    return Err(TurnRefused::Api(e));
                }
            };
            if act.exited || act.stopping.is_some() {
                return Err(TurnRefused::Gone);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                idle_again(act, ctx);
                return Err(TurnRefused::Api(timed_out_while("waiting for the turn to start")));
            }
            let queued = msg.queued_id.is_some();
            let turn_id: Arc<str> = msg.queued_id.unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
            let (sink, events) = mpsc::channel(CLIENT_BUFFER);
            let sink = (!queued).then_some(sink);
            act.priority.busy(act.process.pid);
            act.write(to_line(&UserInput::new(&act.cli_session_id, &turn_id, &msg.message)));
            let timeout_turn = turn_id.clone();
            let deadline_timer = act.timer(ctx, left, move |act, ctx| {
                if act.turn.as_ref().is_some_and(|t| t.id == timeout_turn) {
                    act.time_out_turn(ctx);
                }
            });
            act.turn = Some(Turn {
                id: turn_id.clone(),
                user_text: msg.message,
                started_at: clock::now_ms(),
                started: Instant::now(),
                sink,
                outcome_only: msg.outcome_only,
                transcript: Default::default(),
                leaf_uuid: None,
                interrupted: false,
                timers: vec![deadline_timer],
                _permit: permit,
                budget_hold: msg.budget.map(|b| b.hold),
                steers: Vec::new(),
                carried: None,
            });
            act.hub.turns().begin(&act.id);
            act.set_status(SessionStatus::Busy);
            let first_event_id = act.log.next_id();
            if queued && let Some(text) = act.turn.as_ref().map(|t| t.user_text.clone()) {
                act.emit(crate::domain::frames::message_accepted(&turn_id, &text), None, ctx);
            }
            Ok(TurnStarted { turn_id: turn_id.to_string(), first_event_id, events })
        }))
    }
}

/// Interrupt the running turn (`409 no_turn_running` if there is none).
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct Interrupt;

impl Handler<Interrupt> for SessionActor {
    type Result = Result<String, ApiError>;

    fn handle(&mut self, _: Interrupt, ctx: &mut Context<Self>) -> Self::Result {
        let turn_id = self.turn.as_ref().map(|t| t.id.to_string()).ok_or(ApiError::NoTurnRunning)?;
        self.interrupt(ctx);
        Ok(turn_id)
    }
}

/// Events of this session after `after` that are not yet confirmed stored (the follower's seam).
#[derive(Message)]
#[rtype(result = "Vec<Arc<SessionEvent>>")]
pub struct UnstoredEvents {
    pub after: i64,
}

impl Handler<UnstoredEvents> for SessionActor {
    type Result = MessageResult<UnstoredEvents>;

    fn handle(&mut self, msg: UnstoredEvents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.log.unstored_after(msg.after))
    }
}

/// The client's answer to a `permission_request`.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct AnswerPermission {
    pub request_id: String,
    pub allow: bool,
    pub message: Option<String>,
    pub updated_input: Option<Value>,
    /// Allow this tool for the rest of the session without asking.
    pub always: bool,
}

impl Handler<AnswerPermission> for SessionActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: AnswerPermission, ctx: &mut Context<Self>) -> Self::Result {
        let answered = self
            .permissions
            .answer(&msg.request_id, msg.allow, msg.always, msg.message, msg.updated_input)
            .ok_or_else(|| ApiError::NotFound("No open permission request with this id".into()))?;
        ctx.cancel_future(answered.timer);
        if let Some(tool) = answered.newly_always_allowed
            && self.persist.push(PersistJob::AllowTool(tool)).is_err()
        {
            log::warn!("session {}: storage is behind; always-allow kept for this process only", self.id);
        }
        self.answer_permission(&msg.request_id, answered.decision);
        Ok(())
    }
}

/// The open tool-approval requests of the session, by request id.
#[derive(Message)]
#[rtype(result = "Vec<(String, PendingPermission)>")]
pub struct ListPermissions;

impl Handler<ListPermissions> for SessionActor {
    type Result = MessageResult<ListPermissions>;

    fn handle(&mut self, _: ListPermissions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.permissions.list())
    }
}

/// What the CLI reported at the start of its last turn (tools, MCP servers, skills, model).
#[derive(Message)]
#[rtype(result = "Option<AgentInfo>")]
pub struct GetAgentInfo;

impl Handler<GetAgentInfo> for SessionActor {
    type Result = MessageResult<GetAgentInfo>;

    fn handle(&mut self, _: GetAgentInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.agent_info.clone())
    }
}

/// Change the model or the permission mode of the live CLI (`set_model`,
/// `set_permission_mode`). Refused with `session_busy` while a turn runs or is about to start:
/// the change then applies to a whole turn, never to half of one.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct SetLive(pub LiveSetting);

impl Handler<SetLive> for SessionActor {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;

    fn handle(&mut self, msg: SetLive, _: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() {
            return Box::pin(fut::ready(Err(ApiError::SessionNotLive)));
        }
        if self.turn.is_some() || self.reserved {
            return Box::pin(fut::ready(Err(ApiError::SessionBusy)));
        }
        let request = match &msg.0 {
            LiveSetting::Model(model) => serde_json::json!({ "subtype": "set_model", "model": model }),
            LiveSetting::PermissionMode(mode) => serde_json::json!({ "subtype": "set_permission_mode", "mode": mode }),
        };
        let answer = self.control(request);
        let wait = async move { tokio::time::timeout(SETTINGS_TIMEOUT, answer).await };
        Box::pin(wait.into_actor(self).map(move |answer, act, _| {
            let name = msg.0.option().name();
            match answer {
                Ok(Ok(Ok(_))) => {
                    // Shown at once; the next turn's `system/init` reports it again.
                    if let Some(info) = act.agent_info.as_mut() {
                        match &msg.0 {
                            LiveSetting::Model(m) => info.model = Some(m.clone()),
                            LiveSetting::PermissionMode(m) => info.permission_mode = Some(m.clone()),
                        }
                    }
                    Ok(())
                }
                Ok(Ok(Err(e))) if e.code.as_deref() == Some("bypass_not_launched") => {
                    Err(ApiError::PermissionModeUnavailable(e.message))
                }
                Ok(Ok(Err(e))) => Err(ApiError::CliFailed(format!("the CLI refused the new {name}: {e}"))),
                Ok(Err(_)) => Err(ApiError::SessionNotLive),
                Err(_) => Err(ApiError::CliFailed(format!(
                    "the CLI did not confirm the new {name} within {SETTINGS_TIMEOUT:?}"
                ))),
            }
        }))
    }
}

/// How full the CLI's context window is (`get_context_usage`; answered during a turn too).
#[derive(Message)]
#[rtype(result = "Result<ContextUsage, ApiError>")]
pub struct GetContextUsage;

impl Handler<GetContextUsage> for SessionActor {
    type Result = ResponseActFuture<Self, Result<ContextUsage, ApiError>>;

    fn handle(&mut self, _: GetContextUsage, _: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() {
            return Box::pin(fut::ready(Err(ApiError::SessionNotLive)));
        }
        let answer = self.control(serde_json::json!({ "subtype": "get_context_usage" }));
        let wait = async move { tokio::time::timeout(SETTINGS_TIMEOUT, answer).await };
        Box::pin(wait.into_actor(self).map(|answer, _, _| {
            match answer {
                Ok(Ok(Ok(usage))) => serde_json::from_value::<protocol::ContextUsage>(usage)
                    .map(ContextUsage::from)
                    .map_err(|e| ApiError::CliFailed(format!("the CLI's context usage is not understood: {e}"))),
                Ok(Ok(Err(e))) => Err(ApiError::CliFailed(format!("the CLI refused get_context_usage: {e}"))),
                Ok(Err(_)) => Err(ApiError::SessionNotLive),
                Err(_) => {
                    Err(ApiError::CliFailed(format!("no context usage from the CLI within {SETTINGS_TIMEOUT:?}")))
                }
            }
        }))
    }
}

/// How many of the actor's own timers (turn deadline, interrupt grace, permission) are still
/// pending, as actix holds them. For tests and diagnostics: none outlives what it times.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "usize")]
pub struct PendingTimers;

impl Handler<PendingTimers> for SessionActor {
    type Result = usize;

    fn handle(&mut self, _: PendingTimers, _: &mut Context<Self>) -> usize {
        Arc::strong_count(&self.timer_probe) - 1
    }
}
