//! Live events of every session, for any number of followers. A channel exists only while a
//! session has followers (the last one to leave drops it); a follower that falls behind the
//! channel's buffer is dropped (it reconnects with its last event id), so a slow client never
//! slows a turn or other clients. It also knows which sessions are in a turn ([`RunningTurns`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::SessionEvent;
use super::turns::RunningTurns;

const FOLLOWER_BUFFER: usize = 1024;

type Channels = HashMap<String, broadcast::Sender<Arc<SessionEvent>>>;

#[derive(Default)]
pub struct EventHub {
    channels: Mutex<Channels>,
    followers: AtomicUsize,
    turns: RunningTurns,
}

impl EventHub {
    /// The sessions in a turn now (their actors keep it).
    pub fn turns(&self) -> &RunningTurns {
        &self.turns
    }

    pub fn subscribe(self: &Arc<Self>, session_id: &str) -> Subscription {
        let mut channels = self.lock();
        let live =
            channels.entry(session_id.to_string()).or_insert_with(|| broadcast::channel(FOLLOWER_BUFFER).0).subscribe();
        self.followers.fetch_add(1, Ordering::Relaxed);
        Subscription { hub: self.clone(), session_id: session_id.to_string(), live: Some(live) }
    }

    pub fn publish(&self, session_id: &str, event: &Arc<SessionEvent>) {
        let mut channels = self.lock();
        if let Some(tx) = channels.get(session_id)
            && tx.send(event.clone()).is_err()
        {
            // Nobody follows any more.
            channels.remove(session_id);
        }
    }

    /// Followers subscribed now, across sessions.
    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::Relaxed)
    }

    /// Sessions that have a channel now (each has at least one follower).
    pub fn channels(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One follower's live feed of a session. Dropping it unsubscribes, and drops the session's
/// channel (and its buffer) when it was the last follower.
pub struct Subscription {
    hub: Arc<EventHub>,
    session_id: String,
    /// `Some` until dropped; taken out under the hub's lock so the count it leaves is exact.
    live: Option<broadcast::Receiver<Arc<SessionEvent>>>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Arc<SessionEvent>, broadcast::error::RecvError> {
        match self.live.as_mut() {
            Some(live) => live.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.lock();
        drop(self.live.take());
        if channels.get(&self.session_id).is_some_and(|tx| tx.receiver_count() == 0) {
            channels.remove(&self.session_id);
        }
        self.hub.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64) -> Arc<SessionEvent> {
        Arc::new(SessionEvent { id, turn_id: "t".into(), json: "{}".into(), outcome: None })
    }

    #[tokio::test]
    async fn the_last_follower_to_leave_drops_the_sessions_channel() {
        let hub = Arc::new(EventHub::default());
        let mut a = hub.subscribe("s1");
        let b = hub.subscribe("s1");
        let c = hub.subscribe("s2");
        assert_eq!((hub.followers(), hub.channels()), (3, 2));
        drop(b);
        assert_eq!((hub.followers(), hub.channels()), (2, 2), "s1 still has a follower");
        hub.publish("s1", &event(1));
        assert_eq!(a.recv().await.unwrap().id, 1);
        drop(a);
        drop(c);
        assert_eq!((hub.followers(), hub.channels()), (0, 0), "no channel without followers");
        // A new follower gets a fresh channel.
        let mut d = hub.subscribe("s1");
        hub.publish("s1", &event(2));
        assert_eq!(d.recv().await.unwrap().id, 2);
    }
}
