//! One actor per live session. It owns the session's CLI process (through [`CliProcess`]): the
//! stdin writer, the stdout stream, the current turn and its numbered events. Turns are
//! strictly sequential. The actor lives exactly as long as its process: when the process ends
//! (close, eviction, crash, shutdown) the actor records why, tells the registry and stops.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::EventHub;
use super::event::{self, SessionEvent, TurnOutcome};
use super::persist::{self, PersistJob};
use super::registry::{Activity, Ended, Ready, Registry, Stopping};
use crate::cli::process::{CliProcess, ExitInfo, MAX_LINE_BYTES, StdoutItem, stdout_messages};
use crate::cli::protocol::{
    CliMessage, ContentBlock, Delta, IncomingControlRequest, OutgoingControlRequest, OutgoingControlResponse,
    ResultMessage, StreamEvent, UserInput, to_line, tool_result_text,
};
use crate::clock;
use crate::domain::frames as events;
use crate::domain::{AgentInfo, SessionStatus, ToolCall, TurnResult};
use crate::error::ApiError;
use crate::settings::Settings;
use crate::storage::{EventRow, Storage, TurnRecord};

/// How long the CLI may take to answer `initialize` (a request waits only its own timeout).
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an interrupted turn (by the client, or after its timeout) may take to end before
/// the CLI is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// Frames buffered for one client; a client further behind is dropped (it can reconnect).
pub const CLIENT_BUFFER: usize = 4096;
/// Events are written in batches: after this delay, or at this size, or at the end of a turn.
const EVENT_FLUSH_DELAY: Duration = Duration::from_millis(100);
const EVENT_FLUSH_SIZE: usize = 64;
/// A batch the writer gave up on is handed to it again after this delay.
const EVENT_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Events held in memory until stored, at most: past this (the database has been away a long
/// while) the running turn fails with `storage_unavailable` rather than memory growing.
const MAX_UNSTORED: usize = 65_536;
/// Event ids are reserved in the session row in blocks of this size before they are handed
/// out, so no id is handed out twice, whatever happens to the events. Large, so that a burst
/// never outruns the next reservation; unused ids are given back when an actor ends cleanly.
const ID_BLOCK: i64 = 1 << 20;
/// How long the end of a turn waits for its rows to be committed before the client gets
/// `storage_unavailable` instead of its answer.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

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
    Shutdown,
    /// A second signal during shutdown: no grace.
    ForcedShutdown,
    /// Did not obey an interrupt.
    Unresponsive,
    /// Broke the protocol (a line over the cap).
    ProtocolError,
    /// Never became ready.
    StartFailed,
}

impl StopReason {
    /// The status the session gets once the process is gone (`None`: the caller set it).
    fn final_status(self) -> Option<SessionStatus> {
        use StopReason::*;
        match self {
            Closed | Purged | Expired | UserDeleted => None,
            IdleEviction | MemoryEviction | TooLarge | Shutdown | ForcedShutdown | Unresponsive | ProtocolError => {
                Some(SessionStatus::Idle)
            }
            StartFailed => Some(SessionStatus::Failed),
        }
    }

    /// Evictions never stop a session in a turn.
    fn spares_a_turn(self) -> bool {
        matches!(self, StopReason::IdleEviction | StopReason::MemoryEviction | StopReason::TooLarge)
    }
}

/// What the registry knows when it starts the actor.
pub struct SessionSetup {
    pub session_id: String,
    pub cli_session_id: String,
    pub user_id: String,
    pub last_event_id: i64,
    pub total_cost_usd: f64,
    pub tmp_dir: PathBuf,
    /// Tools answered "allow" without asking the client (the session's allowed tools,
    /// including those the client chose to always allow).
    pub always_allowed: Vec<String>,
    /// Which launch of the session this actor is (its reports to the registry carry it).
    pub generation: u64,
    /// `api.max_concurrent_requests` turn slots, shared by every session.
    pub turn_slots: Arc<Semaphore>,
}

struct Turn {
    id: Arc<str>,
    user_text: String,
    started_at: i64,
    started: Instant,
    sink: Option<mpsc::Sender<Arc<SessionEvent>>>,
    /// Text streamed since the last complete assistant frame (deltas make it redundant).
    streamed_since_block: bool,
    assistant_text: String,
    tool_calls: Vec<ToolCall>,
    /// The client asked for an interrupt.
    interrupted: bool,
    /// The deadline timer and the interrupt's grace timer: cancelled when the turn ends, so
    /// no timer outlives its turn (each pending one costs the actor on every wake-up).
    timers: Vec<SpawnHandle>,
    /// The turn's slot: dropping it (with the turn) frees it for the next waiter.
    _permit: OwnedSemaphorePermit,
}

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

