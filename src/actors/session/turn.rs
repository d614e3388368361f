//! A turn from the CLI's result to its stored record: the cost of the turn, the final frame
//! once the turn's rows are committed, interrupts and timeouts.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::translate::Transcript;
use super::{COMMIT_WAIT, INTERRUPT_GRACE, SessionActor, StopReason};
use crate::actors::event::{self, SessionEvent, TurnOutcome};
use crate::actors::persist::PersistJob;
use crate::actors::registry::Activity;
use crate::cli::protocol::ResultMessage;
use crate::clock;
use crate::domain::TurnResult;
use crate::domain::frames as events;
use crate::error::ApiError;
use crate::storage::TurnRecord;

/// What the session has spent. The CLI reports its cost as a running total per process
/// (`total_cost_usd`), which a resumed CLI does not start from zero: the pinned 2.1.330
/// restores the total it saved in the transcript at its last clean exit (none after a crash
/// or a kill, an older one when the last process was killed), so neither zero nor the
/// session's saved total is a safe guess. The actor asks the started CLI for its total
/// (`get_usage`) before its first turn ([`CostMeter::starts_at`]): each turn's cost is then
/// the difference of this process's reports. Without that answer (a CLI that does not know
/// `get_usage`), a report at or above the last one adds the difference and one below it is a
/// total that started again (from zero) and is this turn's cost alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CostMeter {
    /// The CLI's cumulative cost at its last result (or as it reported it at its start).
    seen: f64,
    total: f64,
}

impl CostMeter {
    pub(super) fn new(saved_total: f64) -> Self {
        Self { seen: saved_total, total: saved_total }
    }

    /// This process's running total before its first turn, as the CLI reported it.
    pub(super) fn starts_at(&mut self, cli_total: f64) {
        self.seen = cli_total;
    }

    /// Records a result's cumulative `total_cost_usd` (none: nothing spent) and returns what
    /// the turn cost.
    pub(super) fn record(&mut self, reported: Option<f64>) -> f64 {
        let reported = reported.unwrap_or(self.seen);
        let turn_cost = if reported >= self.seen { reported - self.seen } else { reported };
        self.seen = reported;
        self.total += turn_cost;
        turn_cost
    }

    /// The session's total: the stored one plus every turn recorded since.
    pub(super) fn total(&self) -> f64 {
        self.total
    }
}

pub(super) struct Turn {
    pub(super) id: Arc<str>,
    pub(super) user_text: String,
    pub(super) started_at: i64,
    pub(super) started: Instant,
    pub(super) sink: Option<mpsc::Sender<Arc<SessionEvent>>>,
    /// The client reads the last event only: the others go to followers and storage alone.
    pub(super) outcome_only: bool,
    /// The text and tool calls the CLI sent so far.
    pub(super) transcript: Transcript,
    /// The CLI's uuid of the turn's last assistant message so far (a fork or rewind point).
    pub(super) leaf_uuid: Option<String>,
    /// The client asked for an interrupt.
    pub(super) interrupted: bool,
    /// The deadline timer and the interrupt's grace timer: cancelled when the turn ends, so
    /// no timer outlives its turn (each pending one costs the actor on every wake-up).
    pub(super) timers: Vec<SpawnHandle>,
    /// The turn's slot: dropping it (with the turn) frees it for the next waiter.
    pub(super) _permit: OwnedSemaphorePermit,
    /// What the turn holds of its user's budget: dropped once the turn's record (with its
    /// cost) is committed, or the commit is given up on.
    pub(super) budget_hold: Option<Box<dyn Send>>,
    /// Messages steered into the turn (`priority: "next"`), in the order they were sent.
    pub(super) steers: Vec<super::queue::Steer>,
    /// The CLI ended a part of the turn while steered messages were still waiting for it (no
    /// tool boundary came): it runs them next, and the turn goes on with them. What the
    /// parts so far added up to.
    pub(super) carried: Option<TurnResult>,
}

