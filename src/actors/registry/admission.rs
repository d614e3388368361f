//! The pure parts of launch admission: in which order admitted launches start, what memory
//! the live and starting CLIs are counted at, and which idle sessions make room for a new one.
//! The registry owns the state and acts on these answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How soon a client needs the CLI being launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// Nobody waits for an answer yet (a create, a reopen): started after every urgent one.
    Background,
    /// A message waits for this CLI (a respawn for a turn).
    Turn,
}

/// Launches admitted (each holds its quota slot) but not started: the next to start is the
/// oldest urgent one, else the oldest.
#[derive(Debug)]
pub struct StartQueue<T> {
    items: VecDeque<Queued<T>>,
}

#[derive(Debug)]
pub struct Queued<T> {
    pub session_id: String,
    pub urgency: Urgency,
    pub item: T,
}

impl<T> Default for StartQueue<T> {
    fn default() -> Self {
        Self { items: VecDeque::new() }
    }
}

impl<T> StartQueue<T> {
    pub fn push(&mut self, session_id: String, urgency: Urgency, item: T) {
        self.items.push_back(Queued { session_id, urgency, item });
    }

    /// A message now waits for this queued launch.
    pub fn promote(&mut self, session_id: &str) {
        if let Some(q) = self.items.iter_mut().find(|q| q.session_id == session_id) {
            q.urgency = Urgency::Turn;
        }
    }

    fn next_index(&self) -> Option<usize> {
        let urgent = self.items.iter().position(|q| q.urgency == Urgency::Turn);
        urgent.or(if self.items.is_empty() { None } else { Some(0) })
    }

    /// The launch that starts next.
    pub fn peek(&self) -> Option<&Queued<T>> {
        self.next_index().map(|i| &self.items[i])
    }

    pub fn pop(&mut self) -> Option<Queued<T>> {
        self.next_index().and_then(|i| self.items.remove(i))
    }

    pub fn remove(&mut self, session_id: &str) -> Option<Queued<T>> {
        let i = self.items.iter().position(|q| q.session_id == session_id)?;
        self.items.remove(i)
    }

    pub fn get_mut(&mut self, session_id: &str) -> Option<&mut Queued<T>> {
        self.items.iter_mut().find(|q| q.session_id == session_id)
    }

    pub fn contains(&self, session_id: &str) -> bool {
        self.items.iter().any(|q| q.session_id == session_id)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Queued<T>> + '_ {
        self.items.drain(..)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// How long a ready CLI may wait for its first message before its start permit goes: a
/// message that waited for it reaches it at once (the turn starts within a millisecond).
pub const FIRST_MESSAGE_GRACE: Duration = Duration::from_millis(25);

/// Where a starting CLI stands, for its start permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartStage {
    /// Forked, `initialize` not answered yet.
    Starting,
    /// Ready this long ago, no turn started yet.
    Ready(Duration),
    /// In its first turn, ready this long ago.
    FirstTurn(Duration),
    /// Its first turn ended (or the CLI is gone).
    Done,
}

/// Whether a CLI keeps its start permit: until it is ready, then through a first turn that
/// starts within [`FIRST_MESSAGE_GRACE`] of it (a message waited), for at most `hold` after
/// ready. `hold` zero: released at ready.
pub fn holds_start_permit(stage: StartStage, hold: Duration) -> bool {
    match stage {
        StartStage::Starting => true,
        StartStage::Ready(_) | StartStage::FirstTurn(_) if hold.is_zero() => false,
        StartStage::Ready(since) => since < FIRST_MESSAGE_GRACE.min(hold),
        StartStage::FirstTurn(since) => since < hold,
        StartStage::Done => false,
    }
}

/// The RSS one CLI is counted at before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliEstimate {
    /// `memory.cli_rss_mb` in bytes; 0 = learn it from the live CLIs.
    pub fixed: u64,
    /// The mean measured RSS of the ready CLIs at the last sample that had any.
    pub learned: u64,
}

/// Counted before any CLI was measured (the real CLI uses 150-250 MiB once it has answered).
pub const DEFAULT_CLI_BYTES: u64 = 256 * 1024 * 1024;

impl CliEstimate {
    pub fn new(fixed: u64) -> Self {
        Self { fixed, learned: DEFAULT_CLI_BYTES }
    }

    /// What a CLI not measured yet (starting, or started since the last sample) counts.
    pub fn unmeasured(&self) -> u64 {
        if self.fixed > 0 { self.fixed } else { self.learned }
    }

    /// What a CLI counts given its measurement: never less than a fixed estimate.
    pub fn cost(&self, measured: Option<u64>) -> u64 {
        match measured {
            Some(bytes) => bytes.max(self.fixed),
            None => self.unmeasured(),
        }
    }

    /// Learns from the ready CLIs' measured RSS (keeps the last figure when there are none).
    pub fn learn(&mut self, measured: &[u64]) {
        if !measured.is_empty() {
            self.learned = (measured.iter().sum::<u64>() / measured.len() as u64).max(1);
        }
    }
}

