//! The registry actor: the one place that admits or refuses every launch (create, resume,
//! respawn) and every turn, and supervises all session actors. Each decision and its effect
//! happen in one message, so two requests racing for the last slot cannot both win.
//!
//! It also samples memory (the service plus every descendant process), evicts idle sessions
//! after `api.idle_session_timeout`, evicts least-recently-used idle sessions under memory
//! pressure (never one in a turn), and expires sessions past their TTL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

use super::session::{SessionActor, SessionSetup, Stop, StopReason};
use crate::cli::command::{AgentOptions, SecretFiles, StartMode, build_args, build_env, transcript_path};
use crate::cli::process::{self, LaunchSpec};
use crate::cli::sandbox::Sandbox;
use crate::error::ApiError;
use crate::memory::{self, MemorySample, ProcessTable};
use crate::sessions::hub::EventHub;
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
    Live,
    /// Its process is being stopped; it holds no quota slot, and a new launch waits for it.
    Stopping,
}

struct Entry {
    user_id: String,
    addr: Addr<SessionActor>,
    pid: u32,
    last_active: Instant,
    phase: Phase,
    /// When eviction last asked it to stop: the memory sample and the idle sweep can both
    /// run before its `Stopping` arrives, and must not ask (and log) twice.
    evict_asked: Option<Instant>,
    ended: watch::Sender<bool>,
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
    turns_running: HashSet<String>,
    turn_waiters: VecDeque<(String, oneshot::Sender<TurnPermit>)>,
    memory: MemorySample,
    /// The process table of the last sample, for per-session memory.
    processes: ProcessTable,
    sweeping: bool,
}

impl Registry {
    pub fn new(
        settings: Arc<Settings>,
        storage: Storage,
        hub: Arc<EventHub>,
        metrics: Arc<crate::metrics::Metrics>,
        groups: Arc<crate::cli::orphans::GroupRecord>,
        sandbox: Option<Arc<Sandbox>>,
        users_root: PathBuf,
    ) -> Self {
        Self {
            users_root,
            sandbox,
            groups,
            metrics,
            hub,
            limits: Limits::from_settings(&settings),
            settings,
            storage,
            entries: HashMap::new(),
            turns_running: HashSet::new(),
            turn_waiters: VecDeque::new(),
            memory: MemorySample::default(),
            processes: ProcessTable::default(),
            sweeping: false,
        }
    }

    fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.phase == Phase::Live).count()
    }

    fn live_of_user(&self, user_id: &str) -> u32 {
        self.entries.values().filter(|e| e.phase == Phase::Live && e.user_id == user_id).count() as u32
    }

    /// Admission and spawn of a session that has no live actor, in one step.
    fn launch_new(
        &mut self,
        row: &SessionRow,
        cwd_handle: &std::os::fd::OwnedFd,
        me: Addr<Registry>,
    ) -> Result<Addr<SessionActor>, ApiError> {
        if self.memory.total_bytes() >= self.limits.memory_limit_bytes {
            self.metrics.refused("memory_pressure");
            return Err(Refusal::Memory {
                used_mb: self.memory.total_mb(),
                limit_mb: self.limits.memory_limit_bytes / (1024 * 1024),
                retry_after_secs: self.limits.check_interval.as_secs().max(1),
            }
            .into());
        }
        if self.live_count() as u32 >= self.limits.max_sessions {
            self.metrics.refused("quota_global");
            return Err(Refusal::GlobalCap { max: self.limits.max_sessions }.into());
        }
        if self.live_of_user(&row.user_id) >= self.limits.max_sessions_per_user {
            self.metrics.refused("quota_user");
            return Err(Refusal::UserCap { max: self.limits.max_sessions_per_user }.into());
        }
        let program = crate::cli::locate(&self.settings.cli.path).ok_or_else(|| {
            ApiError::CliFailed(format!("the claude CLI was not found at `{}` (cli.path)", self.settings.cli.path))
        })?;
        // Fail closed: the defaults may be laxer than what the session asked for (e.g.
        // `bypassPermissions` where it chose to be asked before each tool).
        let overrides: Map<String, Value> = serde_json::from_str(&row.options).map_err(|e| {
            ApiError::CliFailed(format!(
                "the session's stored options are unreadable ({e}); it is not started with the service defaults"
            ))
        })?;
        let cwd = PathBuf::from(&row.cwd);
        let user_dir = self.users_root.join(&row.user_id);
        let config_dir = user_dir.join(".claude");
        let tmp_dir = crate::cli::session_temp_dir(&row.session_id);
        private_dir(&tmp_dir).map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", tmp_dir.display())))?;
        std::fs::create_dir_all(&config_dir)
            .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", config_dir.display())))?;
        let options = AgentOptions::resolve(&self.settings, &overrides);
        let mode = if transcript_path(&config_dir, &row.cwd, &row.cli_session_id).is_some() {
            StartMode::Resume
        } else {
            StartMode::New
        };
        let files = SecretFiles::write(&tmp_dir, &options).map_err(|e| {
            ApiError::Internal(format!("cannot write the session's files in {}: {e}", tmp_dir.display()))
        })?;
        let args = build_args(&options, &self.settings.plugins, &row.cli_session_id, mode, &files);
        let env = build_env(std::env::vars(), &self.settings.cli.env, &config_dir, &tmp_dir);
        let spec = LaunchSpec { program: &program, args: &args, env: &env, cwd: &cwd, cwd_handle: Some(cwd_handle) };
        let label = format!("session {}", row.session_id);
        let confinement = match &self.sandbox {
            Some(sandbox) => {
                let mut read = crate::cli::sandbox::program_dirs(&program);
                for server in options.mcp_servers.values() {
                    if let Some(found) = server.get("command").and_then(Value::as_str).and_then(crate::cli::locate) {
                        read.extend(crate::cli::sandbox::program_dirs(&found));
                    }
                }
                Some(
                    sandbox
                        .ruleset(&read, &[user_dir.clone(), tmp_dir.clone()], options.mcp_servers.values())
                        .map_err(ApiError::Internal)?,
                )
            }
            None => None,
        };
        let child = process::spawn(&spec, &label, confinement)
            .map_err(|e| ApiError::CliFailed(format!("cannot start the claude CLI at {}: {e}", program.display())))?;
        log::info!("session {}: started the CLI (pid {}, {:?})", row.session_id, child.pid, mode);
        self.groups.add(child.pid as i32, &tmp_dir, crate::clock::now_ms());
        let pid = child.pid;
        let setup = SessionSetup {
            session_id: row.session_id.clone(),
            cli_session_id: row.cli_session_id.clone(),
            user_id: row.user_id.clone(),
            last_event_id: row.last_event_id,
            total_cost_usd: row.total_cost_usd,
            tmp_dir,
            always_allowed: options.allowed_tools.clone(),
        };
        let addr = SessionActor::new(
            setup,
            child,
            me,
            self.storage.clone(),
            self.settings.clone(),
            self.hub.clone(),
            self.metrics.clone(),
        )
        .start();
        let (ended, _) = watch::channel(false);
        self.entries.insert(
            row.session_id.clone(),
            Entry {
                user_id: row.user_id.clone(),
                addr: addr.clone(),
                pid,
                last_active: Instant::now(),
                phase: Phase::Live,
                evict_asked: None,
                ended,
            },
        );
        Ok(addr)
    }

    fn retire(&mut self, session_id: &str, reason: StopReason) {
        if let Some(entry) = self.entries.get_mut(session_id) {
            if entry.phase == Phase::Live {
                entry.phase = Phase::Stopping;
            }
            entry.addr.do_send(Stop { reason });
        }
    }

    /// Idle sessions past `api.idle_session_timeout`, and the least recently used idle ones
    /// while memory is at the limit.
    fn evict(&mut self) {
        let now = Instant::now();
        let mut idle: Vec<(&String, &Entry)> =
            self.entries.iter().filter(|(id, e)| e.phase == Phase::Live && !self.turns_running.contains(*id)).collect();
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
                e.addr.do_send(Stop { reason });
            }
        }
    }

    /// Takes a memory sample, restarts (after their turn) CLIs above `cli.max_rss_mb`, and
    /// evicts under pressure.
    fn sample_memory(&mut self) {
        (self.memory, self.processes) = memory::sample();
        for (id, e) in &self.entries {
            let rss = self.processes.tree_rss(e.pid);
            if e.phase == Phase::Live && rss > self.limits.max_rss_bytes {
                log::info!("session {id}: CLI uses {} MiB, restarting it after its turn", rss >> 20);
                e.addr.do_send(Stop { reason: StopReason::TooLarge });
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

    fn grant_turn_slots(&mut self, me: &Addr<Registry>) {
        while (self.turns_running.len() as u32) < self.limits.max_concurrent_turns {
            let Some((session_id, waiter)) = self.turn_waiters.pop_front() else { break };
            if waiter.is_closed() {
                continue; // gave up waiting
            }
            let permit = TurnPermit { session_id: session_id.clone(), registry: Some(me.clone()) };
            self.turns_running.insert(session_id);
            if let Err(mut permit) = waiter.send(permit) {
                // Dropped between the check and the send: give the slot back without a message.
                permit.registry = None;
                self.turns_running.remove(&permit.session_id);
            }
        }
    }
}

/// Creates `dir` and its parent (the temp root) readable by their owner only.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.sample_memory();
        ctx.run_interval(self.limits.check_interval, |act, _| act.sample_memory());
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
}

impl Handler<Launch> for Registry {
    type Result = ResponseActFuture<Self, Result<Addr<SessionActor>, ApiError>>;

    fn handle(&mut self, msg: Launch, ctx: &mut Context<Self>) -> Self::Result {
        let me = ctx.address();
        match self.entries.get_mut(&msg.row.session_id) {
            Some(entry) if entry.phase == Phase::Live => {
                entry.last_active = Instant::now();
                let addr = entry.addr.clone();
                Box::pin(async move { Ok(addr) }.into_actor(self))
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
            None => {
                let result = self.launch_new(&msg.row, &msg.cwd, me);
                Box::pin(async move { result }.into_actor(self))
            }
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
        self.entries.get(&msg.session_id).filter(|e| e.phase == Phase::Live).map(|e| e.addr.clone())
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

/// From a session actor: it has started stopping (its slot is free).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stopping {
    pub session_id: String,
}

impl Handler<Stopping> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Stopping, _: &mut Context<Self>) {
        if let Some(e) = self.entries.get_mut(&msg.session_id) {
            e.phase = Phase::Stopping;
        }
    }
}

/// From a session actor: its process is reaped and the actor is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ended {
    pub session_id: String,
}

impl Handler<Ended> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
        if let Some(e) = self.entries.remove(&msg.session_id) {
            self.groups.remove(e.pid as i32);
            let _ = e.ended.send(true);
        }
    }
}

