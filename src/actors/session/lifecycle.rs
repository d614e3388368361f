//! The actor's life: the CLI's start (event ids reserved, `initialize` answered), readiness,
//! the stop ladder, and the process's exit (the final status, the last events stored).

use std::time::Duration;

use actix::prelude::*;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{ID_BLOCK, INITIALIZE_TIMEOUT, SessionActor};
use crate::actors::event::TurnOutcome;
use crate::actors::persist::PersistJob;
use crate::actors::registry::{Ended, Ready, Stopping};
use crate::cli::process::{ExitInfo, MAX_LINE_BYTES, stdout_messages};
use crate::domain::SessionStatus;
use crate::error::ApiError;

/// How long the CLI may take to say what it has spent at its start (`get_usage`).
const USAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session's process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Closed,
    Purged,
    Expired,
    UserDeleted,
    IdleEviction,
    MemoryEviction,
    /// Above `cli.max_rss_mb`: restarted once its turn is over.
    TooLarge,
    /// Its CLI stopped a turn at `--max-budget-usd`, which it keeps for life: restarted (at
    /// the next turn) with what the budgets leave then.
    BudgetSpent,
    Shutdown,
    /// A second signal during shutdown: no grace.
    ForcedShutdown,
    /// Did not obey an interrupt.
    Unresponsive,
    /// Broke the protocol (a line over the cap).
    ProtocolError,
    /// Never became ready.
    StartFailed,
    /// Its conversation was rewound: the next start resumes before the rewound message.
    Rewound,
    /// The session it was forked from was purged before it wrote a transcript of its own:
    /// the next start resumes the copy it was given.
    SourcePurged,
    /// Another instance took the session's lease (this one was paused or cut off): the CLI
    /// stops and nothing is written for the session (the new owner's writes win).
    LeaseLost,
}

impl StopReason {
    /// The status the session gets once the process is gone (`None`: the caller set it).
    pub(super) fn final_status(self) -> Option<SessionStatus> {
        use StopReason::*;
        match self {
            Closed | Purged | Expired | UserDeleted | LeaseLost => None,
            IdleEviction | MemoryEviction | TooLarge | BudgetSpent | Shutdown | ForcedShutdown | Unresponsive
            | ProtocolError | Rewound | SourcePurged => Some(SessionStatus::Idle),
            StartFailed => Some(SessionStatus::Failed),
        }
    }

    /// Evictions never stop a session in a turn.
    pub(super) fn spares_a_turn(self) -> bool {
        matches!(self, StopReason::IdleEviction | StopReason::MemoryEviction | StopReason::TooLarge)
    }
}

