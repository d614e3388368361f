//! The session's events: numbered from the ids reserved in storage, handed to the turn's
//! client and to followers, and kept in memory until the writer confirms them stored.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::{EVENT_FLUSH_DELAY, EVENT_FLUSH_SIZE, EVENT_RETRY_DELAY, ID_BLOCK, MAX_UNSTORED, SessionActor};
use crate::actors::event::{SessionEvent, TurnOutcome};
use crate::actors::persist::{self, PersistJob};
use crate::clock;
use crate::error::ApiError;
use crate::storage::EventRow;

impl SessionActor {
    /// Gives the next event id to an event of turn `turn_id`.
    pub(super) fn number(&mut self, json: String, outcome: Option<TurnOutcome>, turn_id: &Arc<str>) -> Arc<SessionEvent> {
        let event =
            Arc::new(SessionEvent { id: self.next_event_id, turn_id: turn_id.clone(), json: json.into(), outcome });
        self.next_event_id += 1;
        event
    }

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
        if outcome.is_none() && !id_budget_left(self.next_event_id, self.reserved_up_to, self.unstored.len()) {
            log::warn!("session {}: events cannot be stored; the turn fails", self.id);
            let err = ApiError::StorageUnavailable("the turn's events could not be stored".into());
            self.abandon_turn(err, ctx);
            return;
        }
        let event = self.number(json, outcome, &turn_id);
        let mut sink = self.turn.as_mut().and_then(|t| t.sink.take());
        self.deliver(&event, &mut sink);
        if let Some(turn) = self.turn.as_mut() {
            turn.sink = sink;
        }
        self.unstored.push_back(event);
        self.extend_ids(ctx);
        self.schedule_flush(ctx);
    }

    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        let waiting = (self.next_event_id - 1 - self.handed_up_to) as usize;
        if waiting >= EVENT_FLUSH_SIZE {
            self.flush_events(ctx);
        } else if waiting > 0 && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(EVENT_FLUSH_DELAY, |act, ctx| {
                act.flush_scheduled = false;
                act.flush_events(ctx);
            });
        }
    }

    /// Reserves the next block of ids once half of the current one is used (without waiting).
    pub(super) fn extend_ids(&mut self, ctx: &mut Context<Self>) {
        if self.extending_ids || !self.ids_reserved || self.reserved_up_to - self.next_event_id >= ID_BLOCK / 2 {
            return;
        }
        let up_to = self.reserved_up_to + ID_BLOCK;
        let (done, extended) = oneshot::channel();
        if self.persist.push(PersistJob::ExtendIds { up_to, done: vec![done] }).is_err() {
            return;
        }
        self.extending_ids = true;
        ctx.spawn(extended.into_actor(self).map(move |result, act, _| {
            act.extending_ids = false;
            if let Ok(Ok(up_to)) = result {
                act.reserved_up_to = act.reserved_up_to.max(up_to);
            }
        }));
    }

    /// Hands the events not yet handed to the writer as its own batch; they stay in memory
    /// until it confirms. The receiver resolves once they are stored (or given up on).
    pub(super) fn flush_events(&mut self, ctx: &mut Context<Self>) -> Option<oneshot::Receiver<()>> {
        let (rows, stored, done) = self.hand_events(None, ctx)?;
        if let Err(PersistJob::Events { stored, .. }) =
            self.persist.push(PersistJob::Events { rows, keep: self.replay_keep, stored: vec![stored] })
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
        let rows: Vec<EventRow> =
            self.unstored.iter().filter(|e| e.id > self.handed_up_to).chain(last).map(to_row).collect();
        let (first, up_to) = (rows.first()?.event_id, rows.last()?.event_id);
        self.handed_up_to = up_to;
        let (stored, confirmed) = oneshot::channel();
        let (notify, done) = oneshot::channel();
        ctx.spawn(confirmed.into_actor(self).map(move |result, act, ctx| {
            if let Ok(Ok(_)) = result {
                act.unstored.retain(|e| e.id < first || e.id > up_to);
            } else {
                // Not stored: never confirmed; handed again (storing twice is harmless).
                act.handed_up_to = act.handed_up_to.min(first - 1);
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
    use super::*;

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