/// From a session actor: a turn started or ended (for idle and LRU eviction).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Activity {
    pub session_id: String,
}

impl Handler<Activity> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Activity, _: &mut Context<Self>) {
        if let Some(e) = self.entries.get_mut(&msg.session_id) {
            e.last_active = Instant::now();
        }
    }
}

/// A slot of `api.max_concurrent_requests`, held for the length of one turn. Dropping it
/// gives the slot back.
#[derive(Debug)]
pub struct TurnPermit {
    session_id: String,
    registry: Option<Addr<Registry>>,
}

impl Drop for TurnPermit {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.do_send(ReleaseTurnSlot { session_id: std::mem::take(&mut self.session_id) });
        }
    }
}

/// Ask for a turn slot; the answer arrives on the receiver when one is free (the caller
/// bounds the wait with `api.queue_timeout`).
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<TurnPermit>")]
pub struct AcquireTurnSlot {
    pub session_id: String,
}

impl Handler<AcquireTurnSlot> for Registry {
    type Result = MessageResult<AcquireTurnSlot>;

    fn handle(&mut self, msg: AcquireTurnSlot, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.turn_waiters.push_back((msg.session_id, tx));
        self.grant_turn_slots(&ctx.address());
        MessageResult(rx)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ReleaseTurnSlot {
    session_id: String,
}

impl Handler<ReleaseTurnSlot> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ReleaseTurnSlot, ctx: &mut Context<Self>) {
        self.turns_running.remove(&msg.session_id);
        if let Some(e) = self.entries.get_mut(&msg.session_id) {
            e.last_active = Instant::now();
        }
        self.grant_turn_slots(&ctx.address());
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
            processes: self.entries.values().map(|e| e.pid).collect(),
            turns_running: self.turns_running.len(),
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
    type Result = ();

    fn handle(&mut self, msg: SetMemoryLimit, _: &mut Context<Self>) {
        self.limits.memory_limit_bytes = msg.mb.saturating_mul(1024 * 1024);
        self.sample_memory();
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
                e.addr.do_send(Stop { reason });
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
