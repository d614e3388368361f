//! The registry actor: the one place that admits or refuses every launch (create, resume,
//! respawn) and every turn, and supervises all session actors. Each decision and its effect
//! happen in one message, so two requests racing for the last slot cannot both win.
//!
//! Admitted launches wait in a queue for one of `cli.max_concurrent_starts` start permits
//! (held until the CLI is ready, and through a first turn a message waited for, up to
//! `cli.start_holds_first_turn_ms`), a launch a message waits for first. Memory is counted
//! per CLI: what it measured at the last sample once ready, the mean of the measured ones
//! while it starts; a launch that does not fit makes the least-recently-used idle sessions
//! stop and waits (up to `api.queue_timeout`) until their stop has begun: it starts beside
//! their exit rather than after their reap.
//!
//! It also samples memory (the service plus every descendant process), evicts idle sessions
//! after `api.idle_session_timeout`, evicts least-recently-used idle sessions under memory
//! pressure (never one in a turn), and expires sessions past their TTL.
//!
//! It stays off the hot path: it runs on its own thread, the session actors on the
//! [`SessionThreads`] pool; a turn never waits on it (turn slots are a semaphore the actors
//! share), and a launch's blocking work runs elsewhere while its quota slot is reserved here.
//!
//! Split by idea: `admission` (the pure rules: start order, memory counted, who makes room),
//! `starts` (admitted launches from the queue to a live actor), `eviction` (memory samples,
//! idle and memory eviction, TTL expiry), `messages` (what the handles and the actors send).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::EventHub;
use super::session::{SessionActor, Stop, StopReason};
use super::threads::SessionThreads;
use crate::cli::sandbox::Sandbox;
use crate::error::ApiError;
use crate::memory::{self, MemorySample, ProcessTable};
use crate::settings::Settings;
use crate::storage::Storage;

pub mod admission;
mod eviction;
mod messages;
mod starts;

use admission::{CliEstimate, StartQueue, StartStage};
pub use messages::{
    Activity, Ended, GetStats, Launch, Lookup, Ready, RegistryStats, Retire, SetMemoryLimit, Shutdown, Stopping,
};
use starts::PendingLaunch;

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
    /// How long an admitted launch may wait for room and a start permit.
    pub queue_timeout: Duration,
    /// `cli.start_holds_first_turn_ms`.
    pub start_hold: Duration,
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
            queue_timeout: Duration::from_secs(s.api.queue_timeout),
            start_hold: Duration::from_millis(s.cli.start_holds_first_turn_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Admitted (it holds its quota slot): queued for a start, or being prepared and forked.
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
    /// Waiting in the start queue (no process yet, no memory counted).
    queued: bool,
    /// The CLI answered `initialize` (its RSS is then what it measures).
    ready: bool,
    /// Tree RSS at the last sample taken after it was ready.
    measured: Option<u64>,
    /// Held from the fork until the CLI is ready, then through a first turn a message waited
    /// for (see [`admission::holds_start_permit`]), or until it is gone.
    start_permit: Option<OwnedSemaphorePermit>,
    /// A turn of this CLI has ended.
    turned: bool,
    /// Launched for a message that has not reached it yet: not evictable until its turn
    /// starts (or `api.queue_timeout` after it was ready).
    awaited_until: Option<Instant>,
    ready_at: Option<Instant>,
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
    /// Stopping, or asked to by an eviction within `interval` and no turn started since: its
    /// memory is on its way out. (An actor that refused, e.g. for a turn about to start, is
    /// counted as staying once `interval` passed.)
    fn leaving(&self, now: Instant, interval: Duration) -> bool {
        self.phase == Phase::Stopping
            || self.evict_asked.is_some_and(|asked| asked >= self.last_active && now - asked < interval)
    }

    /// Live, ready, between turns and not awaited by a message: may be stopped to make room.
    fn evictable(&self, now: Instant) -> bool {
        self.phase == Phase::Live
            && self.addr.is_some()
            && self.ready
            && !self.in_turn
            && self.awaited_until.is_none_or(|until| now >= until)
    }

    fn start_stage(&self, now: Instant) -> StartStage {
        match self.ready_at {
            _ if self.turned => StartStage::Done,
            Some(at) if self.in_turn => StartStage::FirstTurn(now.saturating_duration_since(at)),
            Some(at) => StartStage::Ready(now.saturating_duration_since(at)),
            None => StartStage::Starting,
        }
    }

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
    /// `cli.max_concurrent_starts`: CLIs between fork and `initialize` answered.
    starts: Arc<Semaphore>,
    start_queue: StartQueue<PendingLaunch>,
    estimate: CliEstimate,
    /// With several instances on one PostgreSQL: the leases every launch takes first.
    cluster: Option<Arc<crate::actors::cluster::Cluster>>,
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
        let starts = settings.cli.concurrent_starts().min(Semaphore::MAX_PERMITS);
        let estimate = CliEstimate::new(settings.memory.cli_rss_mb.saturating_mul(1024 * 1024));
        Self {
            starts: Arc::new(Semaphore::new(starts)),
            start_queue: StartQueue::default(),
            estimate,
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
            cluster: None,
        }
    }

    /// Launches take the session's lease in `cluster` first (see `actors::cluster`).
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::actors::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
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

    /// Quotas, counting sessions queued or being launched. Memory is the start queue's
    /// business: a launch short of it waits for room rather than being refused.
    fn admit(&self, user_id: &str) -> Result<(), Refusal> {
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

    /// Releases this launch's start permit once its stage no longer holds it, and lets the
    /// next launch start. Called at ready, when a turn starts or ends, and on timers after
    /// ready (the grace for a first message, the hold's end).
    fn review_start_permit(&mut self, session_id: &str, generation: u64, ctx: &mut Context<Self>) {
        let hold = self.limits.start_hold;
        let Some(e) = self.current(session_id, generation) else { return };
        if e.start_permit.is_some() && !admission::holds_start_permit(e.start_stage(Instant::now()), hold) {
            e.start_permit = None;
            self.pump(ctx);
        }
    }

    fn retire(&mut self, session_id: &str, reason: StopReason, ctx: &mut Context<Self>) {
        if self.entries.get(session_id).is_some_and(|e| e.queued)
            && let Some(queued) = self.start_queue.remove(session_id)
        {
            let gone = ApiError::CliFailed(format!("the session was stopped ({reason:?}) before its CLI started"));
            self.drop_queued(session_id, queued.item, Err(gone), ctx);
            return;
        }
        if let Some(entry) = self.entries.get_mut(session_id) {
            entry.phase = Phase::Stopping;
            entry.stop(reason);
        }
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
    Memory { used_mb: u64, cli_mb: u64, limit_mb: u64, retry_after_secs: u64 },
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
            Refusal::Memory { used_mb, cli_mb, limit_mb, retry_after_secs } => ApiError::MemoryPressure {
                message: format!(
                    "Memory in use ({used_mb} MiB) leaves no room for another CLI (~{cli_mb} MiB) under the \
                     limit ({limit_mb} MiB), and no idle session can make room"
                ),
                retry_after_secs,
            },
        }
    }
}
