//! The registry actor: the one place that admits or refuses every launch (create, resume,
//! respawn) and every turn, and supervises all session actors. Each decision and its effect
//! happen in one message, so two requests racing for the last slot cannot both win.
//!
//! It also samples memory (the service plus every descendant process), evicts idle sessions
//! after `api.idle_session_timeout`, evicts least-recently-used idle sessions under memory
//! pressure (never one in a turn), and expires sessions past their TTL.
//!
//! It stays off the hot path: it runs on its own thread, the session actors on the
//! [`SessionThreads`] pool; a turn never waits on it (turn slots are a semaphore the actors
//! share), and a launch's blocking work runs elsewhere while its quota slot is reserved here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{Semaphore, watch};

use super::EventHub;
use super::session::{SessionActor, SessionSetup, Stop, StopReason};
use super::threads::SessionThreads;
use crate::cli::launch::{self, LaunchRequest, Launched};
use crate::cli::sandbox::Sandbox;
use crate::error::ApiError;
use crate::memory::{self, MemorySample, ProcessTable};
use crate::settings::Settings;
use crate::storage::{SessionRow, Storage};

/// Limits the registry enforces, read from the settings once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: u32,
    pub max_sessions_per_user: u32,
    pub max_concurrent_turns: u32,
    pub memory_limit_bytes: u64,
    pub check_interval: Duration,
    /// 0 = sessions never expire.
    pub ttl: Duration,
    /// 0 = never evict for idleness.
    pub idle_timeout: Duration,
    pub max_rss_bytes: u64,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            max_sessions: s.api.max_sessions,
            max_sessions_per_user: s.api.max_sessions_per_user,
            max_concurrent_turns: s.api.max_concurrent_requests,
            memory_limit_bytes: s.api.memory_limit_mb.saturating_mul(1024 * 1024),
            check_interval: Duration::from_secs(s.memory.check_interval),
            ttl: Duration::from_secs(s.session.ttl),
            idle_timeout: Duration::from_secs(s.api.idle_session_timeout),
            max_rss_bytes: s.cli.max_rss_mb.saturating_mul(1024 * 1024),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Admitted (it holds its quota slot) while its CLI is being prepared and forked.
    Launching,
    Live,
    /// Its process is being stopped; it holds no quota slot, and a new launch waits for it.
    Stopping,
}

struct Entry {
    user_id: String,
    /// Which launch of the session this is: messages of an older actor are ignored.
    generation: u64,
    /// `None` while launching.
    addr: Option<Addr<SessionActor>>,
    pid: u32,
    last_active: Instant,
    in_turn: bool,
    phase: Phase,
    /// When eviction last asked it to stop: the memory sample and the idle sweep can both
    /// run before its `Stopping` arrives, and must not ask (and log) twice.
    evict_asked: Option<Instant>,
    /// A stop asked for while launching, sent once the actor exists.
    stop_when_launched: Option<StopReason>,
    /// True once the launch ended (either way): requests that came meanwhile look again.
    launched: watch::Sender<bool>,
    ended: watch::Sender<bool>,
}

impl Entry {
    fn stop(&mut self, reason: StopReason) {
        match &self.addr {
            Some(addr) => addr.do_send(Stop { reason }),
            None => {
                self.stop_when_launched.get_or_insert(reason);
            }
        }
    }
}

pub struct Registry {
    limits: Limits,
    /// Canonical `user.base_dir` (resolved once at start-up).
    users_root: PathBuf,
    /// The confinement of every CLI, when children are confined.
    sandbox: Option<Arc<Sandbox>>,
    groups: Arc<crate::cli::orphans::GroupRecord>,
    metrics: Arc<crate::metrics::Metrics>,
    hub: Arc<EventHub>,
    settings: Arc<Settings>,
    storage: Storage,
    entries: HashMap<String, Entry>,
    next_generation: u64,
    /// `api.max_concurrent_requests`, shared by every session actor (FIFO, timed waits).
    turn_slots: Arc<Semaphore>,
    threads: Arc<SessionThreads>,
    memory: MemorySample,
    /// The process table of the last sample, for per-session memory.
    processes: ProcessTable,
    sampling: bool,
    sweeping: bool,
}