impl SessionActor {
    pub(super) fn on_result(&mut self, result: ResultMessage, ctx: &mut Context<Self>) {
        let turn_cost = self.cost.record(result.total_cost_usd);
        if self.turn.is_none() {
            if let Some(grace) = self.draining.take() {
                // The timed-out turn has ended: the CLI is free for the next one.
                ctx.cancel_future(grace);
                log::debug!("session {}: the CLI ended its timed-out turn", self.id);
                self.start_next_queued(ctx);
            }
            if !self.ready {
                // A result before `initialize` was answered: the start failed (e.g. a bad resume).
                let why = result.errors.join("; ");
                self.start_error = Some(if why.is_empty() { "the CLI ended before it was ready".into() } else { why });
            }
            return;
        }
        if self.steers_outlive(&result, turn_cost, ctx) {
            return;
        }
        let Some(turn) = self.turn.as_ref() else { return };
        let subtype = if turn.interrupted { "interrupted".to_string() } else { result.subtype.clone() };
        if subtype == "error_max_budget_usd" {
            self.stop_after_turn.get_or_insert(StopReason::BudgetSpent);
        }
        let text = match result.result.clone() {
            Some(t) if !t.is_empty() => t,
            _ => turn.transcript.assistant_text.clone(),
        };
        let summary = super::queue::carry(
            turn.carried.as_ref(),
            TurnResult {
                text,
                subtype,
                is_error: result.is_error,
                cost_usd: turn_cost,
                usage: result.usage.clone().into(),
                num_turns: result.num_turns,
                duration_ms: result.duration_ms,
            },
        );
        // A CLI without credentials "answers" with its login prompt: that is a failed turn, the
        // same for a sync chat and a stream, and it names the key to set.
        if let Some(why) = crate::cli::auth_failure(summary.is_error, &summary.text) {
            self.finish_turn(Some(summary), TurnOutcome::Failed(ApiError::CliFailed(why)), ctx);
            return;
        }
        let tool_calls = turn.transcript.tool_calls.clone();
        self.finish_turn(Some(summary.clone()), TurnOutcome::Done { result: summary, tool_calls }, ctx);
    }

    /// Ends the current turn: its last frame, the stored record, the slot back. The last frame
    /// goes out only once the turn's rows (messages, counters, events) are committed, so a read
    /// right after it sees the turn; if they cannot be, the client gets `storage_unavailable`.
    pub(super) fn finish_turn(&mut self, summary: Option<TurnResult>, outcome: TurnOutcome, ctx: &mut Context<Self>) {
        let json = match &outcome {
            TurnOutcome::Done { result, .. } => events::done(result),
            TurnOutcome::Failed(err) => event::error_frame(err),
        };
        let outcome_code = match &outcome {
            TurnOutcome::Failed(err) => Some(err.code()),
            TurnOutcome::Done { .. } => None,
        };
        self.drop_untaken_steers(outcome_code, ctx);
        let Some(mut turn) = self.turn.take() else { return };
        self.hub.turns().end(&self.id);
        // A queued message raises it again as it is written.
        self.priority.idle(self.process.pid);
        let last = self.log.number(json, Some(outcome), &turn.id);
        // The turn's last events are stored in the same transaction as the turn itself.
        let (events, stored, _) = self.hand_events(Some(&last), ctx).expect("the last frame is a row");
        for timer in &turn.timers {
            ctx.cancel_future(*timer);
        }
        self.deny_pending("the turn ended", ctx);
        let usage = summary.as_ref().map(|s| s.usage.clone()).unwrap_or_default();
        self.metrics.turn_ended(
            turn.started.elapsed().as_secs_f64(),
            outcome_code,
            usage.input_tokens,
            usage.output_tokens,
            summary.as_ref().map(|s| s.cost_usd).unwrap_or(0.0),
        );
        let record = TurnRecord {
            events,
            trim_events_to: self.log.trim_to(last.id, self.replay_keep),
            session_id: self.id.clone(),
            turn_id: turn.id.to_string(),
            started_at: turn.started_at,
            finished_at: clock::now_ms(),
            total_cost_usd: self.cost.total(),
            turn_cost_usd: summary.as_ref().map(|s| s.cost_usd).unwrap_or(0.0),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            last_event_id: last.id,
            error_code: outcome_code.map(str::to_string),
            subtype: summary.as_ref().map(|s| s.subtype.clone()),
            user_text: std::mem::take(&mut turn.user_text),
            assistant_text: summary.map(|s| s.text).unwrap_or(std::mem::take(&mut turn.transcript.assistant_text)),
            tool_calls: serde_json::to_string(&turn.transcript.tool_calls).unwrap_or_else(|_| "[]".into()),
            // The user message went to the CLI with the turn's id as its uuid.
            user_cli_uuid: Some(turn.id.to_string()),
            leaf_uuid: turn.leaf_uuid.take(),
        };
        log::debug!("session {}: turn {} ended after {:?}", self.id, record.turn_id, turn.started.elapsed());
        let (committed_tx, committed) = oneshot::channel();
        // A refused push drops both senders: the wait below sees the turn as not stored.
        let _ = self.persist.push(PersistJob::TurnFinished(Box::new(record), vec![committed_tx, stored]));
        let (delivered, delivered_rx) = oneshot::channel();
        self.committing = Some(delivered_rx);
        let mut sink = turn.sink.take();
        let turn_id = turn.id.clone();
        let budget_hold = turn.budget_hold.take();
        let wait = async move { tokio::time::timeout(COMMIT_WAIT, committed).await };
        ctx.spawn(wait.into_actor(self).map(move |result, act, ctx| {
            drop(budget_hold);
            match result {
                Ok(Ok(Ok(_))) => act.deliver(&last, &mut sink),
                failed => {
                    let why = match failed {
                        Ok(Ok(Err(e))) => e,
                        Err(_) => format!("the turn was not stored within {COMMIT_WAIT:?}"),
                        _ => "the writer's queue is full".into(),
                    };
                    log::warn!("session {}: turn {turn_id} not stored: {why}", act.id);
                    let err = ApiError::StorageUnavailable(format!("the turn's result could not be stored: {why}"));
                    let frame = act.log.number(event::error_frame(&err), Some(TurnOutcome::Failed(err)), &turn_id);
                    act.deliver(&frame, &mut sink);
                    act.log.keep(frame);
                    act.schedule_flush(ctx);
                }
            }
            act.committing = None;
            let _ = delivered.send(());
            // What waited for the final frame (drops numbered after it), then the next queued turn.
            act.emit_deferred(ctx);
            act.start_next_queued(ctx);
        }));
        drop(turn);
        self.registry.do_send(Activity { session_id: self.id.clone(), generation: self.generation, in_turn: false });
        if let Some(reason) = self.stop_after_turn.take() {
            self.begin_stop(reason, ctx);
        }
    }

