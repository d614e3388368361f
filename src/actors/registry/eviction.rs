//! Which live sessions stop without being asked: idle ones past `api.idle_session_timeout`,
//! least-recently-used idle ones while memory is at the limit, CLIs above `cli.max_rss_mb`
//! (after their turn), and sessions past their TTL. Also the memory samples all this reads.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::admission::{self, Idle};
use super::{Phase, Registry};
use crate::actors::session::{Stop, StopReason};
use crate::memory::{self, MemorySample, ProcessTable};

impl Registry {
    /// Idle sessions past `api.idle_session_timeout`, and the least recently used idle ones
    /// while memory as counted is at the limit (down to 90 % of it): see [`victims`].
    pub(super) fn evict(&mut self) {
        let now = Instant::now();
        let interval = self.limits.check_interval;
        let candidates: Vec<Candidate> = self
            .entries
            .iter()
            .map(|(id, e)| Candidate {
                session_id: id,
                last_active: e.last_active,
                bytes: self.estimate.cost(e.measured),
                holds_memory: !e.queued,
                evictable: e.evictable(now),
                leaving: e.leaving(now, interval),
            })
            .collect();
        let pressure = Pressure { counted: self.counted_bytes(), limit: self.limits.memory_limit_bytes };
        for (id, reason) in victims(&candidates, now, self.limits.idle_timeout, pressure) {
            // The actor refuses if a turn started meanwhile; it reports back with `Stopping`.
            // Asked already, no turn since and recently: its `Stopping` is on its way (its
            // memory is still counted above). Asked a check ago and still live: it refused.
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

/// A session as eviction sees it.
#[derive(Debug, Clone)]
pub(super) struct Candidate<'a> {
    pub(super) session_id: &'a str,
    pub(super) last_active: Instant,
    /// What its CLI is counted at.
    pub(super) bytes: u64,
    /// Its CLI holds memory (it is not waiting in the start queue).
    pub(super) holds_memory: bool,
    /// Live, ready, between turns and not awaited by a message.
    pub(super) evictable: bool,
    /// Stopping, or asked to recently: its memory is on its way out.
    pub(super) leaving: bool,
}

/// Memory as counted for admission (the service and every CLI that holds memory), and
/// `api.memory_limit_mb`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pressure {
    pub(super) counted: u64,
    pub(super) limit: u64,
}

/// Which sessions to stop, and why: every evictable one idle for `idle_timeout` or longer
/// (0: never), and while memory is at the limit, the least recently used evictable ones
/// that bring it down to 90 % of the limit once those already leaving are gone (every
/// evictable one if even all of them do not). Each session once, an idle eviction first.
pub(super) fn victims(
    candidates: &[Candidate],
    now: Instant,
    idle_timeout: Duration,
    pressure: Pressure,
) -> Vec<(String, StopReason)> {
    let mut victims: Vec<(String, StopReason)> = Vec::new();
    if !idle_timeout.is_zero() {
        for c in candidates {
            if c.evictable && now.duration_since(c.last_active) >= idle_timeout {
                victims.push((c.session_id.to_string(), StopReason::IdleEviction));
            }
        }
    }
    let leaving: u64 = candidates.iter().filter(|c| c.holds_memory && c.leaving).map(|c| c.bytes).sum();
    // What is already on its way out does not call for more: a start that overlaps the reap
    // of the CLI it replaces (see `admission::decide`) is at the limit only until that reap.
    if pressure.counted.saturating_sub(leaving) >= pressure.limit {
        let excess = pressure.counted.saturating_sub(leaving).saturating_sub(pressure.limit / 10 * 9);
        let idle: Vec<Idle> = candidates
            .iter()
            .filter(|c| c.evictable && !c.leaving)
            .map(|c| Idle { session_id: c.session_id.to_string(), last_active: c.last_active, bytes: c.bytes })
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
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;
    const MINUTE: Duration = Duration::from_secs(60);

    /// An evictable session last active `idle_s` seconds before `now`, counted at `mb`.
    fn idle<'a>(id: &'a str, now: Instant, idle_s: u64, mb: u64) -> Candidate<'a> {
        Candidate {
            session_id: id,
            last_active: now - Duration::from_secs(idle_s),
            bytes: mb * MB,
            holds_memory: true,
            evictable: true,
            leaving: false,
        }
    }

    fn at(counted_mb: u64, limit_mb: u64) -> Pressure {
        Pressure { counted: counted_mb * MB, limit: limit_mb * MB }
    }

    fn ids(victims: &[(String, StopReason)]) -> Vec<(&str, StopReason)> {
        victims.iter().map(|(id, r)| (id.as_str(), *r)).collect()
    }

