//! The session's events: numbered from the ids reserved in storage, handed to the turn's
//! client and to followers, and kept in memory until the writer confirms them stored.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::{EVENT_FLUSH_DELAY, EVENT_FLUSH_SIZE, EVENT_RETRY_DELAY, MAX_UNSTORED, SessionActor};
use crate::actors::event::{SessionEvent, TurnOutcome};
use crate::actors::persist::{self, PersistJob};
use crate::clock;
use crate::error::ApiError;
use crate::storage::EventRow;

/// The numbering and storage bookkeeping of a session's events, without the actor: which id
/// comes next and whether the reservation covers it, when to reserve the next block, what goes
/// in the next batch for the writer, and what stays in memory until it is stored.
#[derive(Debug)]
pub(super) struct EventLog {
    /// Ids are reserved in storage in blocks of this size.
    block: i64,
    next_id: i64,
    /// The highest event id reserved in storage: no id above it is handed out.
    reserved_up_to: i64,
    /// The first block is reserved (at the start, ids wait for it).
    reserved: bool,
    /// The next block is being reserved.
    extending: bool,
    /// Highest event id handed to the writer.
    handed_up_to: i64,
    /// Events not yet confirmed stored, oldest first (followers read them at the seam).
    unstored: VecDeque<Arc<SessionEvent>>,
    /// The ids this log hands out start above this one.
    floor: i64,
    /// The newest ids stored before this log started, newest first (see [`EventLog::trim_to`]).
    older: Vec<i64>,
}

/// Events handed to the writer as one batch: those not handed before, oldest first.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) events: Vec<Arc<SessionEvent>>,
    pub(super) first: i64,
    pub(super) up_to: i64,
}

/// When the events not yet handed to the writer go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    Nothing,
    /// A full batch: now.
    Now,
    /// After `EVENT_FLUSH_DELAY` (or with the turn's end, whichever comes first).
    Later,
}

impl EventLog {
    /// Before the reservation: ids would follow `last_event_id`, but none is handed out (the
    /// budget is empty) until [`EventLog::reserved`].
    pub(super) fn new(last_event_id: i64, block: i64) -> Self {
        Self {
            block,
            next_id: last_event_id + 1,
            reserved_up_to: last_event_id,
            reserved: false,
            extending: false,
            handed_up_to: last_event_id,
            unstored: VecDeque::new(),
            floor: last_event_id,
            older: Vec::new(),
        }
    }

    /// The newest ids stored before this log (newest first), for [`EventLog::trim_to`].
    pub(super) fn after_stored(mut self, older: Vec<i64>) -> Self {
        self.older = older;
        self
    }

    /// The id up to which stored events may go once everything up to `up_to` is stored, so
    /// that the newest `keep` stay. Not `up_to - keep`: ids are not dense across owners (a
    /// takeover, a crash or a restart numbers on above the ids its predecessor reserved), and
    /// that would delete every event from before the gap.
    pub(super) fn trim_to(&self, up_to: i64, keep: i64) -> i64 {
        let own = up_to - self.floor;
        if own >= keep {
            return up_to - keep;
        }
        let older_kept = (keep - own) as usize;
        self.older.get(older_kept).copied().unwrap_or(0)
    }

    /// Storage reserved the block above `floor` (above every id handed out before, stored or
    /// not): ids continue from there.
    pub(super) fn reserved(&mut self, floor: i64) {
        self.floor = floor;
        self.next_id = floor + 1;
        self.handed_up_to = floor;
        self.reserved_up_to = floor + self.block;
        self.reserved = true;
    }

    pub(super) fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// The id the next event gets.
    pub(super) fn next_id(&self) -> i64 {
        self.next_id
    }

    /// Gives the next event id to an event of turn `turn_id`.
    pub(super) fn number(
        &mut self,
        json: String,
        outcome: Option<TurnOutcome>,
        turn_id: &Arc<str>,
    ) -> Arc<SessionEvent> {
        let event = Arc::new(SessionEvent { id: self.next_id, turn_id: turn_id.clone(), json: json.into(), outcome });
        self.next_id += 1;
        event
    }