pub struct SessionActor {
    id: String,
    cli_session_id: String,
    generation: u64,
    turn_slots: Arc<Semaphore>,
    registry: Addr<Registry>,
    settings: Arc<Settings>,
    persist: persist::Writer,
    process: CliProcess,
    tmp_dir: PathBuf,
    ready: bool,
    ready_waiters: Vec<oneshot::Sender<Result<(), ApiError>>>,
    /// A turn request is waiting for a slot or for readiness.
    reserved: bool,
    turn: Option<Turn>,
    controls: HashMap<String, oneshot::Sender<Result<Value, String>>>,
    control_seq: u64,
    next_event_id: i64,
    /// The CLI's cumulative cost at its last result (starts at the stored total).
    cost_seen: f64,
    total_cost: f64,
    stopping: Option<StopReason>,
    /// A stop that waits for the running turn to end.
    stop_after_turn: Option<StopReason>,
    /// What went wrong before the CLI became ready (e.g. a failed resume).
    start_error: Option<String>,
    hub: Arc<EventHub>,
    metrics: Arc<crate::metrics::Metrics>,
    /// What the CLI reported at the start of its last turn.
    agent_info: Option<AgentInfo>,
    /// Open `can_use_tool` requests by request id, and the timer that denies each one.
    permissions: HashMap<String, PendingPermission>,
    permission_timers: HashMap<String, SpawnHandle>,
    /// The CLI is still in a turn that timed out (its client already has its 504): the grace
    /// timer after which it is stopped. A new turn does not wait for it (see `StartTurn`).
    draining: Option<SpawnHandle>,
    /// Every timer's closure holds a clone: the count of clones is the number of timers actix
    /// still holds (it drops fired and cancelled ones). See [`PendingTimers`].
    timer_probe: Arc<()>,
    /// Tools the client chose to always allow in this session.
    always_allowed: std::collections::HashSet<String>,
    /// Events not yet confirmed stored, oldest first (followers read them at the seam).
    unstored: VecDeque<Arc<SessionEvent>>,
    /// Highest event id handed to the writer.
    handed_up_to: i64,
    flush_scheduled: bool,
    replay_keep: i64,
    /// The CLI answered `initialize`; `ready` once the event ids are reserved as well.
    cli_ready: bool,
    ids_reserved: bool,
    /// The highest event id reserved in storage: no id above it is handed out.
    reserved_up_to: i64,
    extending_ids: bool,
    /// The last turn's end waits for its commit (no new turn starts meanwhile, so its
    /// final frame keeps its place in the numbering); resolves once its frame is delivered.
    committing: Option<oneshot::Receiver<()>>,
}

impl SessionActor {
    pub fn new(
        setup: SessionSetup,
        process: CliProcess,
        registry: Addr<Registry>,
        storage: Storage,
        settings: Arc<Settings>,
        hub: Arc<EventHub>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        SessionActor {
            metrics,
            agent_info: None,
            hub,
            permissions: HashMap::new(),
            permission_timers: HashMap::new(),
            draining: None,
            timer_probe: Arc::new(()),
            always_allowed: setup.always_allowed.iter().cloned().collect(),
            unstored: VecDeque::new(),
            handed_up_to: setup.last_event_id,
            flush_scheduled: false,
            cli_ready: false,
            ids_reserved: false,
            reserved_up_to: setup.last_event_id,
            extending_ids: false,
            committing: None,
            replay_keep: settings.events.replay as i64,
            persist: persist::start(storage, setup.session_id.clone()),
            id: setup.session_id,
            cli_session_id: setup.cli_session_id,
            generation: setup.generation,
            turn_slots: setup.turn_slots,
            registry,
            settings,
            process,
            tmp_dir: setup.tmp_dir,
            ready: false,
            ready_waiters: Vec::new(),
            reserved: false,
            turn: None,
            controls: HashMap::new(),
            control_seq: 0,
            next_event_id: setup.last_event_id + 1,
            cost_seen: setup.total_cost_usd,
            total_cost: setup.total_cost_usd,
            stopping: None,
            stop_after_turn: None,
            start_error: None,
        }
    }

