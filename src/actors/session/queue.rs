//! Steering and queueing: a message for the running turn (sent to the CLI with
//! `priority: "next"`, taken at the turn's next tool boundary), or one for after it (held
//! here, one turn each, in order, cancellable; the CLI would merge queued messages of the
//! same priority into one turn, so it never sees them before their turn).
//!
//! The queue lives with the actor: it goes when the CLI stops (close, eviction, crash, a
//! restart), each message with a `message_dropped` event (`reason: "stopped"`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::{TurnBudget, TurnRefused, TurnSpec};
use super::{SessionActor, StopReason};
use crate::cli::protocol::{ResultMessage, UserInput, to_line};
use crate::clock;
use crate::domain::TurnResult;
use crate::domain::frames::{self, DropReason};
use crate::error::ApiError;

/// What a queued turn may spend, asked when it is about to start (the service's budget
/// check, given what the live CLI may still spend): `None` when the user's limits do not
/// bound it. An error drops the message (`reason: "refused"` with its code).
pub type Admit =
    Box<dyn FnOnce(Option<f64>) -> Pin<Box<dyn Future<Output = Result<Option<TurnBudget>, ApiError>>>> + Send>;

/// How a message is to reach a busy session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMode {
    /// Into the running turn, at its next tool boundary.
    Steer,
    /// After the running turn (and those queued before it), as its own turn.
    Queue,
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Handed to the running turn `turn_id`.
    Steered { message_id: String, turn_id: String },
    /// Held for after the running turn; `position` 1 is next. Its turn's id is the message id.
    Queued { message_id: String, position: usize },
    /// No turn runs or waits: start an ordinary one.
    Idle,
}

/// A queued message, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub message_id: String,
    pub text: String,
    /// Epoch ms.
    pub queued_at: i64,
}

pub(super) struct Queued {
    id: Arc<str>,
    text: String,
    queued_at: i64,
    timeout: Duration,
    queue_timeout: Duration,
    admit: Admit,
}

/// A message steered into the running turn.
#[derive(Debug, Clone)]
pub(in crate::actors::session) struct Steer {
    id: Arc<str>,
    text: String,
    /// The CLI took it (`command_lifecycle` started, or a result that answers it).
    accepted: bool,
}

pub(super) type Queue = VecDeque<Queued>;

/// A turn's summary with what its earlier parts (see `Turn::carried`) added up to.
pub(super) fn carry(before: Option<&TurnResult>, last: TurnResult) -> TurnResult {
    let Some(b) = before else { return last };
    let mut sum = last;
    sum.cost_usd += b.cost_usd;
    sum.usage.input_tokens += b.usage.input_tokens;
    sum.usage.output_tokens += b.usage.output_tokens;
    sum.num_turns += b.num_turns;
    sum.duration_ms += b.duration_ms;
    if sum.text.is_empty() {
        sum.text = b.text.clone();
    }
    sum
}

/// Send a message to a busy session: steer it into the running turn or queue it.
#[derive(Message)]
#[rtype(result = "Result<Submitted, TurnRefused>")]
pub struct Submit {
    pub mode: SubmitMode,
    pub message: String,
    /// The queued turn's own timeout (counted from its start).
    pub timeout: Duration,
    pub queue_timeout: Duration,
    pub admit: Admit,
}

impl Handler<Submit> for SessionActor {
    type Result = Result<Submitted, TurnRefused>;

    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        if let Some(why) = &self.start_error
            && !(self.ready && self.stopping.is_some())
        {
            return Err(TurnRefused::Api(ApiError::CliFailed(why.clone())));
        }
        if self.stopping.is_some() || self.stop_after_turn.is_some_and(|r| !r.spares_a_turn()) {
            return Err(TurnRefused::Gone);
        }
        let busy = self.turn.is_some() || self.reserved || self.committing.is_some() || !self.queue.is_empty();
        if !busy {
            return Ok(Submitted::Idle);
        }
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        if msg.mode == SubmitMode::Steer
            && let Some(turn) = self.turn.as_mut().filter(|t| !t.interrupted)
        {
            let turn_id = turn.id.to_string();
            turn.steers.push(Steer { id: id.clone(), text: msg.message.clone(), accepted: false });
            self.write(to_line(&UserInput::steer(&self.cli_session_id, &id, &msg.message)));
            return Ok(Submitted::Steered { message_id: id.to_string(), turn_id });
        }
        // Queued, and a steer with no running turn to take it (one is about to start).
        let max = self.settings.session.max_queued;
        if self.queue.len() >= max {
            return Err(TurnRefused::Api(ApiError::QueueFull(max)));
        }
        self.queue.push_back(Queued {
            id: id.clone(),
            text: msg.message,
            queued_at: clock::now_ms(),
            timeout: msg.timeout,
            queue_timeout: msg.queue_timeout,
            admit: msg.admit,
        });
        Ok(Submitted::Queued { message_id: id.to_string(), position: self.queue.len() })
    }
}