impl SessionActor {
    /// Starts stopping the process: stdin closed (the CLI's cue to finish and exit), then the
    /// supervisor's ladder (grace, SIGTERM, grace, SIGKILL of the group).
    pub(super) fn begin_stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(grace) = self.draining.take() {
            ctx.cancel_future(grace);
        }
        self.deny_pending("the session was closed", ctx);
        self.drop_queue(crate::domain::frames::DropReason::Stopped, "the session's CLI stopped", ctx);
        if let StopReason::IdleEviction | StopReason::MemoryEviction | StopReason::TooLarge = reason {
            self.metrics.evicted(match reason {
                StopReason::IdleEviction => "idle",
                StopReason::MemoryEviction => "memory_pressure",
                _ => "cli_too_large",
            });
        }
        self.stopping = Some(reason);
        self.registry.do_send(Stopping { session_id: self.id.clone(), generation: self.generation });
        let grace = match reason {
            StopReason::Unresponsive | StopReason::ProtocolError | StopReason::ForcedShutdown => Duration::ZERO,
            _ => Duration::from_secs(self.settings.cli.stop_grace),
        };
        // Replacing the sender drops the last one: the writer task ends and stdin closes.
        let (closed, _) = mpsc::unbounded_channel();
        self.process.stdin = closed;
        if let Some(stop) = self.process.stop.take() {
            let _ = stop.send(grace);
        }
    }

    pub(super) fn on_exit(&mut self, info: ExitInfo, ctx: &mut Context<Self>) {
        self.exited = true;
        let stderr = self.process.stderr_tail.lock().map(|t| t.text()).unwrap_or_default();
        let reason = self.stopping;
        let why = match (&self.start_error, reason) {
            (Some(e), _) => format!("the CLI could not start the session: {e}"),
            (None, Some(r)) => format!("the session was stopped ({r:?})"),
            (None, None) => {
                let tail = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
                format!("the CLI {}{tail}", info.describe())
            }
        };
        if reason.is_none() || self.start_error.is_some() {
            log::warn!("session {}: {why}", self.id);
        }
        if let Some(turn) = self.turn.as_ref() {
            if turn.interrupted && reason == Some(StopReason::Unresponsive) {
                self.end_interrupted_turn(ctx);
            } else {
                self.finish_turn(None, TurnOutcome::Failed(ApiError::CliFailed(why.clone())), ctx);
            }
        }
        for waiter in self.ready_waiters.drain(..) {
            let _ = waiter.send(Err(ApiError::CliFailed(why.clone())));
        }
        self.drop_queue(crate::domain::frames::DropReason::Stopped, "the session's CLI stopped", ctx);
        let status = match reason {
            Some(r) => r.final_status(),
            None if !self.ready => Some(SessionStatus::Failed),
            // Crashed after it was ready: the next message resumes it.
            None => Some(SessionStatus::Idle),
        };
        if let Some(status) = status {
            self.set_status(status);
        }
        // Off this thread, and done before `Ended`: a relaunch makes the same directory again.
        let tmp_dir = self.tmp_dir.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(tmp_dir));
        self.registry.do_send(Stopping { session_id: self.id.clone(), generation: self.generation });
        // End only once every event is stored: a follower that connects after this actor is
        // gone replays from storage alone.
        let last_flush = self.flush_events(ctx);
        let committing = self.committing.take();
        let wait = async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                if let Some(committed) = committing {
                    let _ = committed.await;
                }
                if let Some(flush) = last_flush {
                    let _ = flush.await;
                }
            })
            .await;
            let _ = removed.await;
        };
        ctx.spawn(wait.into_actor(self).map(|_, act, ctx| {
            if let Some((ours, to)) = act.log.release() {
                // All stored: the next actor may continue right after the last id.
                let _ = act.persist.push(PersistJob::ReleaseIds { ours, to });
            }
            act.registry.do_send(Ended { session_id: act.id.clone(), generation: act.generation });
            ctx.stop();
        }));
    }

    /// Asks the CLI what this process has spent already (a resumed CLI restores a total of
    /// its own, see [`super::turn::CostMeter`]), then counts it as ready: no turn's result can
    /// come before the answer. A CLI that does not answer `get_usage` is ready all the same.
    fn learn_starting_cost(&mut self, ctx: &mut Context<Self>) {
        let answer = self.control(json!({ "subtype": "get_usage" }));
        ctx.spawn(async move { tokio::time::timeout(USAGE_TIMEOUT, answer).await }.into_actor(self).map(
            |result, act, _| {
                match result {
                    Ok(Ok(Ok(usage))) => match usage.pointer("/session/total_cost_usd").and_then(Value::as_f64) {
                        Some(total) => act.cost.starts_at(total),
                        None => log::warn!("session {}: get_usage without session.total_cost_usd: {usage}", act.id),
                    },
                    Ok(Ok(Err(e))) => log::debug!("session {}: the CLI does not tell its cost: {e}", act.id),
                    Ok(Err(_)) => return, // the process ended first; on_exit reports it
                    Err(_) => log::warn!("session {}: no answer to get_usage within {USAGE_TIMEOUT:?}", act.id),
                }
                act.cli_ready = true;
                act.on_ready();
            },
        ));
    }

    /// Ready once the CLI answered `initialize` and the event ids are reserved.
    pub(super) fn on_ready(&mut self) {
        if !(self.cli_ready && self.log.is_reserved()) || self.ready {
            return;
        }
        self.ready = true;
        if self.ready_waiters.is_empty() && self.turn.is_none() {
            // Started ahead of any message (at create): its start-up housekeeping yields.
            self.priority.idle(self.process.pid);
        }
        self.registry.do_send(Ready { session_id: self.id.clone(), generation: self.generation });
        self.set_status(SessionStatus::Active);
        for waiter in self.ready_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(stdout) = self.process.stdout.take() {
            ctx.add_stream(stdout_messages(stdout, MAX_LINE_BYTES));
        }
        if let Some(exited) = self.process.exited.take() {
            ctx.spawn(
                async move { exited.await.unwrap_or(ExitInfo { status: None }) }
                    .into_actor(self)
                    .map(|info, act, ctx| act.on_exit(info, ctx)),
            );
        }
        // Ids above every id handed out before (even ones never stored) are reserved while the
        // CLI starts.
        let (floor_tx, floor) = oneshot::channel();
        let _ = self.persist.push(PersistJob::ReserveIds { block: ID_BLOCK, floor: floor_tx });
        ctx.spawn(floor.into_actor(self).map(|result, act, ctx| match result {
            Ok(Ok(floor)) => {
                act.log.reserved(floor);
                act.on_ready();
            }
            failed => {
                let why = failed.map_or_else(|_| "no answer".to_string(), |r| r.err().unwrap_or_default());
                act.start_error = Some(format!("storage unavailable: {why}"));
                act.begin_stop(StopReason::StartFailed, ctx);
            }
        }));
        // The answer to `initialize` is the CLI's "ready"; the first message waits for it.
        let answer = self.control(json!({ "subtype": "initialize", "hooks": null }));
        ctx.spawn(async move { tokio::time::timeout(INITIALIZE_TIMEOUT, answer).await }.into_actor(self).map(
            |result, act, ctx| match result {
                Ok(Ok(Ok(info))) => {
                    let version = info.get("claude_code_version").and_then(Value::as_str).unwrap_or("?");
                    log::debug!("session {}: CLI {version} ready", act.id);
                    act.learn_starting_cost(ctx);
                }
                Ok(Ok(Err(e))) => {
                    act.start_error = Some(format!("initialize failed: {e}"));
                    act.begin_stop(StopReason::StartFailed, ctx);
                }
                Ok(Err(_)) => {} // the process ended first; on_exit reports it
                Err(_) => {
                    act.start_error = Some("the CLI did not answer initialize within 60 s".into());
                    act.begin_stop(StopReason::StartFailed, ctx);
                }
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.turn.is_some() {
            self.hub.turns().end(&self.id);
        }
        // Dropping `process` (with its stop sender) makes the supervisor stop and reap the child
        // even if the actor ended unexpectedly.
        self.registry.do_send(Ended { session_id: self.id.clone(), generation: self.generation });
    }
}

/// Stop the process (close, eviction, shutdown, …). Evictions spare a session in a turn.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub reason: StopReason,
}

impl Handler<Stop> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Context<Self>) {
        let in_turn = self.turn.is_some() || self.reserved;
        match msg.reason {
            StopReason::IdleEviction | StopReason::MemoryEviction if in_turn => {
                // Refused: the registry sees the session stays live.
            }
            StopReason::TooLarge if in_turn => {
                self.stop_after_turn.get_or_insert(StopReason::TooLarge);
            }
            StopReason::Shutdown if self.turn.is_some() => {
                // Running turns may finish within api.shutdown_grace; then they are interrupted.
                self.stop_after_turn = Some(StopReason::Shutdown);
                self.registry.do_send(Stopping { session_id: self.id.clone(), generation: self.generation });
                ctx.run_later(Duration::from_secs(self.settings.api.shutdown_grace), |act, ctx| {
                    if act.turn.is_some() {
                        act.interrupt(ctx);
                    }
                });
            }
            reason => {
                if self.turn.is_some() {
                    let err = ApiError::CliFailed(format!("the session was stopped ({reason:?}) during the turn"));
                    self.finish_turn(None, TurnOutcome::Failed(err), ctx);
                }
                self.begin_stop(reason, ctx);
            }
        }
    }
}
