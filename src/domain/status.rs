//! A session's lifecycle status, as stored and as shown. Stored as its lowercase name in a
//! text column, typed on both sides of diesel (`ToSql`/`FromSql`), so no caller converts.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

/// Where a session is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Text)]
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
    /// Statuses the TTL applies to (everything not closed or expired).
    pub const OPEN: [SessionStatus; 5] = [
        SessionStatus::Starting,
        SessionStatus::Active,
        SessionStatus::Busy,
        SessionStatus::Idle,
        SessionStatus::Failed,
    ];
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

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<DB: Backend> ToSql<Text, DB> for SessionStatus
where
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        self.as_str().to_sql(out)
    }
}

impl<DB: Backend> FromSql<Text, DB> for SessionStatus
where
    String: FromSql<Text, DB>,
{
    /// A status this build does not know is an error, not a guess: the row is not used.
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let text = String::from_sql(bytes)?;
        SessionStatus::parse(&text).ok_or_else(|| format!("unknown session status `{text}`").into())
    }
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use diesel::{IntoSql, SqliteConnection};

    use super::*;

    #[test]
    fn string_forms_round_trip() {
        for s in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!(SessionStatus::LIVE.iter().all(|s| SessionStatus::OPEN.contains(s)));
        assert!(!SessionStatus::OPEN.contains(&SessionStatus::Closed));
        assert!(!SessionStatus::OPEN.contains(&SessionStatus::Expired));
    }

    #[test]
    fn the_typed_column_round_trips_and_refuses_unknown_text() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        for s in SessionStatus::ALL {
            let back: SessionStatus = diesel::select(s.into_sql::<Text>()).get_result(&mut conn).unwrap();
            assert_eq!(back, s);
            // Stored as the plain name: rows written before the typed column read back.
            let text: String = diesel::select(s.into_sql::<Text>()).get_result(&mut conn).unwrap();
            assert_eq!(text, s.as_str());
        }
        let unknown = diesel::select("sleeping".into_sql::<Text>()).get_result::<SessionStatus>(&mut conn);
        assert!(unknown.is_err(), "an unknown stored status must not load");
    }
}
