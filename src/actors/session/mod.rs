//! One actor per live session. It owns the session's CLI process (through [`CliProcess`]): the
//! stdin writer, the stdout stream, the current turn and its numbered events. Turns are
//! strictly sequential. The actor lives exactly as long as its process: when the process ends
//! (close, eviction, crash, shutdown) the actor records why, tells the registry and stops.
//!
//! Split by idea: `lifecycle` (start, readiness, stop, exit), `turn` (a turn from its result
//! to its stored record), `event_log` (numbering, delivery and storage of events),
//! `translate` (the CLI's content messages as frames), `permissions` (tool approvals),
//! `messages` (what the handles send).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};

use super::EventHub;
use super::event::TurnOutcome;
use super::persist::{self, PersistJob};
use super::registry::Registry;
use crate::cli::priority::CliPriority;
use crate::cli::process::{CliProcess, MAX_LINE_BYTES, StdoutItem};
use crate::cli::protocol::{CliMessage, ControlError, OutgoingControlRequest, OutgoingControlResponse, to_line};
use crate::domain::{AgentInfo, SessionStatus};
use crate::error::ApiError;
use crate::settings::Settings;
use crate::storage::Storage;

mod event_log;
mod lifecycle;
mod messages;
mod permissions;
mod queue;
mod rewind;
mod translate;
mod turn;

use event_log::EventLog;
pub use lifecycle::{Stop, StopReason};
pub use messages::{
    AnswerPermission, BudgetLeft, GetAgentInfo, GetContextUsage, Interrupt, ListPermissions, PendingTimers, SetLive,
    StartTurn, TurnBudget, TurnRefused, TurnStarted, UnstoredEvents,
};
pub use permissions::PendingPermission;
use permissions::PermissionBroker;
pub use queue::{Admit, CancelQueued, ClearQueue, ListQueue, QueuedMessage, Submit, SubmitMode, Submitted, not_queued};
pub use rewind::{RewindCommit, RewindFiles};
use turn::{CostMeter, Turn};