    /// Whether a running turn may number one more event (see [`id_budget_left`]).
    pub(super) fn room_for_one_more(&self) -> bool {
        id_budget_left(self.next_id, self.reserved_up_to, self.unstored.len())
    }

    /// Keeps a numbered event until it is stored.
    pub(super) fn keep(&mut self, event: Arc<SessionEvent>) {
        self.unstored.push_back(event);
    }

    pub(super) fn flush(&self) -> Flush {
        match (self.next_id - 1 - self.handed_up_to) as usize {
            0 => Flush::Nothing,
            n if n >= EVENT_FLUSH_SIZE => Flush::Now,
            _ => Flush::Later,
        }
    }

    /// The end of the next block to reserve, once half of the current one is used (one
    /// reservation at a time, and only after the first).
    pub(super) fn next_block(&self) -> Option<i64> {
        let due = self.reserved && !self.extending && self.reserved_up_to - self.next_id < self.block / 2;
        due.then_some(self.reserved_up_to + self.block)
    }

    /// The next block is being reserved.
    pub(super) fn extending(&mut self) {
        self.extending = true;
    }

    /// The reservation ended: `Some(up_to)` if stored (a late or lower answer never shrinks
    /// the reservation); on `None` the next event asks again.
    pub(super) fn extended(&mut self, up_to: Option<i64>) {
        self.extending = false;
        if let Some(up_to) = up_to {
            self.reserved_up_to = self.reserved_up_to.max(up_to);
        }
    }

    /// The events not handed to the writer yet, plus `last` (a turn's final frame, which is
    /// kept out of memory: it is delivered only once stored). `None` when there are none.
    pub(super) fn take_batch(&mut self, last: Option<&Arc<SessionEvent>>) -> Option<Batch> {
        let events: Vec<Arc<SessionEvent>> =
            self.unstored.iter().filter(|e| e.id > self.handed_up_to).chain(last).cloned().collect();
        let (first, up_to) = (events.first()?.id, events.last()?.id);
        self.handed_up_to = up_to;
        Some(Batch { events, first, up_to })
    }

    /// The writer stored the batch `first..=up_to`: its events leave memory.
    pub(super) fn stored(&mut self, first: i64, up_to: i64) {
        self.unstored.retain(|e| e.id < first || e.id > up_to);
    }

    /// The writer gave up on the batch starting at `first`: it is handed again, with whatever
    /// was handed after it (storing twice is harmless).
    pub(super) fn not_stored(&mut self, first: i64) {
        self.handed_up_to = self.handed_up_to.min(first - 1);
    }

    /// Events after `after` not yet confirmed stored (the follower's seam).
    pub(super) fn unstored_after(&self, after: i64) -> Vec<Arc<SessionEvent>> {
        self.unstored.iter().filter(|e| e.id > after).cloned().collect()
    }

    /// At the end, with every event stored: the reservation to give back, `(ours, to)` (the
    /// next actor continues right after `to`). `None` if events were lost or ids never
    /// reserved: the reservation then stays, and the next ids start above it.
    pub(super) fn release(&self) -> Option<(i64, i64)> {
        (self.unstored.is_empty() && self.reserved).then_some((self.reserved_up_to, self.next_id - 1))
    }
}

impl SessionActor {
    /// Hands an event to the turn's client (if `sink`) and to followers. A client that cannot
    /// keep up is dropped rather than slowing the turn.
    pub(super) fn deliver(&self, event: &Arc<SessionEvent>, sink: &mut Option<mpsc::Sender<Arc<SessionEvent>>>) {
        if let Some(tx) = sink
            && tx.try_send(event.clone()).is_err()
        {
            log::info!("session {}: client gone or too slow; the turn goes on without it", self.id);
            *sink = None;
        }
        self.hub.publish(&self.id, event);
    }

