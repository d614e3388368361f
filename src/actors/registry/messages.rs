//! What the handles (launch, look up, retire, stats, shutdown) and the session actors (their
//! reports) send the registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use super::admission::{self, Urgency};
use super::{Entry, Phase, Registry};
use crate::actors::session::{SessionActor, StopReason};
use crate::error::ApiError;
use crate::memory::{self, MemorySample};
use crate::storage::SessionRow;

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

pub(super) type LaunchResult = Result<Addr<SessionActor>, ApiError>;

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
        let Some(e) = self.current(&msg.session_id, msg.generation) else { return };
        e.ready = true;
        e.ready_at = Some(Instant::now());
        let hold = self.limits.start_hold;
        if !hold.is_zero() {
            // Looked at again when a first message had its time to arrive, and at the hold's end.
            for after in [admission::FIRST_MESSAGE_GRACE.min(hold), hold] {
                let (id, generation) = (msg.session_id.clone(), msg.generation);
                ctx.run_later(after, move |act, ctx| act.review_start_permit(&id, generation, ctx));
            }
        }
        self.review_start_permit(&msg.session_id, msg.generation, ctx);
        // Ready, it may be evicted to make room for a launch that waits.
        self.pump(ctx);
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
            } else {
                e.turned = true;
            }
            self.review_start_permit(&msg.session_id, msg.generation, ctx);
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
