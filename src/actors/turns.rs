//! The sessions in a turn on this instance, as their actors know it (no database, no actor
//! message): readers overlay it on the stored status, whose `busy` reaches the database only
//! for a turn that outlasts the writer's grace (see `persist`), so a client that starts a turn
//! and reads the session back sees it busy at once.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Default)]
pub struct RunningTurns(Mutex<HashSet<String>>);

impl RunningTurns {
    pub fn begin(&self, session_id: &str) {
        self.lock().insert(session_id.to_owned());
    }

    pub fn end(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    pub fn running(&self, session_id: &str) -> bool {
        self.lock().contains(session_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_runs_from_its_begin_to_its_end() {
        let turns = RunningTurns::default();
        assert!(!turns.running("s"));
        turns.begin("s");
        assert!(turns.running("s") && !turns.running("t"));
        turns.end("s");
        turns.end("s");
        assert!(!turns.running("s"));
    }
}