    /// Numbers an event of the running turn, hands it out and queues it for storage. A turn
    /// that would run past the reserved ids or the events memory may hold (the database is
    /// away) fails with `storage_unavailable` instead.
    pub(super) fn emit(&mut self, json: String, outcome: Option<TurnOutcome>, ctx: &mut Context<Self>) {
        let Some(turn_id) = self.turn.as_ref().map(|t| t.id.clone()) else { return };
        if outcome.is_none() && !self.log.room_for_one_more() {
            log::warn!("session {}: events cannot be stored; the turn fails", self.id);
            let err = ApiError::StorageUnavailable("the turn's events could not be stored".into());
            self.abandon_turn(err, ctx);
            return;
        }
        let event = self.log.number(json, outcome, &turn_id);
        let for_client = event.outcome.is_some() || self.turn.as_ref().is_some_and(|t| !t.outcome_only);
        let mut sink = self.turn.as_mut().filter(|_| for_client).and_then(|t| t.sink.take());
        self.deliver(&event, &mut sink);
        if let Some(turn) = self.turn.as_mut().filter(|_| for_client) {
            turn.sink = sink;
        }
        self.log.keep(event);
        self.extend_ids(ctx);
        self.schedule_flush(ctx);
    }

    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        match self.log.flush() {
            Flush::Now => {
                self.flush_events(ctx);
            }
            Flush::Later if !self.flush_scheduled => {
                self.flush_scheduled = true;
                ctx.run_later(EVENT_FLUSH_DELAY, |act, ctx| {
                    act.flush_scheduled = false;
                    act.flush_events(ctx);
                });
            }
            Flush::Later | Flush::Nothing => {}
        }
    }

    /// Reserves the next block of ids once half of the current one is used (without waiting).
    pub(super) fn extend_ids(&mut self, ctx: &mut Context<Self>) {
        let Some(up_to) = self.log.next_block() else { return };
        let (done, extended) = oneshot::channel();
        if self.persist.push(PersistJob::ExtendIds { up_to, done: vec![done] }).is_err() {
            return;
        }
        self.log.extending();
        ctx.spawn(extended.into_actor(self).map(move |result, act, _| {
            act.log.extended(match result {
                Ok(Ok(up_to)) => Some(up_to),
                _ => None,
            });
        }));
    }

    /// Hands the events not yet handed to the writer as its own batch; they stay in memory
    /// until it confirms. The receiver resolves once they are stored (or given up on).
    pub(super) fn flush_events(&mut self, ctx: &mut Context<Self>) -> Option<oneshot::Receiver<()>> {
        let (rows, stored, done) = self.hand_events(None, ctx)?;
        let trim_to = rows.last().map_or(0, |r| self.log.trim_to(r.event_id, self.replay_keep));
        if let Err(PersistJob::Events { stored, .. }) =
            self.persist.push(PersistJob::Events { rows, trim_to, stored: vec![stored] })
        {
            // No room: they are handed again later.
            for s in stored {
                let _ = s.send(Err("the writer's queue is full".into()));
            }
        }
        Some(done)
    }

    /// The events not yet handed to the writer (plus `last`, a turn's final frame, which is
    /// delivered only once stored), as rows, with the sender the writer confirms them on and a
    /// receiver that resolves then. Stored events leave memory; events the writer gave up on
    /// stay and are handed again after `EVENT_RETRY_DELAY`.
    pub(super) fn hand_events(
        &mut self,
        last: Option<&Arc<SessionEvent>>,
        ctx: &mut Context<Self>,
    ) -> Option<(Vec<EventRow>, oneshot::Sender<persist::Stored>, oneshot::Receiver<()>)> {
        let now = clock::now_ms();
        let to_row = |e: &Arc<SessionEvent>| EventRow {
            session_id: self.id.clone(),
            event_id: e.id,
            turn_id: e.turn_id.to_string(),
            payload: e.json.to_string(),
            created_at: now,
        };
        let Batch { events, first, up_to } = self.log.take_batch(last)?;
        let rows: Vec<EventRow> = events.iter().map(to_row).collect();
        let (stored, confirmed) = oneshot::channel();
        let (notify, done) = oneshot::channel();
        ctx.spawn(confirmed.into_actor(self).map(move |result, act, ctx| {
            if let Ok(Ok(_)) = result {
                act.log.stored(first, up_to);
            } else {
                // Not stored: never confirmed; handed again (storing twice is harmless).
                act.log.not_stored(first);
                if !act.flush_scheduled {
                    act.flush_scheduled = true;
                    ctx.run_later(EVENT_RETRY_DELAY, |act, ctx| {
                        act.flush_scheduled = false;
                        act.flush_events(ctx);
                    });
                }
            }
            let _ = notify.send(());
        }));
        Some((rows, stored, done))
    }
}

