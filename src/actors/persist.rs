//! Per-session writer: the session actor hands it status changes and finished turns and never
//! waits for the database. Jobs run in order; a database that is away is retried with backoff.

use std::time::Duration;

use tokio::sync::mpsc;

use tokio::sync::oneshot;

use crate::sessions::SessionStatus;
use crate::storage::{EventRow, Storage, StorageError, TurnRecord};

pub enum PersistJob {
    /// Move the status to `to` if it is one of `from` (never overwrites closed or expired).
    Status { to: SessionStatus, from: &'static [SessionStatus] },
    /// A finished turn with its last events; `stored` as for `Events`.
    TurnFinished(Box<TurnRecord>, Option<oneshot::Sender<i64>>),
    /// "Always allow" this tool in this session.
    AllowTool(String),
    /// A batch of events; `stored` gets the last id once they are in storage (or given up on).
    Events { rows: Vec<EventRow>, keep: i64, stored: oneshot::Sender<i64> },
}

const RETRIES: u32 = 8;

/// Starts the writer task of one session.
pub fn start(storage: Storage, session_id: String) -> mpsc::UnboundedSender<PersistJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PersistJob>();
    actix_web::rt::spawn(async move {
        while let Some(mut job) = rx.recv().await {
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=RETRIES {
                let result = match &job {
                    PersistJob::Status { to, from } => storage.set_status_if(&session_id, from, *to).await,
                    PersistJob::TurnFinished(record, _) => storage.finish_turn(record).await,
                    PersistJob::Events { rows, keep, .. } => storage.insert_events(rows, *keep).await,
                    PersistJob::AllowTool(tool) => storage.allow_tool(&session_id, tool).await,
                };
                match result {
                    Ok(()) => break,
                    Err(StorageError::Unavailable(e)) if attempt < RETRIES => {
                        log::warn!("session {session_id}: storage unavailable ({e}); retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        log::error!("session {session_id}: could not store {}: {e}", job.describe());
                        break;
                    }
                }
            }
            let confirm = match &mut job {
                PersistJob::Events { rows, stored, .. } => Some((
                    rows.last().map(|r| r.event_id).unwrap_or(0),
                    std::mem::replace(stored, oneshot::channel().0),
                )),
                PersistJob::TurnFinished(record, stored) => {
                    stored.take().map(|s| (record.events.last().map(|r| r.event_id).unwrap_or(0), s))
                }
                _ => None,
            };
            if let Some((last, stored)) = confirm {
                let _ = stored.send(last);
            }
        }
    });
    tx
}

impl PersistJob {
    fn describe(&self) -> String {
        match self {
            PersistJob::Status { to, .. } => format!("status {}", to.as_str()),
            PersistJob::TurnFinished(r, _) => format!("turn {}", r.turn_id),
            PersistJob::Events { rows, .. } => format!("{} events", rows.len()),
            PersistJob::AllowTool(tool) => format!("always-allow of {tool}"),
        }
    }
}