/// An idle live session that could be stopped to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    pub session_id: String,
    pub last_active: Instant,
    pub bytes: u64,
}

/// The memory picture for one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub limit: u64,
    /// The service's own RSS.
    pub service: u64,
    /// Every CLI that holds memory: live, starting or stopping (until reaped).
    pub clis: u64,
    /// The part of `clis` already on its way out (stopping, or asked to).
    pub freeing: u64,
    /// The part of `freeing` whose stop has begun (stdin closed, the exit under way): a new
    /// CLI may start beside it, since it takes hundreds of ms to grow to its RSS while the
    /// one stopping is gone in tens (at worst after `cli.stop_grace` twice, then SIGKILL).
    pub exiting: u64,
    /// What the new CLI will count.
    pub need: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Stop these (least recently used first), then look again once their stop has begun.
    Evict(Vec<String>),
    /// Room comes only once CLIs asked to stop begin to, or turns end: look again then.
    Wait,
    /// Not even the service alone leaves room: no eviction can help.
    Refuse,
}

/// Whether a launch fits now, and if not, which idle sessions make room for it. `idle` may
/// come in any order; sessions already asked to stop must not be in it.
pub fn decide(room: Room, idle: &[Idle]) -> Decision {
    let limit = room.limit;
    if room.service.saturating_add(room.need) > limit {
        return Decision::Refuse;
    }
    let projected = room.service.saturating_add(room.clis).saturating_add(room.need);
    // A CLI already exiting makes room for the start that waits for it: the start overlaps
    // its reap instead of queueing behind it. At most one new CLI's worth: however many exits
    // are slow, memory goes over the limit by one start at most, for as long as an exit takes.
    if projected.saturating_sub(room.exiting.min(room.freeing).min(room.need)) <= limit {
        return Decision::Admit;
    }
    let short = (projected - limit).saturating_sub(room.freeing);
    if short == 0 {
        return Decision::Wait;
    }
    match least_recently_used_covering(idle, short) {
        Some(victims) => Decision::Evict(victims),
        // Even every idle one would not do: the rest is in turns, wait for them to end.
        None => Decision::Wait,
    }
}

