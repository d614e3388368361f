//! Live events of every session, for any number of followers. A channel exists only while a
//! session has followers; a follower that falls behind the channel's buffer is dropped (it
//! reconnects with its last event id), so a slow client never slows a turn or other clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::events::SessionEvent;

const FOLLOWER_BUFFER: usize = 1024;

#[derive(Default)]
pub struct EventHub {
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<SessionEvent>>>>,
}

impl EventHub {
    pub fn subscribe(&self, session_id: &str) -> broadcast::Receiver<Arc<SessionEvent>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.entry(session_id.to_string()).or_insert_with(|| broadcast::channel(FOLLOWER_BUFFER).0).subscribe()
    }

    pub fn publish(&self, session_id: &str, event: &Arc<SessionEvent>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(session_id)
            && tx.send(event.clone()).is_err()
        {
            // Nobody follows any more.
            channels.remove(session_id);
        }
    }
}