    fn write(&self, line: Vec<u8>) {
        // A closed channel means the process is going away; its exit is reported separately.
        let _ = self.process.stdin.send(line);
    }

    /// Sends a control request; the answer (or the timeout) comes back on the receiver.
    fn control(&mut self, request: Value) -> oneshot::Receiver<Result<Value, String>> {
        self.control_seq += 1;
        let request_id = format!("req_{}_{}", self.control_seq, &self.id[..8.min(self.id.len())]);
        let (tx, rx) = oneshot::channel();
        self.write(to_line(&OutgoingControlRequest::new(&request_id, request)));
        self.controls.insert(request_id, tx);
        rx
    }

    /// `run_later` counted by `timer_probe`.
    fn timer<F>(&self, ctx: &mut Context<Self>, after: Duration, f: F) -> SpawnHandle
    where
        F: FnOnce(&mut Self, &mut Context<Self>) + 'static,
    {
        let probe = self.timer_probe.clone();
        ctx.run_later(after, move |act, ctx| {
            drop(probe);
            f(act, ctx)
        })
    }

    fn set_status(&self, to: SessionStatus) {
        if self.persist.push(PersistJob::Status { to, from: &SessionStatus::LIVE }).is_err() {
            log::warn!("session {}: storage is behind; status {} not recorded", self.id, to.as_str());
        }
    }

    /// Gives the next event id to an event of turn `turn_id`.
    fn number(&mut self, json: String, outcome: Option<TurnOutcome>, turn_id: &Arc<str>) -> Arc<SessionEvent> {
        let event =
            Arc::new(SessionEvent { id: self.next_event_id, turn_id: turn_id.clone(), json: json.into(), outcome });
        self.next_event_id += 1;
        event
    }

    /// Hands an event to the turn's client (if `sink`) and to followers. A client that cannot
    /// keep up is dropped rather than slowing the turn.
    fn deliver(&self, event: &Arc<SessionEvent>, sink: &mut Option<mpsc::Sender<Arc<SessionEvent>>>) {
        if let Some(tx) = sink
            && tx.try_send(event.clone()).is_err()
        {
            log::info!("session {}: client gone or too slow; the turn goes on without it", self.id);
            *sink = None;
        }
        self.hub.publish(&self.id, event);
    }