/// The least recently used idle sessions whose memory adds up to at least `bytes`, or `None`
/// when all of them do not.
pub fn least_recently_used_covering(idle: &[Idle], bytes: u64) -> Option<Vec<String>> {
    let mut by_age: Vec<&Idle> = idle.iter().collect();
    by_age.sort_by_key(|i| i.last_active);
    let mut freed = 0u64;
    let mut victims = Vec::new();
    for i in by_age {
        if freed >= bytes {
            break;
        }
        freed = freed.saturating_add(i.bytes);
        victims.push(i.session_id.clone());
    }
    (freed >= bytes).then_some(victims)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MB: u64 = 1024 * 1024;

    fn idle(id: &str, age_s: u64, mb: u64) -> Idle {
        let base = Instant::now() + Duration::from_secs(1000);
        Idle { session_id: id.into(), last_active: base - Duration::from_secs(age_s), bytes: mb * MB }
    }

    fn room(limit: u64, service: u64, clis: u64, freeing: u64, need: u64) -> Room {
        Room {
            limit: limit * MB,
            service: service * MB,
            clis: clis * MB,
            freeing: freeing * MB,
            exiting: 0,
            need: need * MB,
        }
    }

    #[test]
    fn urgent_launches_start_first_then_in_arrival_order() {
        let mut q = StartQueue::default();
        q.push("create-1".into(), Urgency::Background, ());
        q.push("create-2".into(), Urgency::Background, ());
        q.push("respawn-1".into(), Urgency::Turn, ());
        q.push("respawn-2".into(), Urgency::Turn, ());
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|q| q.session_id)).collect();
        assert_eq!(order, ["respawn-1", "respawn-2", "create-1", "create-2"]);
    }

    #[test]
    fn a_message_for_a_queued_create_moves_it_ahead_of_other_creates() {
        let mut q = StartQueue::default();
        q.push("a".into(), Urgency::Background, ());
        q.push("b".into(), Urgency::Background, ());
        q.promote("b");
        assert_eq!(q.peek().unwrap().session_id, "b");
        assert!(q.remove("b").is_some() && !q.contains("b"));
        assert_eq!(q.pop().unwrap().session_id, "a");
        assert!(q.is_empty());
    }

    #[test]
    fn the_start_permit_is_held_until_ready_then_through_a_first_turn_a_message_waited_for() {
        let hold = Duration::from_millis(500);
        let ms = Duration::from_millis;
        assert!(holds_start_permit(StartStage::Starting, hold));
        assert!(holds_start_permit(StartStage::Starting, Duration::ZERO), "never before ready");
        // Ready, a message on its way within the grace: kept; no message: released.
        assert!(holds_start_permit(StartStage::Ready(ms(1)), hold));
        assert!(!holds_start_permit(StartStage::Ready(FIRST_MESSAGE_GRACE), hold));
        // Its first turn: kept until it ends, at most `hold` after ready.
        assert!(holds_start_permit(StartStage::FirstTurn(ms(499)), hold));
        assert!(!holds_start_permit(StartStage::FirstTurn(ms(500)), hold), "a long turn (the model) lets go");
        assert!(!holds_start_permit(StartStage::Done, hold));
        // 0: released at ready, whatever follows.
        assert!(!holds_start_permit(StartStage::Ready(ms(0)), Duration::ZERO));
        assert!(!holds_start_permit(StartStage::FirstTurn(ms(0)), Duration::ZERO));
    }

    #[test]
    fn a_launch_that_fits_is_admitted() {
        assert_eq!(decide(room(1000, 100, 600, 0, 200), &[]), Decision::Admit);
        assert_eq!(decide(room(1000, 100, 700, 0, 200), &[]), Decision::Admit, "exactly at the limit");
    }

    #[test]
    fn memory_short_evicts_the_least_recently_used_idle_sessions_that_cover_it() {
        let idle = [idle("new", 1, 200), idle("oldest", 30, 150), idle("old", 20, 150)];
        // 100 + 900 + 200 = 1200 against 1000: 200 short, the two oldest cover it.
        assert_eq!(decide(room(1000, 100, 900, 0, 200), &idle), Decision::Evict(vec!["oldest".into(), "old".into()]));
        // 100 short: the oldest alone.
        assert_eq!(decide(room(1000, 100, 800, 0, 200), &idle), Decision::Evict(vec!["oldest".into()]));
    }

    #[test]
    fn cli_already_stopping_counts_as_room_on_its_way() {
        let idle = [idle("a", 10, 200)];
        assert_eq!(decide(room(1000, 100, 900, 200, 200), &idle), Decision::Wait);
        assert_eq!(decide(room(1000, 100, 900, 100, 200), &idle), Decision::Evict(vec!["a".into()]));
    }

    #[test]
    fn a_start_overlaps_the_reap_of_a_cli_already_exiting_but_not_of_one_only_asked_to() {
        let idle = [idle("a", 10, 200)];
        // 200 short, 200 whose stop has begun: start now, beside the exit.
        let exiting = Room { exiting: 200 * MB, ..room(1000, 100, 900, 200, 200) };
        assert_eq!(decide(exiting, &idle), Decision::Admit);
        // Only 100 of it exiting (the other 100 asked, not begun): wait for it to begin.
        let half = Room { exiting: 100 * MB, ..room(1000, 100, 900, 200, 200) };
        assert_eq!(decide(half, &idle), Decision::Wait);
        // Exiting memory counts only as far as it is on its way out at all.
        let inconsistent = Room { exiting: 300 * MB, ..room(1000, 100, 900, 0, 200) };
        assert_eq!(decide(inconsistent, &idle), Decision::Evict(vec!["a".into()]));
        // Slow exits pile up: still only one new CLI's worth overlaps them (400 short, 400
        // exiting, 200 needed: wait).
        let piled = Room { exiting: 400 * MB, ..room(1000, 100, 1100, 400, 200) };
        assert_eq!(decide(piled, &idle), Decision::Wait);
        // However much is exiting, the service alone above the limit is refused.
        let refused = Room { exiting: 900 * MB, ..room(1, 50, 900, 900, 200) };
        assert_eq!(decide(refused, &idle), Decision::Refuse);
    }

    #[test]
    fn when_every_live_cli_is_in_a_turn_the_launch_waits_and_evicts_nothing() {
        // Only 100 MiB idle where 200 are missing: killing it would not be enough.
        assert_eq!(decide(room(1000, 100, 900, 0, 200), &[idle("a", 10, 100)]), Decision::Wait);
        assert_eq!(decide(room(1000, 100, 900, 0, 200), &[]), Decision::Wait);
    }

    #[test]
    fn a_limit_the_service_alone_breaks_is_refused_at_once() {
        assert_eq!(decide(room(1, 50, 0, 0, 200), &[idle("a", 10, 100)]), Decision::Refuse);
    }

    #[test]
    fn starting_clis_count_at_the_measured_mean_or_the_fixed_estimate() {
        let mut learned = CliEstimate::new(0);
        assert_eq!(learned.unmeasured(), DEFAULT_CLI_BYTES, "before any is measured");
        learned.learn(&[100 * MB, 300 * MB]);
        assert_eq!(learned.unmeasured(), 200 * MB);
        assert_eq!(learned.cost(Some(120 * MB)), 120 * MB, "a measured CLI counts what it uses");
        learned.learn(&[]);
        assert_eq!(learned.unmeasured(), 200 * MB, "no CLI measured: the last figure stays");
        let fixed = CliEstimate::new(500 * MB);
        assert_eq!(fixed.unmeasured(), 500 * MB);
        assert_eq!(fixed.cost(Some(3 * MB)), 500 * MB, "never less than the fixed figure");
        assert_eq!(fixed.cost(Some(800 * MB)), 800 * MB);
    }
}