/// The messages waiting for their turn, next first.
#[derive(Message)]
#[rtype(result = "Vec<QueuedMessage>")]
pub struct ListQueue;

impl Handler<ListQueue> for SessionActor {
    type Result = MessageResult<ListQueue>;

    fn handle(&mut self, _: ListQueue, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.queue
                .iter()
                .map(|q| QueuedMessage { message_id: q.id.to_string(), text: q.text.clone(), queued_at: q.queued_at })
                .collect(),
        )
    }
}

/// Cancel one queued message that has not started (`not_found` otherwise).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct CancelQueued {
    pub message_id: String,
}

impl Handler<CancelQueued> for SessionActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: CancelQueued, ctx: &mut Context<Self>) -> Self::Result {
        let at = self.queue.iter().position(|q| *q.id == *msg.message_id).ok_or_else(not_queued)?;
        if let Some(q) = self.queue.remove(at) {
            self.drop_message(&q.id, DropReason::Cancelled, "cancelled by the client", None, ctx);
        }
        Ok(())
    }
}

pub fn not_queued() -> ApiError {
    ApiError::NotFound("No queued message with this id (it may have started already)".into())
}

/// Cancel every queued message (an interrupt's `cancel_queue`); their ids.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ClearQueue;

impl Handler<ClearQueue> for SessionActor {
    type Result = MessageResult<ClearQueue>;

    fn handle(&mut self, _: ClearQueue, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.drop_queue(DropReason::Interrupted, "cancelled with an interrupt", ctx))
    }
}

impl SessionActor {
    /// Drops every queued message with an event; their ids.
    pub(super) fn drop_queue(&mut self, reason: DropReason, why: &str, ctx: &mut Context<Self>) -> Vec<String> {
        let dropped: Vec<Queued> = self.queue.drain(..).collect();
        if !dropped.is_empty() {
            log::info!("session {}: {} queued message(s) dropped: {why}", self.id, dropped.len());
        }
        dropped
            .into_iter()
            .map(|q| {
                self.drop_message(&q.id, reason, why, None, ctx);
                q.id.to_string()
            })
            .collect()
    }

    /// A `message_dropped` event of its own (its turn id is the message's).
    pub(super) fn drop_message(
        &mut self,
        id: &Arc<str>,
        reason: DropReason,
        why: &str,
        code: Option<&str>,
        ctx: &mut Context<Self>,
    ) {
        self.emit_outside(id.clone(), frames::message_dropped(id, reason, why, code), ctx);
    }

    /// An event that belongs to no running turn. While the last turn's final frame waits for
    /// its commit, it waits too (a follower never sees an id before a smaller one).
    fn emit_outside(&mut self, turn_id: Arc<str>, json: String, ctx: &mut Context<Self>) {
        if self.committing.is_some() {
            self.deferred.push((turn_id, json));
            return;
        }
        if !self.log.room_for_one_more() {
            log::warn!("session {}: no event id for a message event; not sent", self.id);
            return;
        }
        let event = self.log.number(json, None, &turn_id);
        self.deliver(&event, &mut None);
        self.log.keep(event);
        self.extend_ids(ctx);
        self.schedule_flush(ctx);
    }

    /// The events that waited for the last turn's final frame.
    pub(super) fn emit_deferred(&mut self, ctx: &mut Context<Self>) {
        for (turn_id, json) in std::mem::take(&mut self.deferred) {
            self.emit_outside(turn_id, json, ctx);
        }
    }

