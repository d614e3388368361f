//! Admitted launches, from the start queue to a live session actor: each waits for room in
//! memory (making it by evicting idle sessions) and for a start permit, then is prepared and
//! forked off the registry's thread.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::admission::{self, Decision, Idle, Room, Urgency};
use super::messages::{Launch, LaunchResult};
use super::{Entry, Phase, Refusal, Registry};
use crate::actors::session::{SessionActor, SessionSetup, Stop, StopReason};
use crate::actors::threads::SessionThread;
use crate::cli::launch::{self, LaunchRequest, Launched};
use crate::error::ApiError;
use crate::storage::{Lease, SessionRow};

/// A launch's fork: the row it started from (fresh after taking the lease), the lease, the CLI.
pub(super) type Started = (SessionRow, Option<Lease>, Vec<i64>, Launched);
/// A launch that failed, with what it held (a lease taken is given back).
pub(super) type NotStarted = (ApiError, SessionRow, Option<Lease>);

/// A launch admitted and waiting for room and a start permit.
pub(super) struct PendingLaunch {
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
    /// Admission of a session that has no live actor: its quota slot is reserved in this one
    /// message (two requests racing for the last slot cannot both win), then it waits in the
    /// start queue for room and a start permit; the answer comes once its CLI is forked.
    pub(super) fn launch_new(&mut self, msg: Launch, ctx: &mut Context<Self>) -> ResponseActFuture<Self, LaunchResult> {
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
                turned: false,
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
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn memory_decision(&self) -> Decision {
        let now = Instant::now();
        let (mut clis, mut freeing, mut exiting) = (0u64, 0u64, 0u64);
        let mut idle = Vec::new();
        for (id, e) in self.entries.iter().filter(|(_, e)| !e.queued) {
            let bytes = self.estimate.cost(e.measured);
            clis = clis.saturating_add(bytes);
            if e.leaving(now, self.limits.check_interval) {
                freeing = freeing.saturating_add(bytes);
                if e.phase == Phase::Stopping {
                    exiting = exiting.saturating_add(bytes);
                }
            } else if e.evictable(now) {
                idle.push(Idle { session_id: id.clone(), last_active: e.last_active, bytes });
            }
        }
        let room = Room {
            limit: self.limits.memory_limit_bytes,
            service: self.memory.service_bytes,
            clis,
            freeing,
            exiting,
            need: self.estimate.unmeasured(),
        };
        admission::decide(room, &idle)
    }

    /// Memory as counted for admission: the service and every CLI that holds memory.
    pub(super) fn counted_bytes(&self) -> u64 {
        let clis: u64 = self.entries.values().filter(|e| !e.queued).map(|e| self.estimate.cost(e.measured)).sum();
        self.memory.service_bytes.saturating_add(clis)
    }

    pub(super) fn memory_refusal(&self) -> Refusal {
        self.metrics.refused("memory_pressure");
        Refusal::Memory {
            used_mb: self.counted_bytes() / (1024 * 1024),
            cli_mb: self.estimate.unmeasured() / (1024 * 1024),
            limit_mb: self.limits.memory_limit_bytes / (1024 * 1024),
            retry_after_secs: self.limits.check_interval.as_secs().max(1),
        }
    }

    /// A queued launch that found neither room nor a start permit within `api.queue_timeout`.
    pub(super) fn queue_timed_out(&mut self, session_id: &str, generation: u64, ctx: &mut Context<Self>) {
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
    pub(super) fn drop_queued(
        &mut self,
        session_id: &str,
        pending: PendingLaunch,
        answer: LaunchResult,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn start(
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
        let cluster = self.cluster.clone();
        let (storage, keep) = (self.storage.clone(), self.settings.events.replay as i64);
        let mut request = LaunchRequest {
            session_id: row.session_id.clone(),
            user_id: row.user_id.clone(),
            cli_session_id: row.cli_session_id.clone(),
            fork_from: row.fork_from.clone(),
            resume_at: row.resume_at.clone(),
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
        let runtime = thread.runtime.clone();
        // In a cluster the lease comes first: the CLI starts only on the instance that took
        // it, from the row as it is then (a takeover continues after the last owner's ids).
        let started = async move {
            let (row, lease) = match cluster {
                Some(cluster) => {
                    let (fresh, lease) = cluster.take(&row.session_id).await.map_err(|e| (e, row.clone(), None))?;
                    request.options = fresh.options.clone();
                    request.resume_at = fresh.resume_at.clone();
                    request.fork_from = fresh.fork_from.clone();
                    (fresh, Some(lease))
                }
                None => (row, None),
            };
            // What the session keeps of its events so far: the new actor trims by it (ids are
            // not dense across starts). None read: nothing older is trimmed until its own fill
            // the window.
            let stored = storage.newest_event_ids(&row.session_id, keep).await.unwrap_or_else(|e| {
                log::warn!("session {}: stored event ids not read ({e})", row.session_id);
                Vec::new()
            });
            match launch::launch(request, runtime).await {
                Ok(launched) => Ok((row, lease, stored, launched)),
                Err(e) => Err((e, row, lease)),
            }
        };
        ctx.spawn(started.into_actor(self).map(move |result, act, ctx| {
            let answer = act.launched(generation, urgency, thread, me, result);
            let _ = reply.send(answer);
            act.pump(ctx);
        }));
    }

    /// The end of a launch's fork: the session actor starts on `thread`, or the slot is freed.
    pub(super) fn launched(
        &mut self,
        generation: u64,
        urgency: Urgency,
        thread: SessionThread,
        me: Addr<Self>,
        result: Result<Started, NotStarted>,
    ) -> LaunchResult {
        let (row, lease, stored_event_ids, launched) = match result {
            Ok(launched) => launched,
            Err((e, row, lease)) => {
                if let (Some(cluster), Some(lease)) = (self.cluster.clone(), lease) {
                    let id = row.session_id.clone();
                    actix_web::rt::spawn(async move { cluster.release(&id, &lease).await });
                }
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
        let Launched { child, tmp_dir, always_allowed, max_budget_usd } = launched;
        let pid = child.pid;
        let setup = SessionSetup {
            session_id: row.session_id.clone(),
            cli_session_id: row.cli_session_id.clone(),
            user_id: row.user_id.clone(),
            last_event_id: row.last_event_id,
            total_cost_usd: row.total_cost_usd,
            tmp_dir,
            always_allowed,
            max_budget_usd,
            generation,
            turn_slots: self.turn_slots.clone(),
            cluster: self.cluster.clone().filter(|_| lease.is_some()),
            stored_event_ids,
        };
        let (storage, settings, hub, metrics) =
            (self.storage.fenced(lease), self.settings.clone(), self.hub.clone(), self.metrics.clone());
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
}