impl Registry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        hub: Arc<EventHub>,
        metrics: Arc<crate::metrics::Metrics>,
        groups: Arc<crate::cli::orphans::GroupRecord>,
        sandbox: Option<Arc<Sandbox>>,
        users_root: PathBuf,
        threads: Arc<SessionThreads>,
    ) -> Self {
        let limits = Limits::from_settings(&settings);
        // The first sample before serving (blocking is fine here): admission has a figure from
        // the first request on.
        let (memory, processes) = memory::sample();
        let slots = (limits.max_concurrent_turns as usize).min(Semaphore::MAX_PERMITS);
        Self {
            turn_slots: Arc::new(Semaphore::new(slots)),
            threads,
            next_generation: 0,
            sampling: false,
            users_root,
            sandbox,
            groups,
            metrics,
            hub,
            limits,
            settings,
            storage,
            entries: HashMap::new(),
            memory,
            processes,
            sweeping: false,
        }
    }

    /// Sessions holding a quota slot: live, or admitted and launching.
    fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.phase != Phase::Stopping).count()
    }

    fn live_of_user(&self, user_id: &str) -> u32 {
        self.entries.values().filter(|e| e.phase != Phase::Stopping && e.user_id == user_id).count() as u32
    }

    fn turns_running(&self) -> usize {
        (self.limits.max_concurrent_turns as usize).saturating_sub(self.turn_slots.available_permits())
    }

    /// The entry of this launch of the session, if it is still the current one.
    fn current(&mut self, session_id: &str, generation: u64) -> Option<&mut Entry> {
        self.entries.get_mut(session_id).filter(|e| e.generation == generation)
    }

    /// Admission of a session that has no live actor, then its launch. Admission and the
    /// reservation of its slot happen in this one message, so two requests racing for the
    /// last slot cannot both win; the launch's blocking work then runs off this thread, and
    /// its end confirms the slot (the actor starts) or releases it.
    fn launch_new(&mut self, msg: Launch, ctx: &mut Context<Self>) -> ResponseActFuture<Self, LaunchResult> {
        if let Err(refusal) = self.admit(&msg.row.user_id) {
            return Box::pin(fut::ready(Err(refusal.into())));
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let row = msg.row;
        let (launched, _) = watch::channel(false);
        let (ended, _) = watch::channel(false);
        self.entries.insert(
            row.session_id.clone(),
            Entry {
                user_id: row.user_id.clone(),
                generation,
                addr: None,
                pid: 0,
                last_active: Instant::now(),
                in_turn: false,
                phase: Phase::Launching,
                evict_asked: None,
                stop_when_launched: None,
                launched,
                ended,
            },
        );
        let thread = self.threads.pick();
        let request = LaunchRequest {
            session_id: row.session_id.clone(),
            user_id: row.user_id.clone(),
            cli_session_id: row.cli_session_id.clone(),
            cwd: row.cwd.clone(),
            cwd_handle: msg.cwd,
            options: row.options.clone(),
            settings: self.settings.clone(),
            users_root: self.users_root.clone(),
            sandbox: self.sandbox.clone(),
            groups: self.groups.clone(),
            credentials: msg.credentials,
        };
        let me = ctx.address();
        let started = launch::launch(request, thread.runtime.clone());
        Box::pin(started.into_actor(self).map(move |result, act, _| {
            let launched = match result {
                Ok(launched) => launched,
                Err(e) => {
                    // Released: the slot is free again, and whoever waited looks again.
                    if let Some(entry) = act.entries.remove(&row.session_id) {
                        let _ = entry.launched.send(true);
                        let _ = entry.ended.send(true);
                    }
                    return Err(e);
                }
            };
            let Launched { child, tmp_dir, always_allowed } = launched;
            let pid = child.pid;
            let setup = SessionSetup {
                session_id: row.session_id.clone(),
                cli_session_id: row.cli_session_id.clone(),
                user_id: row.user_id.clone(),
                last_event_id: row.last_event_id,
                total_cost_usd: row.total_cost_usd,
                tmp_dir,
                always_allowed,
                generation,
                turn_slots: act.turn_slots.clone(),
            };
            let (storage, settings, hub, metrics) =
                (act.storage.clone(), act.settings.clone(), act.hub.clone(), act.metrics.clone());
            let addr = SessionActor::start_in_arbiter(&thread.arbiter, move |_| {
                SessionActor::new(setup, child, me, storage, settings, hub, metrics)
            });
            let Some(entry) = act.current(&row.session_id, generation) else {
                // Cannot happen (only `Ended` of this generation removes it); never orphan a CLI.
                addr.do_send(Stop { reason: StopReason::Closed });
                return Err(ApiError::Internal("the session's launch lost its place".into()));
            };
            entry.addr = Some(addr.clone());
            entry.pid = pid;
            entry.last_active = Instant::now();
            if entry.phase == Phase::Launching {
                entry.phase = Phase::Live;
            }
            if let Some(reason) = entry.stop_when_launched.take() {
                addr.do_send(Stop { reason });
            }
            let _ = entry.launched.send(true);
            Ok(addr)
        }))
    }

    /// Memory and quotas, counting sessions being launched.
    fn admit(&self, user_id: &str) -> Result<(), Refusal> {
        if self.memory.total_bytes() >= self.limits.memory_limit_bytes {
            self.metrics.refused("memory_pressure");
            return Err(Refusal::Memory {
                used_mb: self.memory.total_mb(),
                limit_mb: self.limits.memory_limit_bytes / (1024 * 1024),
                retry_after_secs: self.limits.check_interval.as_secs().max(1),
            });
        }
        if self.live_count() as u32 >= self.limits.max_sessions {
            self.metrics.refused("quota_global");
            return Err(Refusal::GlobalCap { max: self.limits.max_sessions });
        }
        if self.live_of_user(user_id) >= self.limits.max_sessions_per_user {
            self.metrics.refused("quota_user");
            return Err(Refusal::UserCap { max: self.limits.max_sessions_per_user });
        }
        Ok(())
    }

    fn retire(&mut self, session_id: &str, reason: StopReason) {
        if let Some(entry) = self.entries.get_mut(session_id) {
            entry.phase = Phase::Stopping;
            entry.stop(reason);
        }
    }

    /// Idle sessions past `api.idle_session_timeout`, and the least recently used idle ones
    /// while memory is at the limit.
    fn evict(&mut self) {
        let now = Instant::now();
        let mut idle: Vec<(&String, &Entry)> =
            self.entries.iter().filter(|(_, e)| e.phase == Phase::Live && e.addr.is_some() && !e.in_turn).collect();
        idle.sort_by_key(|(_, e)| e.last_active);
        let mut victims: Vec<(String, StopReason)> = Vec::new();
        if !self.limits.idle_timeout.is_zero() {
            for (id, e) in &idle {
                if now.duration_since(e.last_active) >= self.limits.idle_timeout {
                    victims.push(((*id).clone(), StopReason::IdleEviction));
                }
            }
        }
        let total = self.memory.total_bytes();
        if total >= self.limits.memory_limit_bytes {
            let target = self.limits.memory_limit_bytes / 10 * 9;
            let mut expected = total;
            for (id, e) in &idle {
                if expected < target {
                    break;
                }
                if !victims.iter().any(|(v, _)| v == *id) {
                    victims.push(((*id).clone(), StopReason::MemoryEviction));
                }
                expected = expected.saturating_sub(self.processes.tree_rss(e.pid));
            }
        }
        for (id, reason) in victims {
            // The actor refuses if a turn started meanwhile; it reports back with `Stopping`.
            // Asked already, no turn since and recently: its `Stopping` is on its way (its
            // memory is still counted above). Asked a check ago and still live: it refused.
            let interval = self.limits.check_interval;
            if let Some(e) = self.entries.get_mut(&id)
                && !e.evict_asked.is_some_and(|asked| asked >= e.last_active && now - asked < interval)
            {
                log::info!("session {id}: evicting ({reason:?})");
                e.evict_asked = Some(now);
                e.stop(reason);
            }
        }
    }

    /// Takes a memory sample off this thread, then acts on it (see [`Registry::apply_sample`]).
    /// One at a time: a tick that finds one under way is skipped.
    fn sample_memory(&mut self, ctx: &mut Context<Self>) {
        if self.sampling {
            return;
        }
        self.sampling = true;
        ctx.spawn(memory::sample_off_thread().into_actor(self).map(|sample, act, _| {
            act.sampling = false;
            act.apply_sample(sample);
        }));
    }

    /// Restarts (after their turn) CLIs above `cli.max_rss_mb`, and evicts under pressure.
    fn apply_sample(&mut self, (memory, processes): (MemorySample, ProcessTable)) {
        (self.memory, self.processes) = (memory, processes);
        for (id, e) in &self.entries {
            let rss = self.processes.tree_rss(e.pid);
            if e.phase == Phase::Live
                && rss > self.limits.max_rss_bytes
                && let Some(addr) = &e.addr
            {
                log::info!("session {id}: CLI uses {} MiB, restarting it after its turn", rss >> 20);
                addr.do_send(Stop { reason: StopReason::TooLarge });
            }
        }
        self.evict();
    }

    fn sweep_expired(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping || self.limits.ttl.is_zero() {
            return;
        }
        self.sweeping = true;
        let cutoff = crate::clock::now_ms() - self.limits.ttl.as_millis() as i64;
        let storage = self.storage.clone();
        let sweep = async move { storage.expire_sessions_inactive_since(cutoff).await };
        ctx.spawn(sweep.into_actor(self).map(|result, act, _| {
            act.sweeping = false;
            match result {
                Ok(expired) => {
                    for id in &expired {
                        act.retire(id, StopReason::Expired);
                    }
                    if !expired.is_empty() {
                        log::info!("expired {} session(s) past session.ttl", expired.len());
                    }
                }
                Err(e) => log::warn!("ttl sweep failed: {e}"),
            }
        }));
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        ctx.run_interval(self.limits.check_interval, |act, ctx| act.sample_memory(ctx));
        if !self.limits.idle_timeout.is_zero() {
            let every = (self.limits.idle_timeout / 4).clamp(Duration::from_millis(250), self.limits.check_interval);
            ctx.run_interval(every, |act, _| act.evict());
        }
        if !self.limits.ttl.is_zero() {
            let every = (self.limits.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            ctx.run_interval(every, |act, ctx| act.sweep_expired(ctx));
        }
    }
}

/// Why a launch was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    GlobalCap { max: u32 },
    UserCap { max: u32 },
    Memory { used_mb: u64, limit_mb: u64, retry_after_secs: u64 },
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::GlobalCap { max } => ApiError::QuotaExceeded {
                message: format!("The service runs its maximum of {max} live sessions"),
                retry_after_secs: 10,
            },
            Refusal::UserCap { max } => ApiError::QuotaExceeded {
                message: format!("You have the maximum of {max} live sessions; close one first"),
                retry_after_secs: 10,
            },
            Refusal::Memory { used_mb, limit_mb, retry_after_secs } => ApiError::MemoryPressure {
                message: format!("Memory in use ({used_mb} MiB) is at the limit ({limit_mb} MiB)"),
                retry_after_secs,
            },
        }
    }
}

