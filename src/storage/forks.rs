//! Forks and rewinds of a conversation: its stored history copied up to a message, or cut
//! before one, with where the CLI resumes.

use diesel::prelude::*;
use diesel_async::AsyncConnection;
use diesel_async::RunQueryDsl;

use super::schema::{messages, sessions};
use super::{MessageRow, NewMessage, SessionRow, Storage, StorageError, run};

/// Where a rewound session's CLI continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindTo {
    /// Resume its transcript at this message (`--resume-session-at`).
    At(String),
    /// Nothing is left: a new CLI conversation with this id.
    Fresh(String),
}

impl Storage {
    /// One stored message of a session.
    pub async fn get_message(&self, session_id: &str, id: i64) -> Result<Option<MessageRow>, StorageError> {
        run!(self, [session_id, id], |conn| {
            messages::table
                .filter(messages::id.eq(*id))
                .filter(messages::session_id.eq(session_id))
                .select(MessageRow::as_select())
                .get_result(conn)
                .await
                .optional()?
        })
    }

    /// The last stored message id of a turn (its answer), or of the whole conversation.
    pub async fn last_message_id(&self, session_id: &str, turn_id: Option<&str>) -> Result<Option<i64>, StorageError> {
        let turn_id = turn_id.map(str::to_owned);
        run!(self, [session_id, turn_id], |conn| {
            let mut query = messages::table
                .filter(messages::session_id.eq(session_id))
                .select(diesel::dsl::max(messages::id))
                .into_boxed();
            if let Some(turn) = turn_id {
                query = query.filter(messages::turn_id.eq(turn.clone()));
            }
            query.get_result::<Option<i64>>(conn).await?
        })
    }

    /// The CLI uuid where a conversation cut after message `upto` (inclusive) resumes: the
    /// last assistant message at or before it that has one.
    pub async fn resume_point(&self, session_id: &str, upto: i64) -> Result<Option<String>, StorageError> {
        run!(self, [session_id, upto], |conn| {
            messages::table
                .filter(messages::session_id.eq(session_id))
                .filter(messages::id.le(*upto))
                .filter(messages::role.eq("assistant"))
                .filter(messages::cli_uuid.is_not_null())
                .order(messages::id.desc())
                .select(messages::cli_uuid)
                .limit(1)
                .get_result::<Option<String>>(conn)
                .await
                .optional()?
                .flatten()
        })
    }

    /// Stores a fork: its row, and the source's messages up to `upto` (inclusive) as its own
    /// (its `message_count` is the turns copied). Without `keep_checkpoints` the copied user
    /// messages lose their CLI uuid, so no rewind of the fork restores files to them (the
    /// checkpoints are of the source's directory). Returns the row as stored.
    pub async fn insert_fork(
        &self,
        row: &SessionRow,
        source: &str,
        upto: Option<i64>,
        keep_checkpoints: bool,
    ) -> Result<SessionRow, StorageError> {
        run!(self, [row, source, upto, keep_checkpoints], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                // A write first: on SQLite a transaction that read first cannot take the write
                // lock once another connection wrote meanwhile ("database is locked").
                diesel::insert_into(sessions::table).values(row).execute(conn).await?;
                let copied: Vec<MessageRow> = match upto {
                    Some(upto) => {
                        messages::table
                            .filter(messages::session_id.eq(source))
                            .filter(messages::id.le(*upto))
                            .order(messages::id.asc())
                            .select(MessageRow::as_select())
                            .load(conn)
                            .await?
                    }
                    None => Vec::new(),
                };
                for m in &copied {
                    let new = NewMessage {
                        session_id: &row.session_id,
                        turn_id: &m.turn_id,
                        role: &m.role,
                        text: &m.text,
                        tool_calls: &m.tool_calls,
                        created_at: m.created_at,
                        cost_usd: m.cost_usd,
                        cli_uuid: m.cli_uuid.as_deref().filter(|_| *keep_checkpoints || m.role != "user"),
                    };
                    diesel::insert_into(messages::table).values(&new).execute(conn).await?;
                }
                let mut row = row.clone();
                row.message_count = copied.iter().filter(|m| m.role == "user").count() as i64;
                diesel::update(sessions::table.find(&row.session_id))
                    .set(sessions::message_count.eq(row.message_count))
                    .execute(conn)
                    .await?;
                Ok(row)
            })
            .await?
        })
    }

    /// The sessions of `user_id` forked from the conversation `cli_session_id`.
    pub async fn forks_of(&self, user_id: &str, cli_session_id: &str) -> Result<Vec<SessionRow>, StorageError> {
        run!(self, [user_id, cli_session_id], |conn| {
            sessions::table
                .filter(sessions::user_id.eq(user_id))
                .filter(sessions::fork_from.eq(cli_session_id))
                .select(SessionRow::as_select())
                .load(conn)
                .await?
        })
    }

    /// Cuts a session's history before message `from` (that message and every later one are
    /// deleted, and their turns no longer counted), and sets where its CLI continues.
    /// Returns the row after the change (`None` if the session is gone).
    pub async fn rewind_session(
        &self,
        session_id: &str,
        from: i64,
        to: &RewindTo,
    ) -> Result<Option<SessionRow>, StorageError> {
        run!(self, [session_id, from, to], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                // Writes first (see `insert_fork`), the count of removed turns last.
                let target = sessions::table.find(session_id);
                match to {
                    RewindTo::At(uuid) => {
                        diesel::update(target).set(sessions::resume_at.eq(Some(uuid.clone()))).execute(conn).await?
                    }
                    RewindTo::Fresh(cli_session_id) => {
                        diesel::update(target)
                            .set((
                                sessions::cli_session_id.eq(cli_session_id),
                                sessions::fork_from.eq(None::<String>),
                                sessions::resume_at.eq(None::<String>),
                            ))
                            .execute(conn)
                            .await?
                    }
                };
                let later =
                    || messages::table.filter(messages::session_id.eq(session_id)).filter(messages::id.ge(*from));
                let turns: i64 = later().filter(messages::role.eq("user")).count().get_result(conn).await?;
                diesel::delete(later()).execute(conn).await?;
                diesel::update(sessions::table.find(session_id))
                    .set(sessions::message_count.eq(sessions::message_count - turns))
                    .execute(conn)
                    .await?;
                sessions::table.find(session_id).select(SessionRow::as_select()).get_result(conn).await.optional()
            })
            .await?
        })
    }
}
