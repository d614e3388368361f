//! Per-session writer: the session actor hands it status changes, event batches and finished
//! turns and never waits for the database. Jobs run in order; a database that is away is
//! retried with backoff for up to [`RETRY_FOR`]. The queue is bounded: event batches waiting
//! behind a job in progress merge into one, as do status changes, so an outage grows no
//! queue; past [`QUEUE_CAP`] jobs a push is refused and the actor keeps what it holds.
//! A job is confirmed only once it is stored: a job given up on answers `Err`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::domain::SessionStatus;
use crate::domain::webhooks::{OutboxEvent, WebhookEvent};
use crate::settings::BudgetSettings;
use crate::storage::{EventRow, Storage, StorageError, TurnRecord};

/// Whether a job was stored: the last event id it holds, or why it was given up on.
pub type Stored = Result<i64, String>;

pub enum PersistJob {
    /// Move the status to `to` if it is one of `from` (never overwrites closed or expired).
    Status { to: SessionStatus, from: &'static [SessionStatus] },
    /// A finished turn with its last events, in one transaction.
    TurnFinished(Box<TurnRecord>, Vec<oneshot::Sender<Stored>>),
    /// "Always allow" this tool in this session.
    AllowTool(String),
    /// A batch of events (several merged ones answer each of their senders).
    /// Stored events up to `trim_to` go in the same transaction (the newest `events.replay` stay).
    Events { rows: Vec<EventRow>, trim_to: i64, stored: Vec<oneshot::Sender<Stored>> },
    /// Reserve a block of event ids for a new actor: answers the floor.
    ReserveIds { block: i64, floor: oneshot::Sender<Result<i64, String>> },
    /// Move the reservation up to `up_to`.
    ExtendIds { up_to: i64, done: Vec<oneshot::Sender<Stored>> },
    /// Give the unused part of reservation `ours` back (every id up to `to` is stored).
    ReleaseIds { ours: i64, to: i64 },
    /// A webhook event of the session (`permission.requested`): `data` gets the session's and
    /// its owner's ids, and `text` goes only to hooks with `include_text`.
    Webhook {
        event: WebhookEvent,
        /// The `webhook-id`, chosen once so a retried job cannot send the event twice under two ids.
        message_id: String,
        /// When it happened (epoch ms).
        at: i64,
        data: serde_json::Map<String, serde_json::Value>,
        text: serde_json::Map<String, serde_json::Value>,
    },
}

/// How long a turn's `busy` status waits for the turn's end before it is written.
const BUSY_GRACE: Duration = Duration::from_millis(50);

/// Jobs waiting at most (after merging): a queue this long means the database is away.
pub const QUEUE_CAP: usize = 32;
/// How long a job is retried while the database is away before it is given up on.
const RETRY_FOR: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Shared {
    jobs: Mutex<VecDeque<PersistJob>>,
    wake: Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// The actor's end of its writer. Dropping it lets the task finish what is queued and end.
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Queues a job without waiting; `Err` gives it back when the queue is full.
    pub fn push(&self, job: PersistJob) -> Result<(), PersistJob> {
        let mut jobs = self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
        enqueue(&mut jobs, job, QUEUE_CAP)?;
        drop(jobs);
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.closed.store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Adds `job` at the back of `jobs`, merging it into the last waiting job when both are event
/// batches, status changes that compose, or reservation moves. `Err` when there is no room.
fn enqueue(jobs: &mut VecDeque<PersistJob>, job: PersistJob, cap: usize) -> Result<(), PersistJob> {
    let full = jobs.len() >= cap;
    match (jobs.back_mut(), job) {
        (
            Some(PersistJob::Events { rows, trim_to, stored }),
            PersistJob::Events { rows: more, trim_to: later, stored: also },
        ) => {
            rows.extend(more);
            *trim_to = (*trim_to).max(later);
            stored.extend(also);
            Ok(())
        }
        // `to` then `later` from the same set is `later` alone when `to` is in the set
        // (the second change applies whenever the first did).
        (Some(PersistJob::Status { to, from }), PersistJob::Status { to: later, from: later_from })
            if *from == later_from && from.contains(to) =>
        {
            *to = later;
            Ok(())
        }
        (Some(PersistJob::ExtendIds { up_to, done }), PersistJob::ExtendIds { up_to: higher, done: also }) => {
            *up_to = (*up_to).max(higher);
            done.extend(also);
            Ok(())
        }
        (_, job) if full => Err(job),
        (_, job) => {
            jobs.push_back(job);
            Ok(())
        }
    }
}

/// Starts the writer task of one session. `budgets` are the `[budgets]` defaults, for
/// `budget.reached` after a turn. A fenced `storage` (a cluster's lease) is given back to
/// `cluster` once the last job is stored: never before, so no other instance takes the
/// session while this one still writes for it.
pub fn start(
    storage: Storage,
    session_id: String,
    budgets: BudgetSettings,
    cluster: Option<Arc<crate::actors::cluster::Cluster>>,
) -> Writer {
    let shared = Arc::new(Shared {
        jobs: Mutex::new(VecDeque::new()),
        wake: Notify::new(),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    let task = shared.clone();
    actix_web::rt::spawn(async move {
        loop {
            let next = task.jobs.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            match next {
                Some(job) if job.is_busy() => {
                    // A turn's `busy` waits for the turn's next job: a turn that ends within the
                    // grace needs no write of its own (its end sets `active`; readers on this
                    // instance see it busy meanwhile, through `RunningTurns`).
                    let _ = tokio::time::timeout(BUSY_GRACE, task.wake.notified()).await;
                    let finished = matches!(
                        task.jobs.lock().unwrap_or_else(|e| e.into_inner()).front(),
                        Some(PersistJob::TurnFinished(..))
                    );
                    if !finished {
                        run(&storage, &session_id, &budgets, job).await;
                    }
                }
                Some(job) => run(&storage, &session_id, &budgets, job).await,
                None if task.closed.load(std::sync::atomic::Ordering::Acquire) => break,
                // A push between the check and here leaves a permit: no wake-up is lost.
                None => task.wake.notified().await,
            }
        }
        if let (Some(cluster), Some(lease)) = (cluster, storage.fence()) {
            cluster.release(&session_id, lease).await;
        }
    });
    Writer { shared }
}

/// Runs one job with retries and answers its senders.
async fn run(storage: &Storage, session_id: &str, budgets: &BudgetSettings, job: PersistJob) {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut owner = None;
    let result = loop {
        let result = match &job {
            PersistJob::Status { to, from } => storage.set_status_if(session_id, from, *to).await.map(|_| 0),
            PersistJob::TurnFinished(record, _) => storage.finish_turn(record).await.map(|o| {
                owner = o;
                0
            }),
            PersistJob::Webhook { event, message_id, at, data, text } => {
                let (event, id, at) = (*event, message_id.clone(), crate::clock::rfc3339(*at));
                let (data, text, session) = (data.clone(), text.clone(), session_id.to_string());
                storage
                    .enqueue_session_webhook_event(session_id, move |user_id| {
                        let mut data = data;
                        data.insert("session_id".into(), session.into());
                        data.insert("user_id".into(), user_id.into());
                        OutboxEvent::new(event, id, at, data, text)
                    })
                    .await
                    .map(|_| 0)
            }
            PersistJob::Events { rows, trim_to, .. } => storage.insert_events(rows, *trim_to).await.map(|_| 0),
            PersistJob::AllowTool(tool) => storage.allow_tool(session_id, tool).await.map(|_| 0),
            PersistJob::ReserveIds { block, .. } => storage.reserve_event_ids(session_id, *block).await,
            PersistJob::ExtendIds { up_to, .. } => storage.extend_event_ids(session_id, *up_to).await.map(|_| 0),
            PersistJob::ReleaseIds { ours, to } => storage.release_event_ids(session_id, *ours, *to).await.map(|_| 0),
        };
        match result {
            Ok(value) => break Ok(value),
            Err(StorageError::Fenced) => {
                // Another instance took the session: nothing more of this one's is stored
                // (the heartbeat stops its CLI).
                log::warn!("session {session_id}: {} refused: {}", job.describe(), StorageError::Fenced);
                break Err(StorageError::Fenced.to_string());
            }
            Err(StorageError::Unavailable(e)) if started.elapsed() < RETRY_FOR => {
                log::warn!("session {session_id}: storage unavailable ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                log::error!("session {session_id}: could not store {}: {e}", job.describe());
                break Err(e.to_string());
            }
        }
    };
    let answer = |senders: Vec<oneshot::Sender<Stored>>, last: i64| {
        for sender in senders {
            let _ = sender.send(result.clone().map(|_| last));
        }
    };
    match job {
        PersistJob::Events { rows, stored, .. } => answer(stored, rows.last().map_or(0, |r| r.event_id)),
        PersistJob::TurnFinished(record, stored) => {
            answer(stored, record.events.last().map_or(0, |r| r.event_id));
            // After the turn is stored (its cost counted), off the turn's path.
            if let Some(user_id) = owner.filter(|_| record.turn_cost_usd > 0.0)
                && let Err(e) = crate::webhooks::budget::after_turn(storage, budgets, &user_id, session_id).await
            {
                log::warn!("session {session_id}: budget.reached not checked: {e}");
            }
        }
        PersistJob::ExtendIds { up_to, done } => answer(done, up_to),
        PersistJob::ReserveIds { floor, .. } => {
            let _ = floor.send(result);
        }
        PersistJob::Status { .. }
        | PersistJob::AllowTool(_)
        | PersistJob::ReleaseIds { .. }
        | PersistJob::Webhook { .. } => {}
    }
}

impl PersistJob {
    fn is_busy(&self) -> bool {
        matches!(self, PersistJob::Status { to: SessionStatus::Busy, .. })
    }

    fn describe(&self) -> String {
        match self {
            PersistJob::Status { to, .. } => format!("status {}", to.as_str()),
            PersistJob::TurnFinished(r, _) => format!("turn {}", r.turn_id),
            PersistJob::Events { rows, .. } => format!("{} events", rows.len()),
            PersistJob::AllowTool(tool) => format!("always-allow of {tool}"),
            PersistJob::ReserveIds { .. } | PersistJob::ExtendIds { .. } => "event id reservation".into(),
            PersistJob::ReleaseIds { .. } => "event id release".into(),
            PersistJob::Webhook { event, .. } => format!("webhook event {}", event.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> EventRow {
        EventRow { session_id: "s".into(), event_id: id, turn_id: "t".into(), payload: "{}".into(), created_at: 0 }
    }

    fn events(ids: &[i64]) -> (PersistJob, oneshot::Receiver<Stored>) {
        let (tx, rx) = oneshot::channel();
        (PersistJob::Events { rows: ids.iter().copied().map(row).collect(), trim_to: 0, stored: vec![tx] }, rx)
    }

    fn status(to: SessionStatus) -> PersistJob {
        PersistJob::Status { to, from: &SessionStatus::LIVE }
    }

    #[test]
    fn event_batches_waiting_in_a_row_merge_into_one_that_answers_each() {
        let mut jobs = VecDeque::new();
        let (a, _ra) = events(&[1, 2]);
        let (b, _rb) = events(&[3]);
        assert!(enqueue(&mut jobs, a, 4).is_ok());
        assert!(enqueue(&mut jobs, b, 4).is_ok());
        assert_eq!(jobs.len(), 1);
        let Some(PersistJob::Events { rows, stored, .. }) = jobs.front() else { panic!("one batch") };
        assert_eq!(rows.iter().map(|r| r.event_id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(stored.len(), 2, "both senders are answered");
    }

    #[test]
    fn a_status_change_between_batches_keeps_their_order() {
        let mut jobs = VecDeque::new();
        assert!(enqueue(&mut jobs, events(&[1]).0, 8).is_ok());
        assert!(enqueue(&mut jobs, status(SessionStatus::Busy), 8).is_ok());
        assert!(enqueue(&mut jobs, events(&[2]).0, 8).is_ok());
        assert_eq!(jobs.len(), 3);
    }

    #[test]
    fn status_changes_compose_only_when_the_first_keeps_the_second_applicable() {
        let mut jobs = VecDeque::new();
        assert!(enqueue(&mut jobs, status(SessionStatus::Busy), 8).is_ok());
        assert!(enqueue(&mut jobs, status(SessionStatus::Active), 8).is_ok());
        assert_eq!(jobs.len(), 1);
        assert!(matches!(jobs.back(), Some(PersistJob::Status { to: SessionStatus::Active, .. })));
        // `idle` is not live: a later change from a live status would not apply after it.
        let mut jobs = VecDeque::new();
        assert!(enqueue(&mut jobs, status(SessionStatus::Idle), 8).is_ok());
        assert!(enqueue(&mut jobs, status(SessionStatus::Active), 8).is_ok());
        assert_eq!(jobs.len(), 2);
    }

    #[test]
    fn a_full_queue_gives_the_job_back_but_still_merges_batches() {
        let mut jobs = VecDeque::new();
        assert!(enqueue(&mut jobs, PersistJob::AllowTool("a".into()), 2).is_ok());
        assert!(enqueue(&mut jobs, events(&[1]).0, 2).is_ok());
        assert!(enqueue(&mut jobs, events(&[2]).0, 2).is_ok(), "merged, no room needed");
        assert!(matches!(enqueue(&mut jobs, PersistJob::AllowTool("b".into()), 2), Err(PersistJob::AllowTool(_))));
        assert_eq!(jobs.len(), 2);
    }

    #[test]
    fn reservation_moves_merge_to_the_highest() {
        let mut jobs = VecDeque::new();
        assert!(enqueue(&mut jobs, PersistJob::ExtendIds { up_to: 200, done: vec![] }, 8).is_ok());
        assert!(enqueue(&mut jobs, PersistJob::ExtendIds { up_to: 100, done: vec![] }, 8).is_ok());
        assert!(matches!(jobs.back(), Some(PersistJob::ExtendIds { up_to: 200, .. })));
        assert_eq!(jobs.len(), 1);
    }
}