/// The live actor of a session, launching its CLI if it has none (create, resume, respawn).
#[derive(Message)]
#[rtype(result = "Result<Addr<SessionActor>, ApiError>")]
pub struct Launch {
    pub row: SessionRow,
    /// The session's working directory, opened and checked beneath the user's directory.
    pub cwd: std::os::fd::OwnedFd,
    /// Read only if a CLI is started.
    pub credentials: Arc<dyn crate::cli::launch::UserEnv>,
}

type LaunchResult = Result<Addr<SessionActor>, ApiError>;

impl Handler<Launch> for Registry {
    type Result = ResponseActFuture<Self, LaunchResult>;

    fn handle(&mut self, msg: Launch, ctx: &mut Context<Self>) -> Self::Result {
        let me = ctx.address();
        match self.entries.get_mut(&msg.row.session_id) {
            Some(Entry { phase: Phase::Live, addr: Some(addr), last_active, .. }) => {
                *last_active = Instant::now();
                let addr = addr.clone();
                Box::pin(async move { Ok(addr) }.into_actor(self))
            }
            Some(entry) if entry.phase == Phase::Launching => {
                // Another request is launching it: wait for that, then look again.
                let mut launched = entry.launched.subscribe();
                Box::pin(
                    async move {
                        let _ = launched.wait_for(|done| *done).await;
                        me.send(msg).await?
                    }
                    .into_actor(self),
                )
            }
            Some(entry) => {
                // One process per session: wait for the old one to be reaped, then launch again.
                let mut ended = entry.ended.subscribe();
                let wait = self.settings.cli.stop_grace * 2 + 2;
                Box::pin(
                    async move {
                        let _ = tokio::time::timeout(Duration::from_secs(wait), ended.wait_for(|done| *done)).await;
                        me.send(msg).await?
                    }
                    .into_actor(self),
                )
            }
            None => self.launch_new(msg, ctx),
        }
    }
}

