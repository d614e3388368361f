//! The registry actor: the one place that admits or refuses every launch (create, resume,
//! respawn) and every turn, and supervises all session actors. Each decision and its effect
//! happen in one message, so two requests racing for the last slot cannot both win.
//!
//! Admitted launches wait in a queue for one of `cli.max_concurrent_starts` start permits
//! (held until the CLI answers `initialize`), a launch a message waits for first. Memory is
//! counted per CLI: what it measured at the last sample once ready, the mean of the measured
//! ones while it starts; a launch that does not fit makes the least-recently-used idle
//! sessions stop and waits (up to `api.queue_timeout`) until they are reaped.
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::EventHub;
pub mod admission;
use admission::{CliEstimate, Decision, Idle, Room, StartQueue, Urgency};
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
    /// How long an admitted launch may wait for room and a start permit.
    pub queue_timeout: Duration,
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
    /// Held from the fork until the CLI is ready (or gone).
    start_permit: Option<OwnedSemaphorePermit>,
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
}

/// A launch admitted and waiting for room and a start permit.
struct PendingLaunch {
    generation: u64,
    row: SessionRow,
    cwd: std::os::fd::OwnedFd,
    /// The user's own provider credentials, read only when the CLI is prepared.
    credentials: Arc<dyn crate::cli::launch::UserEnv>,
    reply: oneshot::Sender<LaunchResult>,
    timer: SpawnHandle,
    /// It last waited for memory (rather than for a start permit).
    short_of_memory: bool,
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