    /// Numbers an event of the running turn, hands it out and queues it for storage. A turn
    /// that would run past the reserved ids or the events memory may hold (the database is
    /// away) fails with `storage_unavailable` instead.
    fn emit(&mut self, json: String, outcome: Option<TurnOutcome>, ctx: &mut Context<Self>) {
        let Some(turn_id) = self.turn.as_ref().map(|t| t.id.clone()) else { return };
        if outcome.is_none() && !id_budget_left(self.next_event_id, self.reserved_up_to, self.unstored.len()) {
            log::warn!("session {}: events cannot be stored; the turn fails", self.id);
            let err = ApiError::StorageUnavailable("the turn's events could not be stored".into());
            self.abandon_turn(err, ctx);
            return;
        }
        let event = self.number(json, outcome, &turn_id);
        let mut sink = self.turn.as_mut().and_then(|t| t.sink.take());
        self.deliver(&event, &mut sink);
        if let Some(turn) = self.turn.as_mut() {
            turn.sink = sink;
        }
        self.unstored.push_back(event);
        self.extend_ids(ctx);
        self.schedule_flush(ctx);
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        let waiting = (self.next_event_id - 1 - self.handed_up_to) as usize;
        if waiting >= EVENT_FLUSH_SIZE {
            self.flush_events(ctx);
        } else if waiting > 0 && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(EVENT_FLUSH_DELAY, |act, ctx| {
                act.flush_scheduled = false;
                act.flush_events(ctx);
            });
        }
    }

    /// Reserves the next block of ids once half of the current one is used (without waiting).
    fn extend_ids(&mut self, ctx: &mut Context<Self>) {
        if self.extending_ids || !self.ids_reserved || self.reserved_up_to - self.next_event_id >= ID_BLOCK / 2 {
            return;
        }
        let up_to = self.reserved_up_to + ID_BLOCK;
        let (done, extended) = oneshot::channel();
        if self.persist.push(PersistJob::ExtendIds { up_to, done: vec![done] }).is_err() {
            return;
        }
        self.extending_ids = true;
        ctx.spawn(extended.into_actor(self).map(move |result, act, _| {
            act.extending_ids = false;
            if let Ok(Ok(up_to)) = result {
                act.reserved_up_to = act.reserved_up_to.max(up_to);
            }
        }));
    }

    /// Hands the events not yet handed to the writer as its own batch; they stay in memory
    /// until it confirms. The receiver resolves once they are stored (or given up on).
    fn flush_events(&mut self, ctx: &mut Context<Self>) -> Option<oneshot::Receiver<()>> {
        let (rows, stored, done) = self.hand_events(None, ctx)?;
        if let Err(PersistJob::Events { stored, .. }) =
            self.persist.push(PersistJob::Events { rows, keep: self.replay_keep, stored: vec![stored] })
        {
            // No room: they are handed again later.
            for s in stored {
                let _ = s.send(Err("the writer's queue is full".into()));
            }
        }
        Some(done)
    }

    /// The events not yet handed to the writer (plus `last`, a turn's final frame, which is
    /// delivered only once stored), as rows, with the sender the writer confirms them on and a
    /// receiver that resolves then. Stored events leave memory; events the writer gave up on
    /// stay and are handed again after `EVENT_RETRY_DELAY`.
    fn hand_events(
        &mut self,
        last: Option<&Arc<SessionEvent>>,
        ctx: &mut Context<Self>,
    ) -> Option<(Vec<EventRow>, oneshot::Sender<persist::Stored>, oneshot::Receiver<()>)> {
        let now = clock::now_ms();
        let to_row = |e: &Arc<SessionEvent>| EventRow {
            session_id: self.id.clone(),
            event_id: e.id,
            turn_id: e.turn_id.to_string(),
            payload: e.json.to_string(),
            created_at: now,
        };
        let rows: Vec<EventRow> =
            self.unstored.iter().filter(|e| e.id > self.handed_up_to).chain(last).map(to_row).collect();
        let (first, up_to) = (rows.first()?.event_id, rows.last()?.event_id);
        self.handed_up_to = up_to;
        let (stored, confirmed) = oneshot::channel();
        let (notify, done) = oneshot::channel();
        ctx.spawn(confirmed.into_actor(self).map(move |result, act, ctx| {
            if let Ok(Ok(_)) = result {
                act.unstored.retain(|e| e.id < first || e.id > up_to);
            } else {
                // Not stored: never confirmed; handed again (storing twice is harmless).
                act.handed_up_to = act.handed_up_to.min(first - 1);
                if !act.flush_scheduled {
                    act.flush_scheduled = true;
                    ctx.run_later(EVENT_RETRY_DELAY, |act, ctx| {
                        act.flush_scheduled = false;
                        act.flush_events(ctx);
                    });
                }
            }
            let _ = notify.send(());
        }));
        Some((rows, stored, done))
    }

    fn on_message(&mut self, message: CliMessage, ctx: &mut Context<Self>) {
        match message {
            CliMessage::ControlResponse(r) => {
                let body = r.response;
                if let Some(waiter) = self.controls.remove(&body.request_id) {
                    let result = if body.subtype == "success" {
                        Ok(body.response.unwrap_or(Value::Null))
                    } else {
                        Err(body.error.unwrap_or_else(|| "error".into()))
                    };
                    let _ = waiter.send(result);
                }
            }
            CliMessage::ControlRequest(req) if req.subtype() == "can_use_tool" => self.on_permission_request(req, ctx),
            CliMessage::ControlRequest(req) => {
                // Requests we do not serve get an error answer, so the CLI never waits on us.
                let message = format!("unsupported control request: {}", req.subtype());
                log::debug!("session {}: {message}", self.id);
                self.write(to_line(&OutgoingControlResponse::error(&req.request_id, &message)));
            }
            CliMessage::ControlCancel { request_id } => {
                self.take_permission(&request_id, ctx);
            }
            CliMessage::System(system) => {
                if system.subtype == "init"
                    && let Some(info) = system.init
                {
                    self.agent_info = Some(info.into());
                }
            }
            CliMessage::Unknown => {}
            CliMessage::StreamEvent(e) => {
                if e.parent_tool_use_id.is_none()
                    && let StreamEvent::ContentBlockDelta { delta: Delta::Text { text } } = e.event
                    && let Some(turn) = self.turn.as_mut()
                {
                    turn.streamed_since_block = true;
                    self.emit(events::text_delta(&text), None, ctx);
                }
            }
            CliMessage::Assistant(a) => {
                if a.parent_tool_use_id.is_some() {
                    return;
                }
                for block in a.message.content.blocks() {
                    match block {
                        ContentBlock::Text { text } => {
                            let Some(turn) = self.turn.as_mut() else { return };
                            turn.assistant_text.push_str(text);
                            if !turn.streamed_since_block {
                                self.emit(events::text_delta(text), None, ctx);
                            }
                        }
                        ContentBlock::ToolUse { id, name, input } => {
                            let Some(turn) = self.turn.as_mut() else { return };
                            turn.tool_calls.push(ToolCall {
                                id: id.clone(),
                                tool: name.clone(),
                                input: input.clone(),
                                output: Value::Null,
                                is_error: false,
                            });
                            self.emit(events::tool_use(id, name, input), None, ctx);
                        }
                        _ => {}
                    }
                }
                if let Some(turn) = self.turn.as_mut() {
                    turn.streamed_since_block = false;
                }
            }
            CliMessage::User(u) => {
                if u.is_replay || u.parent_tool_use_id.is_some() {
                    return;
                }
                for block in u.message.content.blocks() {
                    if let ContentBlock::ToolResult { tool_use_id, content, is_error } = block {
                        let Some(turn) = self.turn.as_mut() else { return };
                        let output = tool_result_text(content);
                        let is_error = is_error.unwrap_or(false);
                        let name = turn.tool_calls.iter_mut().find(|c| &c.id == tool_use_id).map(|call| {
                            call.output = output.clone();
                            call.is_error = is_error;
                            call.tool.clone()
                        });
                        self.emit(events::tool_result(tool_use_id, name.as_deref(), &output, is_error), None, ctx);
                    }
                }
            }
            CliMessage::Result(result) => self.on_result(result, ctx),
        }
    }

    fn on_result(&mut self, result: ResultMessage, ctx: &mut Context<Self>) {
        // Cost is cumulative per process; a resumed CLI may or may not start from the saved total.
        let reported = result.total_cost_usd.unwrap_or(self.cost_seen);
        let turn_cost = if reported >= self.cost_seen { reported - self.cost_seen } else { reported };
        self.cost_seen = reported;
        self.total_cost += turn_cost;
        let Some(turn) = self.turn.as_ref() else {
            if let Some(grace) = self.draining.take() {
                // The timed-out turn has ended: the CLI is free for the next one.
                ctx.cancel_future(grace);
                log::debug!("session {}: the CLI ended its timed-out turn", self.id);
            }
            if !self.ready {
                // A result before `initialize` was answered: the start failed (e.g. a bad resume).
                let why = result.errors.join("; ");
                self.start_error = Some(if why.is_empty() { "the CLI ended before it was ready".into() } else { why });
            }
            return;
        };
        let subtype = if turn.interrupted { "interrupted".to_string() } else { result.subtype.clone() };
        let text = match result.result.clone() {
            Some(t) if !t.is_empty() => t,
            _ => turn.assistant_text.clone(),
        };
        let summary = TurnResult {
            text,
            subtype,
            is_error: result.is_error,
            cost_usd: turn_cost,
            usage: result.usage.clone().into(),
            num_turns: result.num_turns,
            duration_ms: result.duration_ms,
        };
        // A CLI without credentials "answers" with its login prompt: that is a failed turn, the
        // same for a sync chat and a stream, and it names the key to set.
        if let Some(why) = crate::cli::auth_failure(summary.is_error, &summary.text) {
            self.finish_turn(Some(summary), TurnOutcome::Failed(ApiError::CliFailed(why)), ctx);
            return;
        }
        let tool_calls = turn.tool_calls.clone();
        self.finish_turn(Some(summary.clone()), TurnOutcome::Done { result: summary, tool_calls }, ctx);
    }

    /// Ends the current turn: its last frame, the stored record, the slot back. The last frame
    /// goes out only once the turn's rows (messages, counters, events) are committed, so a read
    /// right after it sees the turn; if they cannot be, the client gets `storage_unavailable`.
    fn finish_turn(&mut self, summary: Option<TurnResult>, outcome: TurnOutcome, ctx: &mut Context<Self>) {
        let json = match &outcome {
            TurnOutcome::Done { result, .. } => events::done(result),
            TurnOutcome::Failed(err) => event::error_frame(err),
        };
        let outcome_code = match &outcome {
            TurnOutcome::Failed(err) => Some(err.code()),
            TurnOutcome::Done { .. } => None,
        };
        let Some(mut turn) = self.turn.take() else { return };
        let last = self.number(json, Some(outcome), &turn.id);
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
            keep_events: self.replay_keep,
            session_id: self.id.clone(),
            turn_id: turn.id.to_string(),
            started_at: turn.started_at,
            finished_at: clock::now_ms(),
            total_cost_usd: self.total_cost,
            turn_cost_usd: summary.as_ref().map(|s| s.cost_usd).unwrap_or(0.0),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            last_event_id: last.id,
            user_text: std::mem::take(&mut turn.user_text),
            assistant_text: summary.map(|s| s.text).unwrap_or(std::mem::take(&mut turn.assistant_text)),
            tool_calls: serde_json::to_string(&turn.tool_calls).unwrap_or_else(|_| "[]".into()),
        };
        log::debug!("session {}: turn {} ended after {:?}", self.id, record.turn_id, turn.started.elapsed());
        let (committed_tx, committed) = oneshot::channel();
        // A refused push drops both senders: the wait below sees the turn as not stored.
        let _ = self.persist.push(PersistJob::TurnFinished(Box::new(record), vec![committed_tx, stored]));
        let (delivered, delivered_rx) = oneshot::channel();
        self.committing = Some(delivered_rx);
        let mut sink = turn.sink.take();
        let turn_id = turn.id.clone();
        let wait = async move { tokio::time::timeout(COMMIT_WAIT, committed).await };
        ctx.spawn(wait.into_actor(self).map(move |result, act, ctx| {
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
                    let frame = act.number(event::error_frame(&err), Some(TurnOutcome::Failed(err)), &turn_id);
                    act.deliver(&frame, &mut sink);
                    act.unstored.push_back(frame);
                    act.schedule_flush(ctx);
                }
            }
            act.committing = None;
            let _ = delivered.send(());
        }));
        drop(turn);
        self.registry.do_send(Activity { session_id: self.id.clone(), generation: self.generation, in_turn: false });
        if let Some(reason) = self.stop_after_turn.take() {
            self.begin_stop(reason, ctx);
        }
    }

    /// `can_use_tool`: answered at once for a tool the client always allows, else a
    /// `permission_request` event that waits for `POST .../permissions/{id}` or the timeout.
    fn on_permission_request(&mut self, req: IncomingControlRequest, ctx: &mut Context<Self>) {
        let tool_name = req.request.get("tool_name").and_then(Value::as_str).unwrap_or("").to_string();
        let input = req.request.get("input").cloned().unwrap_or(Value::Null);
        if self.always_allowed.contains(&tool_name) {
            self.answer_permission(&req.request_id, Ok(input));
            return;
        }
        if self.turn.is_none() {
            self.answer_permission(&req.request_id, Err("no turn is running".into()));
            return;
        }
        self.emit(events::permission_request(&req.request_id, &tool_name, &input), None, ctx);
        let request_id = req.request_id.clone();
        self.permissions.insert(
            req.request_id.clone(),
            PendingPermission { tool_name, tool_input: input, asked_at: clock::rfc3339(clock::now_ms()) },
        );
        let timer = self.timer(ctx, Duration::from_secs(self.settings.permissions.timeout), move |act, _| {
            act.permission_timers.remove(&request_id);
            if act.permissions.remove(&request_id).is_some() {
                act.answer_permission(&request_id, Err("nobody answered the permission request in time".into()));
            }
        });
        self.permission_timers.insert(req.request_id, timer);
    }

    /// Removes an open permission request and cancels its timer.
    fn take_permission(&mut self, request_id: &str, ctx: &mut Context<Self>) -> Option<PendingPermission> {
        if let Some(timer) = self.permission_timers.remove(request_id) {
            ctx.cancel_future(timer);
        }
        self.permissions.remove(request_id)
    }

    /// Allow (with the input to use) or deny (with a message) one `can_use_tool`.
    fn answer_permission(&self, request_id: &str, decision: Result<Value, String>) {
        let response = match decision {
            Ok(input) => json!({ "behavior": "allow", "updatedInput": input }),
            Err(message) => json!({ "behavior": "deny", "message": message, "interrupt": false }),
        };
        self.write(to_line(&OutgoingControlResponse::success(request_id, response)));
    }

    /// Denies every open request (the turn ended, or the session is stopping).
    fn deny_pending(&mut self, why: &str, ctx: &mut Context<Self>) {
        for (_, timer) in self.permission_timers.drain() {
            ctx.cancel_future(timer);
        }
        let ids: Vec<String> = self.permissions.drain().map(|(id, _)| id).collect();
        for id in ids {
            self.answer_permission(&id, Err(why.to_string()));
        }
    }

    /// The client's interrupt: the turn ends with the CLI's `interrupted` result, or after
    /// `INTERRUPT_GRACE` without one (and the CLI is killed).
    fn interrupt(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_mut() else { return };
        if turn.interrupted {
            return;
        }
        turn.interrupted = true;
        let turn_id = turn.id.clone();
        drop(self.control(json!({ "subtype": "interrupt" })));
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
    fn time_out_turn(&mut self, ctx: &mut Context<Self>) {
        log::info!("session {}: turn timed out; interrupting", self.id);
        let err = ApiError::TurnTimeout("The turn took longer than its timeout and was interrupted".into());
        self.abandon_turn(err, ctx);
    }

    /// Ends the turn with `err` now, and asks the CLI to interrupt it (as for a timeout).
    fn abandon_turn(&mut self, err: ApiError, ctx: &mut Context<Self>) {
        self.finish_turn(None, TurnOutcome::Failed(err), ctx);
        if self.stopping.is_some() {
            return;
        }
        drop(self.control(json!({ "subtype": "interrupt" })));
        let grace = self.timer(ctx, INTERRUPT_GRACE, |act, ctx| {
            act.draining = None;
            log::warn!("session {}: the CLI ignored the interrupt of a timed-out turn; stopping it", act.id);
            act.begin_stop(StopReason::Unresponsive, ctx);
        });
        self.draining = Some(grace);
    }

    /// Ends an interrupted turn whose CLI will not send a result (killed, crashed, gone).
    fn end_interrupted_turn(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.turn.as_ref() else { return };
        let summary = TurnResult {
            text: turn.assistant_text.clone(),
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
        let tool_calls = turn.tool_calls.clone();
        self.finish_turn(Some(summary.clone()), TurnOutcome::Done { result: summary, tool_calls }, ctx);
    }

    /// Starts stopping the process: stdin closed (the CLI's cue to finish and exit), then the
    /// supervisor's ladder (grace, SIGTERM, grace, SIGKILL of the group).
    fn begin_stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(grace) = self.draining.take() {
            ctx.cancel_future(grace);
        }
        self.deny_pending("the session was closed", ctx);
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

    fn on_exit(&mut self, info: ExitInfo, ctx: &mut Context<Self>) {
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
            if act.unstored.is_empty() && act.ids_reserved {
                // All stored: the next actor may continue right after the last id.
                let release = PersistJob::ReleaseIds { ours: act.reserved_up_to, to: act.next_event_id - 1 };
                let _ = act.persist.push(release);
            }
            act.registry.do_send(Ended { session_id: act.id.clone(), generation: act.generation });
            ctx.stop();
        }));
    }

    /// Ready once the CLI answered `initialize` and the event ids are reserved.
    fn on_ready(&mut self) {
        if !(self.cli_ready && self.ids_reserved) || self.ready {
            return;
        }
        self.ready = true;
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
                act.next_event_id = floor + 1;
                act.handed_up_to = floor;
                act.reserved_up_to = floor + ID_BLOCK;
                act.ids_reserved = true;
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
                    act.cli_ready = true;
                    act.on_ready();
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
        // Dropping `process` (with its stop sender) makes the supervisor stop and reap the child
        // even if the actor ended unexpectedly.
        self.registry.do_send(Ended { session_id: self.id.clone(), generation: self.generation });
    }
}

