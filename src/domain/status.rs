//! A session's lifecycle status, as stored and as shown.

use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// The CLI is being started.
    Starting,
    /// Live, waiting for a message.
    Active,
    /// Live, a turn is running.
    Busy,
    /// Process stopped (eviction or restart); resumes by itself on the next message.
    Idle,
    /// Closed by its owner; `resume` reopens it.
    Closed,
    /// TTL passed; nothing brings it back.
    Expired,
    /// The CLI could not start or died; `resume` retries.
    Failed,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 7] = [
        SessionStatus::Starting,
        SessionStatus::Active,
        SessionStatus::Busy,
        SessionStatus::Idle,
        SessionStatus::Closed,
        SessionStatus::Expired,
        SessionStatus::Failed,
    ];
    /// Statuses with a live process in some instance.
    pub const LIVE: [SessionStatus; 3] = [SessionStatus::Starting, SessionStatus::Active, SessionStatus::Busy];
    pub const LIVE_STRS: [&'static str; 3] = ["starting", "active", "busy"];
    /// Statuses the TTL applies to (everything not closed or expired).
    pub const OPEN: [SessionStatus; 5] = [
        SessionStatus::Starting,
        SessionStatus::Active,
        SessionStatus::Busy,
        SessionStatus::Idle,
        SessionStatus::Failed,
    ];
    pub const OPEN_STRS: [&'static str; 5] = ["starting", "active", "busy", "idle", "failed"];
    /// Statuses `resume` reopens.
    pub const RESUMABLE: [SessionStatus; 3] = [SessionStatus::Closed, SessionStatus::Idle, SessionStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Starting => "starting",
            SessionStatus::Active => "active",
            SessionStatus::Busy => "busy",
            SessionStatus::Idle => "idle",
            SessionStatus::Closed => "closed",
            SessionStatus::Expired => "expired",
            SessionStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SessionStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_live(self) -> bool {
        Self::LIVE.contains(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip_and_match_the_constants() {
        for s in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let live: Vec<&str> = SessionStatus::LIVE.iter().map(|s| s.as_str()).collect();
        assert_eq!(live, SessionStatus::LIVE_STRS);
        let open: Vec<&str> = SessionStatus::OPEN.iter().map(|s| s.as_str()).collect();
        assert_eq!(open, SessionStatus::OPEN_STRS);
        assert!(SessionStatus::LIVE.iter().all(|s| SessionStatus::OPEN.contains(s)));
        assert!(!SessionStatus::OPEN.contains(&SessionStatus::Closed));
        assert!(!SessionStatus::OPEN.contains(&SessionStatus::Expired));
    }
}
