//! Session rows.

use diesel::prelude::*;
use diesel_async::AsyncConnection;
use diesel_async::RunQueryDsl;

use super::schema::{events, messages, sessions};
use super::{SessionRow, Storage, StorageError, with_conn};
use crate::sessions::SessionStatus;

/// Which sessions a listing returns (newest first).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user_id: Option<String>,
    pub status: Option<SessionStatus>,
    pub limit: i64,
    pub offset: i64,
}

impl Storage {
    pub async fn insert_session(&self, row: &SessionRow) -> Result<(), StorageError> {
        with_conn!(self, |conn| diesel::insert_into(sessions::table)
            .values(row)
            .execute(conn)
            .await?);
        Ok(())
    }

    pub async fn get_session(&self, session_id: &str) -> Result<Option<SessionRow>, StorageError> {
        Ok(with_conn!(self, |conn| {
            sessions::table
                .find(session_id)
                .select(SessionRow::as_select())
                .first(conn)
                .await
                .optional()?
        }))
    }

    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRow>, StorageError> {
        Ok(with_conn!(self, |conn| {
            let mut query = sessions::table
                .select(SessionRow::as_select())
                .order((sessions::created_at.desc(), sessions::session_id.desc()))
                .limit(filter.limit)
                .offset(filter.offset)
                .into_boxed();
            if let Some(user) = &filter.user_id {
                query = query.filter(sessions::user_id.eq(user.clone()));
            }
            if let Some(status) = filter.status {
                query = query.filter(sessions::status.eq(status.as_str()));
            }
            query.load(conn).await?
        }))
    }

    /// Moves a session to `to` if its status is one of `from`, in one statement, so that two
    /// requests cannot both make the same transition. `touch` also sets `last_active_at`.
    /// Returns the row after the change, or `None` if the session was not in a `from` status.
    pub async fn transition_session(
        &self,
        session_id: &str,
        from: &[SessionStatus],
        to: SessionStatus,
        touch: Option<i64>,
    ) -> Result<Option<SessionRow>, StorageError> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        Ok(with_conn!(self, |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let target = sessions::table
                    .filter(sessions::session_id.eq(session_id))
                    .filter(sessions::status.eq_any(&from));
                let n = match touch {
                    Some(at) => {
                        diesel::update(target)
                            .set((
                                sessions::status.eq(to.as_str()),
                                sessions::last_active_at.eq(at),
                            ))
                            .execute(conn)
                            .await?
                    }
                    None => {
                        diesel::update(target)
                            .set(sessions::status.eq(to.as_str()))
                            .execute(conn)
                            .await?
                    }
                };
                if n == 0 {
                    return Ok(None);
                }
                sessions::table
                    .find(session_id)
                    .select(SessionRow::as_select())
                    .first(conn)
                    .await
                    .optional()
            })
            .await?
        }))
    }

    /// Deletes a session with its history and events. False if it did not exist.
    pub async fn purge_session(&self, session_id: &str) -> Result<bool, StorageError> {
        Ok(with_conn!(self, |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::delete(events::table.filter(events::session_id.eq(session_id)))
                    .execute(conn)
                    .await?;
                diesel::delete(messages::table.filter(messages::session_id.eq(session_id)))
                    .execute(conn)
                    .await?;
                let n = diesel::delete(sessions::table.find(session_id))
                    .execute(conn)
                    .await?;
                Ok(n > 0)
            })
            .await?
        }))
    }

    /// At start-up no CLI runs yet: sessions left live by the previous run become `idle`
    /// (they resume on their next message).
    pub async fn mark_live_sessions_idle(&self) -> Result<usize, StorageError> {
        Ok(with_conn!(self, |conn| {
            diesel::update(
                sessions::table.filter(sessions::status.eq_any(SessionStatus::LIVE_STRS)),
            )
            .set(sessions::status.eq(SessionStatus::Idle.as_str()))
            .execute(conn)
            .await?
        }))
    }

    /// Marks every open session inactive since before `cutoff` (epoch ms) as expired and
    /// returns their ids.
    pub async fn expire_sessions_inactive_since(
        &self,
        cutoff: i64,
    ) -> Result<Vec<String>, StorageError> {
        Ok(with_conn!(self, |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let stale = sessions::table
                    .filter(sessions::status.eq_any(SessionStatus::OPEN_STRS))
                    .filter(sessions::last_active_at.lt(cutoff))
                    .select(sessions::session_id)
                    .load::<String>(conn)
                    .await?;
                if !stale.is_empty() {
                    diesel::update(sessions::table.filter(sessions::session_id.eq_any(&stale)))
                        .set(sessions::status.eq(SessionStatus::Expired.as_str()))
                        .execute(conn)
                        .await?;
                }
                Ok(stale)
            })
            .await?
        }))
    }
}

impl Storage {
    /// Sessions that are neither closed nor expired (also a liveness probe for `/health`).
    pub async fn count_open_sessions(&self) -> Result<i64, StorageError> {
        Ok(with_conn!(self, |conn| {
            sessions::table
                .filter(sessions::status.eq_any(SessionStatus::OPEN_STRS))
                .count()
                .get_result(conn)
                .await?
        }))
    }
}