    /// Starts the next queued message's turn once the session is free: its budget is asked
    /// for first, then it waits for a slot like any turn. One that cannot start is dropped
    /// with the error's code and the next one is tried.
    pub(super) fn start_next_queued(&mut self, ctx: &mut Context<Self>) {
        let busy = self.turn.is_some() || self.reserved || self.committing.is_some() || self.draining.is_some();
        if busy || self.stopping.is_some() || self.stop_after_turn.is_some() || !self.ready {
            return;
        }
        let Some(next) = self.queue.pop_front() else { return };
        // Busy from now: a client's turn does not slip in while the budget is asked.
        self.reserved = true;
        let Queued { id, text, timeout, queue_timeout, admit, .. } = next;
        let asked = admit(self.budget_left());
        ctx.spawn(asked.into_actor(self).map(move |budget, act, ctx| {
            act.reserved = false;
            if act.stopping.is_some() {
                act.drop_message(&id, DropReason::Stopped, "the session's CLI stopped", None, ctx);
                return;
            }
            let budget = match budget {
                Ok(budget) => budget,
                Err(e) => {
                    act.drop_message(&id, DropReason::Refused, &e.message(), Some(e.code()), ctx);
                    act.start_next_queued(ctx);
                    return;
                }
            };
            if let Some(b) = &budget
                && act.budget_left().is_none_or(|left| left > b.usd + 1e-9)
            {
                // As for a client's turn, the CLI starts again with the turn's budget; the
                // queue goes with it.
                log::info!("session {}: the CLI's budget is above the queued turn's; restarting it", act.id);
                act.drop_message(&id, DropReason::Stopped, "the CLI is restarted with a smaller budget", None, ctx);
                act.begin_stop(StopReason::BudgetSpent, ctx);
                return;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let spec = TurnSpec {
                message: text,
                deadline,
                queue_timeout,
                budget,
                outcome_only: false,
                queued_id: Some(id.clone()),
            };
            let started = act.begin_turn(spec);
            ctx.spawn(started.map(move |started, act, ctx| match started {
                Ok(_) => {}
                Err(TurnRefused::Api(e)) => {
                    act.drop_message(&id, DropReason::Refused, &e.message(), Some(e.code()), ctx);
                    act.start_next_queued(ctx);
                }
                Err(TurnRefused::Gone) => {
                    act.drop_message(&id, DropReason::Stopped, "the session's CLI stopped", None, ctx);
                }
            }));
        }));
    }

    /// A `command_lifecycle` frame: a steered message was taken, or will not be.
    pub(super) fn on_lifecycle(&mut self, uuid: &str, state: &str, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_mut() else { return };
        let Some(at) = turn.steers.iter().position(|s| &*s.id == uuid) else { return };
        match state {
            "started" | "completed" => self.accept_steer(at, ctx),
            "cancelled" | "discarded" | "refused" => {
                let steer = turn.steers.remove(at);
                if steer.accepted {
                    return;
                }
                // An interrupt's `cancel_queued` is why, when the turn was interrupted.
                let (reason, why) = match turn.interrupted {
                    true => (DropReason::Interrupted, "the turn was interrupted before it took the message".into()),
                    false => (DropReason::Cancelled, format!("the CLI {state} it")),
                };
                self.drop_message(&steer.id, reason, &why, None, ctx);
                // The turn was waiting for it alone: it ends with what it had.
                if let Some(turn) = self.turn.as_mut()
                    && turn.steers.iter().all(|s| s.accepted)
                    && let Some(summary) = turn.carried.take()
                {
                    let tool_calls = turn.transcript.tool_calls.clone();
                    self.finish_turn(
                        Some(summary.clone()),
                        crate::actors::event::TurnOutcome::Done { result: summary, tool_calls },
                        ctx,
                    );
                }
            }
            _ => {}
        }
    }

    fn accept_steer(&mut self, at: usize, ctx: &mut Context<Self>) {
        let Some(steer) = self.turn.as_mut().and_then(|t| t.steers.get_mut(at)).filter(|s| !s.accepted) else {
            return;
        };
        steer.accepted = true;
        let json = frames::message_accepted(&steer.id, &steer.text);
        self.emit(json, None, ctx);
    }

    /// At a result of the running turn: the steered messages it answers are taken; if some
    /// are still waiting (the part ended before a tool boundary), the CLI runs them next and
    /// the turn goes on with them (true: this result is carried, not the end).
    pub(super) fn steers_outlive(&mut self, result: &ResultMessage, cost_usd: f64, ctx: &mut Context<Self>) -> bool {
        let Some(turn) = self.turn.as_ref() else { return false };
        let answered: Vec<usize> = (0..turn.steers.len())
            .filter(|&i| result.user_message_uuids.iter().any(|u| *u == *turn.steers[i].id))
            .collect();
        for at in answered {
            self.accept_steer(at, ctx);
        }
        let Some(turn) = self.turn.as_mut() else { return false };
        if turn.interrupted || turn.steers.iter().all(|s| s.accepted) {
            return false;
        }
        let text = match result.result.clone() {
            Some(t) if !t.is_empty() => t,
            _ => turn.transcript.assistant_text.clone(),
        };
        let part = TurnResult {
            text,
            subtype: result.subtype.clone(),
            is_error: result.is_error,
            cost_usd,
            usage: result.usage.clone().into(),
            num_turns: result.num_turns,
            duration_ms: result.duration_ms,
        };
        turn.carried = Some(carry(turn.carried.as_ref(), part));
        log::debug!("session {}: the turn goes on with the steered messages it has not taken", self.id);
        true
    }

    /// The turn ends: steered messages it never took are dropped with it.
    pub(super) fn drop_untaken_steers(&mut self, outcome_code: Option<&str>, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_mut() else { return };
        let interrupted = turn.interrupted || outcome_code == Some("turn_timeout");
        let untaken: Vec<Steer> = turn.steers.drain(..).filter(|s| !s.accepted).collect();
        for steer in untaken {
            let (reason, why) = match (interrupted, outcome_code) {
                (true, _) => (DropReason::Interrupted, "the turn was interrupted before it took the message"),
                (false, Some(_)) => (DropReason::Stopped, "the turn failed before it took the message"),
                (false, None) => (DropReason::Cancelled, "the turn ended without taking the message"),
            };
            self.emit(frames::message_dropped(&steer.id, reason, why, None), None, ctx);
        }
    }
}