/// Whether the running turn may number one more event: two ids stay in hand for its final
/// frame and a `storage_unavailable` frame after it, and memory holds at most `MAX_UNSTORED`.
fn id_budget_left(next_event_id: i64, reserved_up_to: i64, unstored: usize) -> bool {
    next_event_id + 2 <= reserved_up_to && unstored < MAX_UNSTORED
}

#[cfg(test)]
mod tests {
    use super::super::ID_BLOCK;
    use super::*;

    /// A log whose storage reserved `block` ids above `floor`.
    fn log(floor: i64, block: i64) -> EventLog {
        let mut log = EventLog::new(floor, block);
        log.reserved(floor);
        log
    }

    /// Numbers and keeps one event of turn "t".
    fn emit(log: &mut EventLog) -> i64 {
        let event = log.number("{}".into(), None, &Arc::from("t"));
        let id = event.id;
        log.keep(event);
        id
    }

    fn ids(events: &[Arc<SessionEvent>]) -> Vec<i64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn the_trim_keeps_the_newest_events_across_a_gap_in_the_ids() {
        // Dense: this log's own ids fill the window.
        let mut dense = EventLog::new(0, 100);
        dense.reserved(0);
        assert_eq!(dense.trim_to(10, 5), 5);
        // A takeover numbers on far above what its predecessor stored (91..=100): with two
        // ids of its own, the three newest older ones stay (98, 99, 100), the rest go.
        let older: Vec<i64> = (91..=100).rev().collect();
        let mut after_gap = EventLog::new(100, 100).after_stored(older);
        after_gap.reserved(1 << 20);
        assert_eq!(after_gap.trim_to((1 << 20) + 2, 5), 97);
        // Once its own fill the window, by id again.
        assert_eq!(after_gap.trim_to((1 << 20) + 9, 5), (1 << 20) + 4);
        // Fewer older ones than the window leaves room for: nothing goes.
        let mut few = EventLog::new(3, 100).after_stored(vec![3, 2, 1]);
        few.reserved(1 << 20);
        assert_eq!(few.trim_to((1 << 20) + 2, 10), 0);
    }

    #[test]
    fn no_id_is_handed_out_before_the_reservation_and_then_they_follow_its_floor() {
        let mut log = EventLog::new(7, 10);
        assert!(!log.room_for_one_more(), "nothing is reserved yet");
        assert_eq!(log.next_block(), None, "the first block is the start's reservation, not an extension");
        // Storage's floor is above every id handed out before (stored or not), e.g. by an
        // actor that died with unstored events: numbering continues from the floor, not from
        // the session's last stored id.
        log.reserved(12);
        assert_eq!((emit(&mut log), emit(&mut log), emit(&mut log)), (13, 14, 15));
    }

    #[test]
    fn the_next_block_is_asked_for_once_half_the_current_one_is_used() {
        let mut log = log(0, 10);
        let mut asked = Vec::new();
        for _ in 0..5 {
            asked.push(log.next_block());
            emit(&mut log);
        }
        assert_eq!(asked, vec![None; 5], "ids 1-5 leave at least half of 1-10");
        assert_eq!(log.next_block(), Some(20), "next id 6: 4 left, below half the block");
        log.extending();
        emit(&mut log);
        assert_eq!(log.next_block(), None, "one reservation at a time");
        log.extended(None);
        assert_eq!(log.next_block(), Some(20), "a failed reservation is asked for again");
        log.extending();
        log.extended(Some(20));
        assert_eq!(log.next_block(), None);
        log.extended(Some(15));
        assert_eq!(log.reserved_up_to, 20, "a late lower answer never shrinks it");
    }