    /// Admission of a session that has no live actor: its quota slot is reserved in this one
    /// message (two requests racing for the last slot cannot both win), then it waits in the
    /// start queue for room and a start permit; the answer comes once its CLI is forked.
    fn launch_new(&mut self, msg: Launch, ctx: &mut Context<Self>) -> ResponseActFuture<Self, LaunchResult> {
        if let Err(refusal) = self.admit(&msg.row.user_id) {
            return Box::pin(fut::ready(Err(refusal.into())));
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let row = msg.row;
        let session_id = row.session_id.clone();
        let (launched, _) = watch::channel(false);
        let (ended, _) = watch::channel(false);
        self.entries.insert(
            session_id.clone(),
            Entry {
                user_id: row.user_id.clone(),
                generation,
                addr: None,
                pid: 0,
                last_active: Instant::now(),
                in_turn: false,
                phase: Phase::Launching,
                queued: true,
                ready: false,
                measured: None,
                start_permit: None,
                awaited_until: None,
                ready_at: None,
                evict_asked: None,
                stop_when_launched: None,
                launched,
                ended,
            },
        );
        let (reply, answer) = oneshot::channel();
        let id = session_id.clone();
        let timer = ctx.run_later(self.limits.queue_timeout, move |act, ctx| act.queue_timed_out(&id, generation, ctx));
        let pending = PendingLaunch {
            generation,
            row,
            cwd: msg.cwd,
            credentials: msg.credentials,
            reply,
            timer,
            short_of_memory: false,
        };
        self.start_queue.push(session_id, msg.urgency, pending);
        self.pump(ctx);
        Box::pin(
            async move { answer.await.unwrap_or_else(|_| Err(ApiError::Internal("the launch was dropped".into()))) }
                .into_actor(self),
        )
    }

    /// Starts queued launches while the next one fits in memory and a start permit is free;
    /// makes room for it by evicting idle sessions when it does not fit. Called whenever room
    /// or permits may have come free.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(next) = self.start_queue.peek() {
            let next_id = next.session_id.clone();
            match self.memory_decision() {
                Decision::Admit => {
                    let Ok(permit) = self.starts.clone().try_acquire_owned() else { return };
                    let Some(queued) = self.start_queue.pop() else { return };
                    self.start(queued.session_id, queued.urgency, queued.item, permit, ctx);
                }
                Decision::Refuse => {
                    if let Some(queued) = self.start_queue.pop() {
                        let refusal = self.memory_refusal();
                        self.drop_queued(&queued.session_id, queued.item, Err(refusal.into()), ctx);
                    }
                }
                decision => {
                    if let Some(q) = self.start_queue.get_mut(&next_id) {
                        q.item.short_of_memory = true;
                    }
                    if let Decision::Evict(victims) = decision {
                        let now = Instant::now();
                        for id in victims {
                            if let Some(e) = self.entries.get_mut(&id) {
                                log::info!(
                                    "session {id}: evicting (MemoryEviction) to make room for session {next_id}"
                                );
                                e.evict_asked = Some(now);
                                e.stop(StopReason::MemoryEviction);
                            }
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The memory picture of the next launch: every CLI that holds memory at what it measured
    /// (or the estimate while it starts), against `api.memory_limit_mb`.
    fn memory_decision(&self) -> Decision {
        let now = Instant::now();
        let (mut clis, mut freeing) = (0u64, 0u64);
        let mut idle = Vec::new();
        for (id, e) in self.entries.iter().filter(|(_, e)| !e.queued) {
            let bytes = self.estimate.cost(e.measured);
            clis = clis.saturating_add(bytes);
            if e.leaving(now, self.limits.check_interval) {
                freeing = freeing.saturating_add(bytes);
            } else if e.evictable(now) {
                idle.push(Idle { session_id: id.clone(), last_active: e.last_active, bytes });
            }
        }
        let room = Room {
            limit: self.limits.memory_limit_bytes,
            service: self.memory.service_bytes,
            clis,
            freeing,
            need: self.estimate.unmeasured(),
        };
        admission::decide(room, &idle)
    }

    /// Memory as counted for admission: the service and every CLI that holds memory.
    fn counted_bytes(&self) -> u64 {
        let clis: u64 = self.entries.values().filter(|e| !e.queued).map(|e| self.estimate.cost(e.measured)).sum();
        self.memory.service_bytes.saturating_add(clis)
    }

    fn memory_refusal(&self) -> Refusal {
        self.metrics.refused("memory_pressure");
        Refusal::Memory {
            used_mb: self.counted_bytes() / (1024 * 1024),
            cli_mb: self.estimate.unmeasured() / (1024 * 1024),
            limit_mb: self.limits.memory_limit_bytes / (1024 * 1024),
            retry_after_secs: self.limits.check_interval.as_secs().max(1),
        }
    }

    /// A queued launch that found neither room nor a start permit within `api.queue_timeout`.
    fn queue_timed_out(&mut self, session_id: &str, generation: u64, ctx: &mut Context<Self>) {
        if self.current(session_id, generation).is_none_or(|e| !e.queued) {
            return;
        }
        let Some(queued) = self.start_queue.remove(session_id) else { return };
        let err = if queued.item.short_of_memory {
            self.memory_refusal().into()
        } else {
            self.metrics.refused("overloaded");
            ApiError::Overloaded { retry_after_secs: 1 }
        };
        self.drop_queued(session_id, queued.item, Err(err), ctx);
    }

    /// Ends a queued launch without starting it: its slot is free, whoever waited looks again.
    fn drop_queued(&mut self, session_id: &str, pending: PendingLaunch, answer: LaunchResult, ctx: &mut Context<Self>) {
        ctx.cancel_future(pending.timer);
        if self.current(session_id, pending.generation).is_some()
            && let Some(entry) = self.entries.remove(session_id)
        {
            let _ = entry.launched.send(true);
            let _ = entry.ended.send(true);
        }
        let _ = pending.reply.send(answer);
    }

    /// Prepares and forks a queued launch off this thread; its end confirms the slot (the
    /// actor starts) or releases it.
    fn start(
        &mut self,
        session_id: String,
        urgency: Urgency,
        pending: PendingLaunch,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) {
        let PendingLaunch { generation, row, cwd, credentials, reply, timer, .. } = pending;
        ctx.cancel_future(timer);
        let Some(entry) = self.current(&session_id, generation) else {
            let _ = reply.send(Err(ApiError::Internal("the session's launch lost its place".into())));
            return;
        };
        entry.queued = false;
        entry.start_permit = Some(permit);
        let thread = self.threads.pick();
        let request = LaunchRequest {
            session_id: row.session_id.clone(),
            user_id: row.user_id.clone(),
            cli_session_id: row.cli_session_id.clone(),
            cwd: row.cwd.clone(),
            cwd_handle: cwd,
            options: row.options.clone(),
            settings: self.settings.clone(),
            users_root: self.users_root.clone(),
            sandbox: self.sandbox.clone(),
            groups: self.groups.clone(),
            credentials,
        };
        let me = ctx.address();
        let started = launch::launch(request, thread.runtime.clone());
        ctx.spawn(started.into_actor(self).map(move |result, act, ctx| {
            let answer = act.launched(row, generation, urgency, thread, me, result);
            let _ = reply.send(answer);
            act.pump(ctx);
        }));
    }

    /// The end of a launch's fork: the session actor starts on `thread`, or the slot is freed.
    fn launched(
        &mut self,
        row: SessionRow,
        generation: u64,
        urgency: Urgency,
        thread: super::threads::SessionThread,
        me: Addr<Self>,
        result: Result<Launched, ApiError>,
    ) -> LaunchResult {
        let launched = match result {
            Ok(launched) => launched,
            Err(e) => {
                // Released: the slot is free again, and whoever waited looks again.
                if self.current(&row.session_id, generation).is_some()
                    && let Some(entry) = self.entries.remove(&row.session_id)
                {
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
            turn_slots: self.turn_slots.clone(),
        };
        let (storage, settings, hub, metrics) =
            (self.storage.clone(), self.settings.clone(), self.hub.clone(), self.metrics.clone());
        let addr = SessionActor::start_in_arbiter(&thread.arbiter, move |_| {
            SessionActor::new(setup, child, me, storage, settings, hub, metrics)
        });
        let awaited_for = self.limits.queue_timeout;
        let Some(entry) = self.current(&row.session_id, generation) else {
            // Cannot happen (only `Ended` of this generation removes it); never orphan a CLI.
            addr.do_send(Stop { reason: StopReason::Closed });
            return Err(ApiError::Internal("the session's launch lost its place".into()));
        };
        entry.addr = Some(addr.clone());
        entry.pid = pid;
        entry.last_active = Instant::now();
        if urgency == Urgency::Turn {
            entry.awaited_until = Some(Instant::now() + awaited_for);
        }
        if entry.phase == Phase::Launching {
            entry.phase = Phase::Live;
        }
        if let Some(reason) = entry.stop_when_launched.take() {
            addr.do_send(Stop { reason });
        }
        let _ = entry.launched.send(true);
        Ok(addr)
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

    /// Idle sessions past `api.idle_session_timeout`, and the least recently used idle ones
    /// while memory as counted is at the limit (down to 90 % of it).
    fn evict(&mut self) {
        let now = Instant::now();
        let mut victims: Vec<(String, StopReason)> = Vec::new();
        if !self.limits.idle_timeout.is_zero() {
            for (id, e) in &self.entries {
                if e.evictable(now) && now.duration_since(e.last_active) >= self.limits.idle_timeout {
                    victims.push((id.clone(), StopReason::IdleEviction));
                }
            }
        }
        let counted = self.counted_bytes();
        if counted >= self.limits.memory_limit_bytes {
            let interval = self.limits.check_interval;
            let leaving: u64 = self
                .entries
                .values()
                .filter(|e| !e.queued && e.leaving(now, interval))
                .map(|e| self.estimate.cost(e.measured))
                .sum();
            let excess = counted.saturating_sub(leaving).saturating_sub(self.limits.memory_limit_bytes / 10 * 9);
            let idle: Vec<Idle> = self
                .entries
                .iter()
                .filter(|(_, e)| e.evictable(now) && !e.leaving(now, interval))
                .map(|(id, e)| Idle {
                    session_id: id.clone(),
                    last_active: e.last_active,
                    bytes: self.estimate.cost(e.measured),
                })
                .collect();
            // As many as it takes, or every idle one when even all of them do not cover it.
            let chosen = admission::least_recently_used_covering(&idle, excess)
                .unwrap_or_else(|| idle.iter().map(|i| i.session_id.clone()).collect());
            for id in chosen {
                if !victims.iter().any(|(v, _)| *v == id) {
                    victims.push((id, StopReason::MemoryEviction));
                }
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
        let taken = Instant::now();
        ctx.spawn(memory::sample_off_thread().into_actor(self).map(move |sample, act, ctx| {
            act.sampling = false;
            act.apply_sample(sample, taken);
            act.pump(ctx);
        }));
    }

    /// Records what each ready CLI uses (and learns the estimate for starting ones from them),
    /// restarts (after their turn) CLIs above `cli.max_rss_mb`, and evicts under pressure.
    /// `taken`: when the sample was asked for; a CLI ready only since is not measured yet.
    fn apply_sample(&mut self, (memory, processes): (MemorySample, ProcessTable), taken: Instant) {
        (self.memory, self.processes) = (memory, processes);
        let mut measured = Vec::new();
        for e in self.entries.values_mut() {
            if e.ready && e.pid != 0 && e.ready_at.is_some_and(|at| at <= taken) && self.processes.has(e.pid) {
                let rss = self.processes.tree_rss(e.pid);
                e.measured = Some(rss);
                measured.push(rss);
            }
        }
        self.estimate.learn(&measured);
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
        ctx.spawn(sweep.into_actor(self).map(|result, act, ctx| {
            act.sweeping = false;
            match result {
                Ok(expired) => {
                    for id in &expired {
                        act.retire(id, StopReason::Expired, ctx);
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

/// The live actor of a session, launching its CLI if it has none (create, resume, respawn).
#[derive(Message)]
#[rtype(result = "Result<Addr<SessionActor>, ApiError>")]
pub struct Launch {
    pub row: SessionRow,
    /// The session's working directory, opened and checked beneath the user's directory.
    pub cwd: std::os::fd::OwnedFd,
    /// Read only if a CLI is started.
    pub credentials: Arc<dyn crate::cli::launch::UserEnv>,
    /// Whether a message waits for this CLI (it then starts before those nobody waits for).
    pub urgency: Urgency,
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
                if msg.urgency == Urgency::Turn {
                    self.start_queue.promote(&msg.row.session_id);
                }
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

    fn handle(&mut self, msg: Retire, ctx: &mut Context<Self>) {
        for id in &msg.session_ids {
            self.retire(id, msg.reason, ctx);
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

    fn handle(&mut self, msg: Stopping, ctx: &mut Context<Self>) {
        if let Some(e) = self.current(&msg.session_id, msg.generation) {
            e.phase = Phase::Stopping;
            self.pump(ctx);
        }
    }
}

/// From a session actor: its CLI answered `initialize` (its start permit is free).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ready {
    pub session_id: String,
    pub generation: u64,
}

impl Handler<Ready> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Ready, ctx: &mut Context<Self>) {
        if let Some(e) = self.current(&msg.session_id, msg.generation) {
            e.ready = true;
            e.ready_at = Some(Instant::now());
            e.start_permit = None;
            self.pump(ctx);
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

    fn handle(&mut self, msg: Ended, ctx: &mut Context<Self>) {
        if self.current(&msg.session_id, msg.generation).is_none() {
            return;
        }
        if let Some(e) = self.entries.remove(&msg.session_id) {
            // The record is a file rewrite: not on this thread.
            let groups = self.groups.clone();
            tokio::task::spawn_blocking(move || groups.remove(e.pid as i32));
            let _ = e.ended.send(true);
        }
        // Its memory and its start permit (if it never got ready) are free.
        self.pump(ctx);
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

    fn handle(&mut self, msg: Activity, ctx: &mut Context<Self>) {
        if let Some(e) = self.current(&msg.session_id, msg.generation) {
            e.last_active = Instant::now();
            e.in_turn = msg.in_turn;
            if msg.in_turn {
                e.awaited_until = None;
            }
            if !self.start_queue.is_empty() {
                // Idle now, it may make room for a launch that waits; in a turn, it refused an
                // eviction, and another may have to go instead.
                self.pump(ctx);
            }
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
        let taken = Instant::now();
        Box::pin(memory::sample_off_thread().into_actor(self).map(move |sample, act, ctx| {
            act.apply_sample(sample, taken);
            act.pump(ctx);
        }))
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

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let reason = if msg.forced { StopReason::ForcedShutdown } else { StopReason::Shutdown };
        let queued: Vec<_> = self.start_queue.drain().collect();
        for q in queued {
            let gone = ApiError::CliFailed("the service is shutting down".into());
            self.drop_queued(&q.session_id, q.item, Err(gone), ctx);
        }
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