    /// The client's interrupt: the turn ends with the CLI's `interrupted` result, or after
    /// `INTERRUPT_GRACE` without one (and the CLI is killed).
    pub(super) fn interrupt(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_mut() else { return };
        if turn.interrupted {
            return;
        }
        turn.interrupted = true;
        let turn_id = turn.id.clone();
        // Steered messages the turn has not taken go with it (the service's queue does not).
        drop(self.control(json!({ "subtype": "interrupt", "cancel_queued": true })));
        // A CLI that does not obey is killed; the session becomes idle and resumes later.
        let grace = self.timer(ctx, INTERRUPT_GRACE, move |act, ctx| {
            if act.turn.as_ref().is_some_and(|t| t.id == turn_id) {
                log::warn!("session {}: the CLI ignored an interrupt; stopping it", act.id);
                act.end_interrupted_turn(ctx);
                act.begin_stop(StopReason::Unresponsive, ctx);
            }
        });
        if let Some(turn) = self.turn.as_mut() {
            turn.timers.push(grace);
        }
    }

    /// The turn's deadline passed: its client gets `turn_timeout` now, not after the CLI
    /// obeys. The CLI is asked to interrupt and has `INTERRUPT_GRACE` to end the turn (its
    /// late frames belong to no turn and are dropped) before it is stopped.
    pub(super) fn time_out_turn(&mut self, ctx: &mut Context<Self>) {
        log::info!("session {}: turn timed out; interrupting", self.id);
        let err = ApiError::TurnTimeout("The turn took longer than its timeout and was interrupted".into());
        self.abandon_turn(err, ctx);
    }

    /// Ends the turn with `err` now, and asks the CLI to interrupt it (as for a timeout).
    pub(super) fn abandon_turn(&mut self, err: ApiError, ctx: &mut Context<Self>) {
        self.finish_turn(None, TurnOutcome::Failed(err), ctx);
        if self.stopping.is_some() {
            return;
        }
        drop(self.control(json!({ "subtype": "interrupt", "cancel_queued": true })));
        let grace = self.timer(ctx, INTERRUPT_GRACE, |act, ctx| {
            act.draining = None;
            log::warn!("session {}: the CLI ignored the interrupt of a timed-out turn; stopping it", act.id);
            act.begin_stop(StopReason::Unresponsive, ctx);
        });
        self.draining = Some(grace);
    }