/// The live actor of a session, if it has one.
#[derive(Message)]
#[rtype(result = "Option<Addr<SessionActor>>")]
pub struct Lookup {
    pub session_id: String,
}

impl Handler<Lookup> for Registry {
    type Result = Option<Addr<SessionActor>>;

    fn handle(&mut self, msg: Lookup, _: &mut Context<Self>) -> Self::Result {
        self.entries.get(&msg.session_id).filter(|e| e.phase == Phase::Live).and_then(|e| e.addr.clone())
    }
}

/// Stop these sessions' processes (closed, purged, expired, user deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire {
    pub session_ids: Vec<String>,
    pub reason: StopReason,
}

impl Handler<Retire> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Retire, _: &mut Context<Self>) {
        for id in &msg.session_ids {
            self.retire(id, msg.reason);
        }
    }
}

// The session actors' reports carry the generation of their launch: actors run on several
// threads, so a late report of an old actor (its second `Ended`, from `stopped()`) can arrive
// after the session was launched again, and must not touch the new entry.

/// From a session actor: it has started stopping (its slot is free).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stopping {
    pub session_id: String,
    pub generation: u64,
}

impl Handler<Stopping> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Stopping, _: &mut Context<Self>) {
        if let Some(e) = self.current(&msg.session_id, msg.generation) {
            e.phase = Phase::Stopping;
        }
    }
}