/// How long the CLI may take to answer a settings change or a context-usage question.
const SETTINGS_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The CLI's `--max-budget-usd`, if it has one.
    pub max_budget_usd: Option<f64>,
    /// Which launch of the session this actor is (its reports to the registry carry it).
    pub generation: u64,
    /// `api.max_concurrent_requests` turn slots, shared by every session.
    pub turn_slots: Arc<Semaphore>,
    /// The newest event ids stored so far (newest first, at most `events.replay`).
    pub stored_event_ids: Vec<i64>,
    /// In a cluster: where the writer gives the session's lease back once it is done.
    pub cluster: Option<Arc<crate::actors::cluster::Cluster>>,
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
    /// The CLI exited: the actor only waits for its last events to be stored, and a turn
    /// handed to it is `Gone` (the caller starts a new CLI).
    exited: bool,
    ready_waiters: Vec<oneshot::Sender<Result<(), ApiError>>>,
    /// A turn request is waiting for a slot or for readiness.
    reserved: bool,
    turn: Option<Turn>,
    controls: HashMap<String, oneshot::Sender<Result<Value, ControlError>>>,
    control_seq: u64,
    /// What the session has spent (the stored total plus this process's turns).
    cost: CostMeter,
    /// The CLI's `--max-budget-usd`, and the session's total when it started: what it may
    /// still spend is the first less what the total grew by since.
    budget_cap: Option<f64>,
    cost_at_start: f64,
    stopping: Option<StopReason>,
    /// A stop that waits for the running turn to end.
    stop_after_turn: Option<StopReason>,
    /// What went wrong before the CLI became ready (e.g. a failed resume).
    start_error: Option<String>,
    hub: Arc<EventHub>,
    metrics: Arc<crate::metrics::Metrics>,
    /// What the CLI reported at the start of its last turn.
    agent_info: Option<AgentInfo>,
    /// Open `can_use_tool` requests, each with the timer that denies it, and the tools the
    /// session always allows.
    permissions: PermissionBroker<SpawnHandle>,
    /// The CLI is still in a turn that timed out (its client already has its 504): the grace
    /// timer after which it is stopped. A new turn does not wait for it (see `StartTurn`).
    draining: Option<SpawnHandle>,
    /// Every timer's closure holds a clone: the count of clones is the number of timers actix
    /// still holds (it drops fired and cancelled ones). See [`PendingTimers`].
    timer_probe: Arc<()>,
    /// The events' ids, and those not yet stored.
    log: EventLog,
    flush_scheduled: bool,
    replay_keep: i64,
    /// The CLI answered `initialize`; `ready` once the event ids are reserved as well.
    cli_ready: bool,
    /// The last turn's end waits for its commit (no new turn starts meanwhile, so its
    /// final frame keeps its place in the numbering); resolves once its frame is delivered.
    committing: Option<oneshot::Receiver<()>>,
    /// Messages for after the running turn (`mode: "queue"`), next first.
    queue: queue::Queue,
    /// Events of no turn (a dropped message's) that wait for the last turn's final frame.
    deferred: Vec<(Arc<str>, String)>,
    /// The CLI's CPU priority: lowered while nothing waits for it (`cli.idle_nice`).
    priority: CliPriority,
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
            permissions: PermissionBroker::new(setup.always_allowed.iter().cloned()),
            draining: None,
            timer_probe: Arc::new(()),
            log: EventLog::new(setup.last_event_id, ID_BLOCK).after_stored(setup.stored_event_ids),
            flush_scheduled: false,
            cli_ready: false,
            committing: None,
            queue: Default::default(),
            deferred: Vec::new(),
            replay_keep: settings.events.replay as i64,
            priority: CliPriority::new(settings.cli.idle_nice),
            persist: persist::start(storage, setup.session_id.clone(), settings.budgets.clone(), setup.cluster),
            id: setup.session_id,
            cli_session_id: setup.cli_session_id,
            generation: setup.generation,
            turn_slots: setup.turn_slots,
            registry,
            settings,
            process,
            tmp_dir: setup.tmp_dir,
            ready: false,
            exited: false,
            ready_waiters: Vec::new(),
            reserved: false,
            turn: None,
            controls: HashMap::new(),
            control_seq: 0,
            cost: CostMeter::new(setup.total_cost_usd),
            budget_cap: setup.max_budget_usd,
            cost_at_start: setup.total_cost_usd,
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
    fn control(&mut self, request: Value) -> oneshot::Receiver<Result<Value, ControlError>> {
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

    /// Queues `permission.requested` on the writer (the tool's input counts as the
    /// conversation's text: only hooks with `include_text` get it).
    fn webhook_permission_requested(&self, request_id: &str, tool_name: &str, input: &Value) {
        let mut data = serde_json::Map::new();
        data.insert("turn_id".into(), self.turn.as_ref().map(|t| t.id.to_string()).into());
        data.insert("request_id".into(), request_id.into());
        data.insert("tool_name".into(), tool_name.into());
        let mut text = serde_json::Map::new();
        text.insert("tool_input".into(), input.clone());
        let event = crate::domain::webhooks::WebhookEvent::PermissionRequested;
        let (message_id, at) = (crate::storage::message_id(), crate::clock::now_ms());
        if self.persist.push(PersistJob::Webhook { event, message_id, at, data, text }).is_err() {
            log::warn!("session {}: storage is behind; webhook event {} dropped", self.id, event.as_str());
        }
    }

    fn on_message(&mut self, message: CliMessage, ctx: &mut Context<Self>) {
        match message {
            CliMessage::ControlResponse(r) => {
                let body = r.response;
                if let Some(waiter) = self.controls.remove(&body.request_id) {
                    let _ = waiter.send(body.into_result());
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
            CliMessage::CommandLifecycle { command_uuid, state } => self.on_lifecycle(&command_uuid, &state, ctx),
            CliMessage::Unknown => {}
            content @ (CliMessage::StreamEvent(_) | CliMessage::Assistant(_) | CliMessage::User(_)) => {
                let Some(turn) = self.turn.as_mut() else { return };
                if let CliMessage::Assistant(a) = &content
                    && a.parent_tool_use_id.is_none()
                    && let Some(uuid) = &a.uuid
                {
                    turn.leaf_uuid = Some(uuid.clone());
                }
                for frame in translate::frames(&content, &mut turn.transcript) {
                    self.emit(frame, None, ctx);
                }
            }
            CliMessage::Result(result) => self.on_result(result, ctx),
        }
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