    /// Ends an interrupted turn whose CLI will not send a result (killed, crashed, gone).
    pub(super) fn end_interrupted_turn(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_ref() else { return };
        let summary = TurnResult {
            text: turn.transcript.assistant_text.clone(),
            subtype: "interrupted".into(),
            is_error: true,
            cost_usd: 0.0,
            usage: Default::default(),
            num_turns: 0,
            duration_ms: turn.started.elapsed().as_millis() as i64,
        };
        // A CLI without credentials "answers" with its login prompt: that is a failed turn, the
        // same for a sync chat and a stream, and it names the key to set.
        if let Some(why) = crate::cli::auth_failure(summary.is_error, &summary.text) {
            self.finish_turn(Some(summary), TurnOutcome::Failed(ApiError::CliFailed(why)), ctx);
            return;
        }
        let tool_calls = turn.transcript.tool_calls.clone();
        self.finish_turn(Some(summary.clone()), TurnOutcome::Done { result: summary, tool_calls }, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs in these tests are exact in binary (multiples of 1/64), so equality is exact.
    const C: f64 = 1.0 / 64.0;

    #[test]
    fn a_fresh_process_adds_the_difference_of_its_running_total() {
        let mut cost = CostMeter::new(0.0);
        assert_eq!(cost.record(Some(C)), C);
        assert_eq!(cost.record(Some(3.0 * C)), 2.0 * C);
        assert_eq!(cost.record(Some(6.0 * C)), 3.0 * C);
        assert_eq!(cost.total(), 6.0 * C);
    }

    #[test]
    fn a_respawned_cli_that_restores_the_saved_total_is_not_counted_twice() {
        // The session had spent 10 C; the new process reports its total from there.
        let mut cost = CostMeter::new(10.0 * C);
        assert_eq!(cost.record(Some(11.0 * C)), C, "only this turn, not the saved 10 C again");
        assert_eq!(cost.record(Some(13.0 * C)), 2.0 * C);
        assert_eq!(cost.total(), 13.0 * C);
    }

    #[test]
    fn a_respawned_cli_whose_total_starts_again_from_zero_adds_its_report() {
        let mut cost = CostMeter::new(10.0 * C);
        assert_eq!(cost.record(Some(2.0 * C)), 2.0 * C);
        assert_eq!(cost.total(), 12.0 * C, "the saved total is kept");
        assert_eq!(cost.record(Some(5.0 * C)), 3.0 * C, "then differences of the new running total");
        assert_eq!(cost.total(), 15.0 * C);
    }

    #[test]
    fn a_resumed_cli_whose_total_restarted_below_the_saved_one_is_measured_from_its_own_start() {
        // The 2.1.330 case after a crash: the session had spent 10 C, the CLI's transcript holds
        // no total (it never exited cleanly), so the resumed process starts from 0, and its
        // first turn costs 12 C: all 12 C are this turn's, not the 2 C above the saved total.
        let mut cost = CostMeter::new(10.0 * C);
        cost.starts_at(0.0);
        assert_eq!(cost.record(Some(12.0 * C)), 12.0 * C);
        assert_eq!(cost.total(), 22.0 * C);
        // An older saved total (the last clean exit was at 4 C, then 6 C more before a kill):
        // the resumed process starts at 4 C, and a turn of 1 C reports 5 C, below the saved 10 C.
        let mut cost = CostMeter::new(10.0 * C);
        cost.starts_at(4.0 * C);
        assert_eq!(cost.record(Some(5.0 * C)), C, "not the whole 5 C");
        assert_eq!(cost.record(Some(8.0 * C)), 3.0 * C);
        assert_eq!(cost.total(), 14.0 * C);
        // A clean exit: the CLI restores the saved total itself, nothing counts twice.
        let mut cost = CostMeter::new(10.0 * C);
        cost.starts_at(10.0 * C);
        assert_eq!(cost.record(Some(11.0 * C)), C);
        assert_eq!(cost.total(), 11.0 * C);
    }

    #[test]
    fn a_result_without_a_cost_costs_nothing_and_changes_nothing() {
        let mut cost = CostMeter::new(4.0 * C);
        assert_eq!(cost.record(Some(5.0 * C)), C);
        assert_eq!(cost.record(None), 0.0);
        assert_eq!(cost.record(Some(7.0 * C)), 2.0 * C, "still measured from the last reported total");
        assert_eq!(cost.total(), 7.0 * C);
    }
}
