//! Keys verified a moment ago, so a client's next request is not one more storage read (a
//! blocking-thread round trip on SQLite, a network one on PostgreSQL). A revocation made here
//! ([`super::revocation::Revocations::announce`]) drops its entries at once; a revocation made
//! by another instance on the same PostgreSQL is seen once an entry is [`FRESH_FOR`] old.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Caller;
use super::revocation::Revoked;

/// How long a verified key is believed without asking storage again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Entries at most: past it the cache starts again empty (one read per key then).
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    /// The stored hash, compared with the presented key's as storage's would be.
    key_hash: String,
    caller: Caller,
    checked_at: Instant,
}

#[derive(Default)]
struct Inner {
    /// Moves on every revocation: a lookup that started before one does not fill the cache.
    generation: u64,
    entries: HashMap<String, Entry>,
}

#[derive(Default)]
pub struct KeyCache {
    inner: Mutex<Inner>,
}

/// Where a lookup began, for [`KeyCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller `key_id` stood for within [`FRESH_FOR`] of `now`, with its stored hash.
    pub fn get(&self, key_id: &str, now: Instant) -> Option<(String, Caller)> {
        let inner = self.lock();
        let entry = inner.entries.get(key_id)?;
        (now.saturating_duration_since(entry.checked_at) < FRESH_FOR)
            .then(|| (entry.key_hash.clone(), entry.caller.clone()))
    }

    /// Taken before storage is read: a revocation announced after it voids the insert.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().generation)
    }

    /// Remembers a key storage has just shown valid (read at `checked_at`, after `ticket`).
    pub fn insert(&self, ticket: Ticket, key_id: &str, key_hash: &str, caller: Caller, checked_at: Instant) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(key_id.to_string(), Entry { key_hash: key_hash.to_string(), caller, checked_at });
    }

    /// Forgets what a revocation names (a key, or every key of a user).
    pub fn revoke(&self, revoked: &Revoked) {
        let mut inner = self.lock();
        inner.generation += 1;
        match revoked {
            Revoked::Key(key_id) => {
                inner.entries.remove(key_id);
            }
            Revoked::User(user) => inner.entries.retain(|_, e| match &e.caller {
                Caller::User { user_id, .. } => user_id != user,
                Caller::Admin | Caller::Open => true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(key: &str) -> Caller {
        Caller::User { user_id: "alice".into(), key_id: key.into() }
    }

    #[test]
    fn an_entry_is_believed_only_while_fresh() {
        let cache = KeyCache::default();
        let t0 = Instant::now();
        cache.insert(cache.ticket(), "k1", "h1", alice("k1"), t0);
        assert_eq!(cache.get("k1", t0), Some(("h1".into(), alice("k1"))));
        assert_eq!(cache.get("k1", t0 + FRESH_FOR / 2).map(|e| e.1), Some(alice("k1")));
        assert_eq!(cache.get("k1", t0 + FRESH_FOR), None);
        assert_eq!(cache.get("k2", t0), None);
    }

    #[test]
    fn revocations_drop_their_keys_and_void_lookups_in_flight() {
        let cache = KeyCache::default();
        let now = Instant::now();
        cache.insert(cache.ticket(), "k1", "h", alice("k1"), now);
        cache.insert(cache.ticket(), "k2", "h", alice("k2"), now);
        let bob = Caller::User { user_id: "bob".into(), key_id: "k3".into() };
        cache.insert(cache.ticket(), "k3", "h", bob.clone(), now);
        cache.insert(cache.ticket(), "admin", "h", Caller::Admin, now);

        cache.revoke(&Revoked::Key("k1".into()));
        assert!(cache.get("k1", now).is_none());
        assert!(cache.get("k2", now).is_some());

        cache.revoke(&Revoked::User("alice".into()));
        assert!(cache.get("k2", now).is_none());
        assert_eq!(cache.get("k3", now).map(|e| e.1), Some(bob));
        assert!(cache.get("admin", now).is_some());

        // A lookup that read storage before a revocation must not bring the key back.
        let before = cache.ticket();
        cache.revoke(&Revoked::Key("k4".into()));
        cache.insert(before, "k4", "h", alice("k4"), now);
        assert!(cache.get("k4", now).is_none());
    }
}
