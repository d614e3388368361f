//! Which live sessions stop without being asked: idle ones past `api.idle_session_timeout`,
//! least-recently-used idle ones while memory is at the limit, CLIs above `cli.max_rss_mb`
//! (after their turn), and sessions past their TTL. Also the memory samples all this reads.

use std::time::Instant;

use actix::prelude::*;

use super::admission::{self, Idle};
use super::{Phase, Registry};
use crate::actors::session::{Stop, StopReason};
use crate::memory::{self, MemorySample, ProcessTable};

impl Registry {

    /// Idle sessions past `api.idle_session_timeout`, and the least recently used idle ones
    /// while memory as counted is at the limit (down to 90 % of it).
    pub(super) fn evict(&mut self) {
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
    pub(super) fn sample_memory(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn apply_sample(&mut self, (memory, processes): (MemorySample, ProcessTable), taken: Instant) {
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

    pub(super) fn sweep_expired(&mut self, ctx: &mut Context<Self>) {
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