/// From a session actor: its process is reaped and the actor is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ended {
    pub session_id: String,
    pub generation: u64,
}

impl Handler<Ended> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
        if self.current(&msg.session_id, msg.generation).is_none() {
            return;
        }
        if let Some(e) = self.entries.remove(&msg.session_id) {
            // The record is a file rewrite: not on this thread.
            let groups = self.groups.clone();
            tokio::task::spawn_blocking(move || groups.remove(e.pid as i32));
            let _ = e.ended.send(true);
        }
    }
}

/// From a session actor: a turn started or ended (for idle and LRU eviction).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Activity {
    pub session_id: String,
    pub generation: u64,
    pub in_turn: bool,
}

impl Handler<Activity> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Activity, _: &mut Context<Self>) {
        if let Some(e) = self.current(&msg.session_id, msg.generation) {
            e.last_active = Instant::now();
            e.in_turn = msg.in_turn;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryStats {
    pub live_sessions: usize,
    pub processes: Vec<u32>,
    pub turns_running: usize,
    pub memory: MemorySample,
}

#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

impl Handler<GetStats> for Registry {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RegistryStats {
            live_sessions: self.live_count(),
            processes: self.entries.values().map(|e| e.pid).filter(|pid| *pid != 0).collect(),
            turns_running: self.turns_running(),
            memory: self.memory,
        })
    }
}

/// Changes `api.memory_limit_mb` at run time (an operator lowering the limit on a busy host;
/// the tests use it to create pressure on demand) and acts on it at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetMemoryLimit {
    pub mb: u64,
}

impl Handler<SetMemoryLimit> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    /// Answers once a fresh sample has been acted on.
    fn handle(&mut self, msg: SetMemoryLimit, _: &mut Context<Self>) -> Self::Result {
        self.limits.memory_limit_bytes = msg.mb.saturating_mul(1024 * 1024);
        Box::pin(memory::sample_off_thread().into_actor(self).map(|sample, act, _| act.apply_sample(sample)))
    }
}

/// Server shutdown: stop every session's process and wait until all are reaped. `forced`
/// (a second signal) skips the graces: SIGTERM and SIGKILL at once, then reap.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub forced: bool,
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let reason = if msg.forced { StopReason::ForcedShutdown } else { StopReason::Shutdown };
        let waits: Vec<watch::Receiver<bool>> = self
            .entries
            .values_mut()
            .map(|e| {
                e.phase = Phase::Stopping;
                e.stop(reason);
                e.ended.subscribe()
            })
            .collect();
        let limit = Duration::from_secs(self.settings.cli.stop_grace * 2 + 5);
        Box::pin(async move {
            let all = futures_util::future::join_all(waits.into_iter().map(|mut rx| async move {
                let _ = rx.wait_for(|done| *done).await;
            }));
            let _ = tokio::time::timeout(limit, all).await;
        })
    }
}