    #[test]
    fn ids_never_run_past_the_reservation_and_two_stay_for_the_turns_end() {
        let mut log = log(100, 10);
        let mut handed = Vec::new();
        while log.room_for_one_more() {
            handed.push(emit(&mut log));
        }
        assert_eq!(handed, (101..=108).collect::<Vec<_>>());
        // The final frame and a storage_unavailable frame after it still fit in the block.
        let done = log.number("{}".into(), None, &Arc::from("t"));
        let failed = log.number("{}".into(), None, &Arc::from("t"));
        assert_eq!((done.id, failed.id), (109, 110));
        assert!(failed.id <= log.reserved_up_to);
        // Across the boundary (the next block stored), numbering goes on without reuse.
        log.extended(Some(120));
        assert!(log.room_for_one_more());
        assert_eq!(emit(&mut log), 111);
    }

    #[test]
    fn a_batch_holds_what_was_not_handed_before_plus_the_turns_final_frame() {
        let mut log = log(0, 100);
        assert!(log.take_batch(None).is_none(), "nothing to store");
        for _ in 0..3 {
            emit(&mut log);
        }
        let first = log.take_batch(None).unwrap();
        assert_eq!((ids(&first.events), first.first, first.up_to), (vec![1, 2, 3], 1, 3));
        assert!(log.take_batch(None).is_none(), "handed once");
        emit(&mut log);
        let last = log.number("{}".into(), None, &Arc::from("t"));
        let end = log.take_batch(Some(&last)).unwrap();
        assert_eq!((ids(&end.events), end.first, end.up_to), (vec![4, 5], 4, 5));
        assert_eq!(ids(&log.unstored_after(0)), vec![1, 2, 3, 4], "the final frame is not kept in memory");
    }

    #[test]
    fn stored_events_leave_memory_and_a_failed_batch_is_handed_again_with_what_followed() {
        let mut log = log(0, 100);
        for _ in 0..3 {
            emit(&mut log);
        }
        let a = log.take_batch(None).unwrap();
        for _ in 0..2 {
            emit(&mut log);
        }
        let b = log.take_batch(None).unwrap();
        assert_eq!((a.first, a.up_to, b.first, b.up_to), (1, 3, 4, 5));
        log.not_stored(a.first);
        log.stored(b.first, b.up_to);
        assert_eq!(ids(&log.unstored_after(0)), vec![1, 2, 3], "only the stored batch left memory");
        assert_eq!(ids(&log.unstored_after(2)), vec![3], "the follower's seam");
        let again = log.take_batch(None).unwrap();
        assert_eq!(ids(&again.events), vec![1, 2, 3], "the failed batch is never taken for stored");
        assert_eq!(log.release(), None, "events not stored: the reservation is kept");
        log.stored(again.first, again.up_to);
        assert_eq!(log.release(), Some((100, 5)), "all stored: ids after 5 are given back");
    }

    #[test]
    fn a_full_batch_goes_now_and_a_partial_one_later() {
        let mut log = log(0, 1000);
        assert_eq!(log.flush(), Flush::Nothing);
        emit(&mut log);
        assert_eq!(log.flush(), Flush::Later);
        while log.flush() != Flush::Now {
            emit(&mut log);
        }
        assert_eq!(log.next_id() - 1, EVENT_FLUSH_SIZE as i64);
        log.take_batch(None).unwrap();
        assert_eq!(log.flush(), Flush::Nothing);
    }

    #[test]
    fn an_actor_that_never_reserved_gives_nothing_back() {
        assert_eq!(EventLog::new(5, 10).release(), None);
        assert_eq!(log(5, 10).release(), Some((15, 5)));
    }

    #[test]
    fn a_turn_keeps_two_reserved_ids_for_its_end() {
        assert!(id_budget_left(1, ID_BLOCK, 0));
        assert!(id_budget_left(ID_BLOCK - 2, ID_BLOCK, 0));
        assert!(!id_budget_left(ID_BLOCK - 1, ID_BLOCK, 0), "the last two ids are for the final frames");
        assert!(!id_budget_left(ID_BLOCK + 5, ID_BLOCK, 0), "never past the reservation");
    }

    #[test]
    fn a_turn_stops_numbering_when_memory_holds_too_many_unstored_events() {
        assert!(id_budget_left(10, 100, MAX_UNSTORED - 1));
        assert!(!id_budget_left(10, 100, MAX_UNSTORED));
    }
}