    #[test]
    fn sessions_idle_past_the_timeout_are_evicted_and_others_stay() {
        let now = Instant::now() + 3 * MINUTE;
        let sessions = [idle("old", now, 120, 100), idle("recent", now, 30, 100), idle("exactly", now, 60, 100)];
        let chosen = victims(&sessions, now, MINUTE, at(300, 10_000));
        assert_eq!(ids(&chosen), vec![("old", StopReason::IdleEviction), ("exactly", StopReason::IdleEviction)]);
        assert!(victims(&sessions, now, Duration::ZERO, at(300, 10_000)).is_empty(), "0: never for idleness");
    }

    #[test]
    fn a_session_in_a_turn_is_never_evicted_however_old_or_however_short_memory_is() {
        let now = Instant::now() + 3 * MINUTE;
        let busy = Candidate { evictable: false, ..idle("busy", now, 170, 500) };
        assert!(victims(std::slice::from_ref(&busy), now, MINUTE, at(2_000, 1_000)).is_empty());
        let chosen = victims(&[busy, idle("idle", now, 10, 100)], now, Duration::ZERO, at(1_000, 1_000));
        assert_eq!(ids(&chosen), vec![("idle", StopReason::MemoryEviction)], "the idle one goes instead");
    }

    #[test]
    fn at_the_limit_the_least_recently_used_go_until_90_percent() {
        let now = Instant::now() + 3 * MINUTE;
        // 1000 MiB counted against 1000: 100 MiB must go. The oldest covers it.
        let sessions = [idle("a", now, 10, 100), idle("b", now, 50, 100), idle("c", now, 30, 100)];
        let chosen = victims(&sessions, now, Duration::ZERO, at(1_000, 1_000));
        assert_eq!(ids(&chosen), vec![("b", StopReason::MemoryEviction)]);
        // 1150 counted: 250 must go, three of 100 in LRU order.
        let chosen = victims(&sessions, now, Duration::ZERO, at(1_150, 1_000));
        assert_eq!(ids(&chosen).iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec!["b", "c", "a"]);
        assert!(victims(&sessions, now, Duration::ZERO, at(999, 1_000)).is_empty(), "below the limit: none");
    }

    #[test]
    fn memory_already_on_its_way_out_counts_toward_the_target() {
        let now = Instant::now() + 3 * MINUTE;
        let stopping = Candidate { evictable: false, leaving: true, ..idle("stopping", now, 90, 150) };
        let sessions = [stopping.clone(), idle("a", now, 10, 100), idle("b", now, 50, 100)];
        assert!(victims(&sessions, now, Duration::ZERO, at(1_000, 1_000)).is_empty(), "150 leaving covers 100");
        let asked = Candidate { leaving: true, ..idle("asked", now, 90, 100) };
        let chosen = victims(&[asked, idle("a", now, 10, 100)], now, Duration::ZERO, at(1_100, 1_000));
        assert_eq!(ids(&chosen), vec![("a", StopReason::MemoryEviction)], "one asked already is not asked again");
        // A queued launch holds no memory yet: its bytes are not on their way out.
        let queued = Candidate { holds_memory: false, evictable: false, leaving: true, ..idle("queued", now, 0, 500) };
        let chosen = victims(&[queued, idle("a", now, 10, 100)], now, Duration::ZERO, at(1_000, 1_000));
        assert_eq!(ids(&chosen), vec![("a", StopReason::MemoryEviction)]);
    }

    #[test]
    fn a_start_beside_a_cli_still_exiting_evicts_no_one_more() {
        let now = Instant::now() + 3 * MINUTE;
        // 1150 counted against 1000, of which 200 are a CLI whose stop has begun: 950 stay,
        // under the limit (the 90 % target alone would still ask for 50 more).
        let exiting = Candidate { evictable: false, leaving: true, ..idle("exiting", now, 90, 200) };
        let sessions = [exiting, idle("a", now, 10, 100), idle("b", now, 50, 100)];
        assert!(victims(&sessions, now, Duration::ZERO, at(1_150, 1_000)).is_empty());
        // Without it leaving, the same picture is pressure.
        let staying = Candidate { leaving: false, ..sessions[0].clone() };
        let chosen =
            victims(&[staying, sessions[1].clone(), sessions[2].clone()], now, Duration::ZERO, at(1_100, 1_000));
        assert!(!chosen.is_empty());
    }

    #[test]
    fn every_idle_session_goes_when_all_of_them_do_not_cover_the_excess() {
        let now = Instant::now() + 3 * MINUTE;
        let sessions = [idle("a", now, 10, 100), idle("b", now, 50, 100)];
        let chosen = victims(&sessions, now, Duration::ZERO, at(5_000, 1_000));
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn a_session_both_idle_and_least_recently_used_is_asked_once_as_idle() {
        let now = Instant::now() + 3 * MINUTE;
        let sessions = [idle("old", now, 120, 100), idle("new", now, 5, 100)];
        let chosen = victims(&sessions, now, MINUTE, at(1_000, 1_000));
        assert_eq!(ids(&chosen), vec![("old", StopReason::IdleEviction)]);
    }
}