impl StreamHandler<StdoutItem> for SessionActor {
    fn handle(&mut self, item: StdoutItem, ctx: &mut Context<Self>) {
        match item {
            StdoutItem::Message(message) => self.on_message(message, ctx),
            StdoutItem::Malformed(text) => {
                log::warn!("session {}: malformed line from the CLI skipped: {text}", self.id)
            }
            StdoutItem::TooLong => {
                log::error!("session {}: the CLI wrote a line over {MAX_LINE_BYTES} bytes", self.id);
                self.start_error.get_or_insert_with(|| "the CLI wrote a line over 64 MiB".into());
                if self.turn.is_some() {
                    let err = ApiError::CliFailed("the CLI broke the protocol (a line over 64 MiB)".into());
                    self.finish_turn(None, TurnOutcome::Failed(err), ctx);
                }
                self.begin_stop(StopReason::ProtocolError, ctx);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // stdout closed: the process is ending; `on_exit` follows once it is reaped.
    }
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
        if self.stopping.is_some() || self.stop_after_turn.is_some_and(|r| !r.spares_a_turn()) {
            return Box::pin(fut::ready(Err(TurnRefused::Gone)));
        }
        if self.turn.is_some() || self.reserved || self.committing.is_some() {
            return Box::pin(fut::ready(Err(TurnRefused::Api(ApiError::SessionBusy))));
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
            let idle_again = |act: &mut Self| {
                act.registry.do_send(Activity {
                    session_id: act.id.clone(),
                    generation: act.generation,
                    in_turn: false,
                })
            };
            let permit = match waited {
                Ok(permit) => permit,
                Err(e) => {
                    idle_again(act);
                    return Err(TurnRefused::Api(e));
                }
            };
            if act.stopping.is_some() {
                return Err(TurnRefused::Gone);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                idle_again(act);
                return Err(TurnRefused::Api(timed_out_while("waiting for the turn to start")));
            }
            let turn_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
            let (sink, events) = mpsc::channel(CLIENT_BUFFER);
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
                sink: Some(sink),
                streamed_since_block: false,
                assistant_text: String::new(),
                tool_calls: Vec::new(),
                interrupted: false,
                timers: vec![deadline_timer],
                _permit: permit,
            });
            act.set_status(SessionStatus::Busy);
            Ok(TurnStarted { turn_id: turn_id.to_string(), first_event_id: act.next_event_id, events })
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

/// Events of this session after `after` that are not yet confirmed stored (the follower's seam).
#[derive(Message)]
#[rtype(result = "Vec<Arc<SessionEvent>>")]
pub struct UnstoredEvents {
    pub after: i64,
}

impl Handler<UnstoredEvents> for SessionActor {
    type Result = MessageResult<UnstoredEvents>;

    fn handle(&mut self, msg: UnstoredEvents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.unstored.iter().filter(|e| e.id > msg.after).cloned().collect())
    }
}

/// An open tool-approval request, as `GET .../permissions` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingPermission {
    pub tool_name: String,
    pub tool_input: Value,
    pub asked_at: String,
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
        let pending = self
            .take_permission(&msg.request_id, ctx)
            .ok_or_else(|| ApiError::NotFound("No open permission request with this id".into()))?;
        if msg.allow {
            if msg.always
                && self.always_allowed.insert(pending.tool_name.clone())
                && self.persist.push(PersistJob::AllowTool(pending.tool_name.clone())).is_err()
            {
                log::warn!("session {}: storage is behind; always-allow kept for this process only", self.id);
            }
            self.answer_permission(&msg.request_id, Ok(msg.updated_input.unwrap_or(pending.tool_input)));
        } else {
            let why = msg.message.unwrap_or_else(|| "The user denied this tool use".into());
            self.answer_permission(&msg.request_id, Err(why));
        }
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
        MessageResult(self.permissions.iter().map(|(id, p)| (id.clone(), p.clone())).collect())
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

/// Whether the running turn may number one more event: two ids stay in hand for its final
/// frame and a `storage_unavailable` frame after it, and memory holds at most `MAX_UNSTORED`.
fn id_budget_left(next_event_id: i64, reserved_up_to: i64, unstored: usize) -> bool {
    next_event_id + 2 <= reserved_up_to && unstored < MAX_UNSTORED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_keeps_two_reserved_ids_for_its_end() {
        assert!(id_budget_left(1, ID_BLOCK, 0));
        assert!(id_budget_left(ID_BLOCK - 2, ID_BLOCK, 0));
        assert!(!id_budget_left(ID_BLOCK - 1, ID_BLOCK, 0), "the last two ids are for the final frames");
        assert!(!id_budget_left(ID_BLOCK + 5, ID_BLOCK, 0), "never past the reservation");
    }

    #[test]
    fn a_turn_stops_numbering_when_memory_holds_too_many_unstored_events() {
        assert!(id_budget_left(10, 100, MAX_UNSTORED - 1));
        assert!(!id_budget_left(10, 100, MAX_UNSTORED));
    }
}
