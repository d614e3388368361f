//! The session actors turns were last sent to, so a warm session's next turn goes straight
//! to its actor instead of first asking the registry (a round trip to the registry's thread
//! on every turn). Weak: an entry never keeps an actor alive. An actor that has stopped is
//! not handed out; one that is stopping answers the turn `Gone`, and the caller then forgets
//! it ([`RecentActors::forget`]) and asks the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::actors::{SessionHandle, WeakSessionHandle};

/// Entries at most before the dead ones are swept (sessions whose actor has gone since).
const SWEEP_AT: usize = 4096;

/// A handle with a form that does not keep what it names alive.
pub(super) trait Downgrade: Sized {
    type Weak;
    fn downgrade(&self) -> Self::Weak;
    /// `None` once what it named is gone.
    fn upgrade(weak: &Self::Weak) -> Option<Self>;
}

impl Downgrade for SessionHandle {
    type Weak = WeakSessionHandle;
    fn downgrade(&self) -> WeakSessionHandle {
        SessionHandle::downgrade(self)
    }
    fn upgrade(weak: &WeakSessionHandle) -> Option<SessionHandle> {
        weak.upgrade()
    }
}

pub(super) struct RecentActors<H: Downgrade = SessionHandle> {
    entries: Arc<Mutex<HashMap<String, H::Weak>>>,
}

impl<H: Downgrade> Clone for RecentActors<H> {
    fn clone(&self) -> Self {
        Self { entries: self.entries.clone() }
    }
}

impl<H: Downgrade> Default for RecentActors<H> {
    fn default() -> Self {
        Self { entries: Default::default() }
    }
}

impl<H: Downgrade> RecentActors<H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, H::Weak>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's actor, if one was recorded and is still running.
    pub(super) fn get(&self, session_id: &str) -> Option<H> {
        let mut entries = self.lock();
        let found = H::upgrade(entries.get(session_id)?);
        if found.is_none() {
            entries.remove(session_id);
        }
        found
    }

    pub(super) fn record(&self, session_id: &str, actor: &H) {
        let mut entries = self.lock();
        if entries.len() >= SWEEP_AT && !entries.contains_key(session_id) {
            entries.retain(|_, weak| H::upgrade(weak).is_some());
        }
        entries.insert(session_id.to_string(), actor.downgrade());
    }

    /// The actor refused a turn as `Gone`: the next look goes to the registry.
    pub(super) fn forget(&self, session_id: &str) {
        self.lock().remove(session_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;

    struct Stand(Arc<()>);

    impl Downgrade for Stand {
        type Weak = Weak<()>;
        fn downgrade(&self) -> Weak<()> {
            Arc::downgrade(&self.0)
        }
        fn upgrade(weak: &Weak<()>) -> Option<Stand> {
            weak.upgrade().map(Stand)
        }
    }

    fn len(recent: &RecentActors<Stand>) -> usize {
        recent.lock().len()
    }

    #[test]
    fn only_live_actors_are_handed_out_and_dead_ones_are_swept() {
        let recent = RecentActors::<Stand>::default();
        let actor = Stand(Arc::new(()));
        recent.record("s1", &actor);
        assert!(recent.get("s1").is_some());
        recent.forget("s1");
        assert!(recent.get("s1").is_none(), "forgotten");

        recent.record("s1", &actor);
        drop(actor);
        assert!(recent.get("s1").is_none(), "a gone actor is not handed out");
        assert_eq!(len(&recent), 0, "and its entry goes");

        for i in 0..SWEEP_AT {
            recent.record(&format!("gone{i}"), &Stand(Arc::new(())));
        }
        let live = Stand(Arc::new(()));
        recent.record("live", &live);
        assert_eq!(len(&recent), 1, "the sweep kept the live one only");
        assert!(recent.get("live").is_some());
    }
}
