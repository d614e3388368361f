//! Per-session writer: the session actor hands it status changes and finished turns and never
//! waits for the database. Jobs run in order; a database that is away is retried with backoff.

use std::time::Duration;

use tokio::sync::mpsc;

use tokio::sync::oneshot;

use crate::sessions::SessionStatus;
use crate::storage::{EventRow, Storage, StorageError, TurnRecord};

pub enum PersistJob {
    /// Move the status to `to` if it is one of `from` (never overwrites closed or expired).
    Status {
        to: SessionStatus,
        from: &'static [SessionStatus],
    },
    TurnFinished(Box<TurnRecord>),
    /// "Always allow" this tool in this session.
    AllowTool(String),
    /// A batch of events; `stored` gets the last id once they are in storage (or given up on).
    Events {
        rows: Vec<EventRow>,
        keep: i64,
        stored: oneshot::Sender<i64>,
    },
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
                    PersistJob::Status { to, from } => {
                        storage.transition_session(&session_id, from, *to, None).await.map(|_| ())
                    }
                    PersistJob::TurnFinished(record) => storage.finish_turn(record).await,
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
            if let PersistJob::Events { rows, stored, .. } = &mut job {
                let last = rows.last().map(|r| r.event_id).unwrap_or(0);
                let (done, _) = oneshot::channel();
                let _ = std::mem::replace(stored, done).send(last);
            }
        }
    });
    tx
}

impl PersistJob {
    fn describe(&self) -> String {
        match self {
            PersistJob::Status { to, .. } => format!("status {}", to.as_str()),
            PersistJob::TurnFinished(r) => format!("turn {}", r.turn_id),
            PersistJob::Events { rows, .. } => format!("{} events", rows.len()),
            PersistJob::AllowTool(tool) => format!("always-allow of {tool}"),
        }
    }
}
