//! Session rows.

use diesel::prelude::*;
use diesel_async::AsyncConnection;
use diesel_async::RunQueryDsl;

use super::leases::check_fence;
use super::schema::{events, messages, sessions, turn_usage};
use super::webhooks::{Outbox, turn_event, turn_event_type};
use super::{EventRow, NewMessage, SessionRow, Storage, StorageError, run};
use crate::domain::SessionStatus;
use crate::domain::webhooks::WebhookEvent;

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
        run!(self, [row], |conn| {
            diesel::insert_into(sessions::table).values(row).execute(conn).await?;
        })
    }

    pub async fn get_session(&self, session_id: &str) -> Result<Option<SessionRow>, StorageError> {
        run!(self, [session_id], |conn| {
            sessions::table.find(session_id).select(SessionRow::as_select()).get_result(conn).await.optional()?
        })
    }

    pub async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRow>, StorageError> {
        run!(self, [filter], |conn| {
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
                query = query.filter(sessions::status.eq(status));
            }
            query.load(conn).await?
        })
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
        let from = from.to_vec();
        let changed = run!(self, [session_id, from, to, touch], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let target =
                    sessions::table.filter(sessions::session_id.eq(session_id)).filter(sessions::status.eq_any(from));
                let n = match touch {
                    Some(at) => {
                        diesel::update(target)
                            .set((sessions::status.eq(to), sessions::last_active_at.eq(at)))
                            .execute(conn)
                            .await?
                    }
                    None => diesel::update(target).set(sessions::status.eq(to)).execute(conn).await?,
                };
                if n == 0 {
                    return Ok((None, 0));
                }
                // The webhook deliveries of this change commit with it or not at all.
                let added = conn.insert_status_deliveries(session_id, *to, crate::clock::now_ms()).await?;
                let row = sessions::table
                    .find(session_id)
                    .select(SessionRow::as_select())
                    .get_result(conn)
                    .await
                    .optional()?;
                Ok((row, added))
            })
            .await?
        });
        let (row, added) = changed?;
        self.ring_if(added);
        Ok(row)
    }

    /// Deletes a session with its history and events. False if it did not exist.
    pub async fn purge_session(&self, session_id: &str) -> Result<bool, StorageError> {
        run!(self, [session_id], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::delete(events::table.filter(events::session_id.eq(session_id))).execute(conn).await?;
                diesel::delete(messages::table.filter(messages::session_id.eq(session_id))).execute(conn).await?;
                let n = diesel::delete(sessions::table.find(session_id)).execute(conn).await?;
                Ok(n > 0)
            })
            .await?
        })
    }

    /// At start-up no CLI runs yet: sessions left live by the previous run become `idle`
    /// (they resume on their next message).
    pub async fn mark_live_sessions_idle(&self) -> Result<usize, StorageError> {
        run!(self, [], |conn| {
            diesel::update(sessions::table.filter(sessions::status.eq_any(SessionStatus::LIVE)))
                .set(sessions::status.eq(SessionStatus::Idle))
                .execute(conn)
                .await?
        })
    }

    /// Marks every open session inactive since before `cutoff` (epoch ms) as expired and
    /// returns their ids.
    pub async fn expire_sessions_inactive_since(&self, cutoff: i64) -> Result<Vec<String>, StorageError> {
        let (stale, added) = run!(self, [cutoff], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let stale = sessions::table
                    .filter(sessions::status.eq_any(SessionStatus::OPEN))
                    .filter(sessions::last_active_at.lt(cutoff))
                    .select(sessions::session_id)
                    .load::<String>(conn)
                    .await?;
                let mut added = 0;
                if !stale.is_empty() {
                    diesel::update(sessions::table.filter(sessions::session_id.eq_any(&stale)))
                        .set(sessions::status.eq(SessionStatus::Expired))
                        .execute(conn)
                        .await?;
                    let now = crate::clock::now_ms();
                    for id in &stale {
                        added += conn.insert_status_deliveries(id, SessionStatus::Expired, now).await?;
                    }
                }
                Ok((stale, added))
            })
            .await?
        })?;
        self.ring_if(added);
        Ok(stale)
    }
}

impl Storage {
    /// Sessions that are neither closed nor expired (also a liveness probe for `/health`).
    pub async fn count_open_sessions(&self) -> Result<i64, StorageError> {
        run!(self, [], |conn| {
            sessions::table.filter(sessions::status.eq_any(SessionStatus::OPEN)).count().get_result(conn).await?
        })
    }
}

/// Everything a finished turn writes, in one transaction.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub session_id: String,
    pub turn_id: String,
    pub finished_at: i64,
    pub started_at: i64,
    /// The session's total cost after this turn.
    pub total_cost_usd: f64,
    pub turn_cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub last_event_id: i64,
    pub user_text: String,
    pub assistant_text: String,
    /// JSON array of tool calls.
    pub tool_calls: String,
    /// The error code of a failed turn (its webhook event is `turn.failed`).
    pub error_code: Option<String>,
    /// The result's subtype (`success`, `error_max_budget_usd`, `interrupted`, ...).
    pub subtype: Option<String>,
    /// The turn's events not yet stored, and the id up to which stored ones go (the newest
    /// `events.replay` stay).
    pub events: Vec<EventRow>,
    pub trim_events_to: i64,
    /// The CLI's uuid of the user message (the one it was sent with).
    pub user_cli_uuid: Option<String>,
    /// The CLI's uuid of the turn's last assistant message: a fork or a rewind resumes there.
    /// A turn that has one continued the conversation, so the session's `resume_at` is done.
    pub leaf_uuid: Option<String>,
}

impl Storage {
    /// Counts the turn on the session row (message_count, last_active_at, cost, usage, last
    /// event id, busy → active), stores its two messages and its webhook deliveries, atomically.
    /// Returns the session's owner (`None` if the session is gone).
    pub async fn finish_turn(&self, r: &TurnRecord) -> Result<Option<String>, StorageError> {
        let fence = self.fence.clone();
        let (owner, added) = run!(self, [r, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, &r.session_id, fence.as_deref());
                // busy (or starting: the writer may have skipped a short turn's `busy`, merged
                // with the `active` of the CLI's start) → active, in the same statement (diesel
                // prepares every UPDATE anew).
                let active_if_busy = diesel::dsl::case_when(
                    sessions::status.eq(SessionStatus::Busy).or(sessions::status.eq(SessionStatus::Starting)),
                    SessionStatus::Active.into_sql::<diesel::sql_types::Text>(),
                )
                .otherwise(sessions::status);
                // A rewound or forked conversation continued: later starts resume its latest.
                let resume_at = diesel::dsl::case_when(
                    r.leaf_uuid.is_some().into_sql::<diesel::sql_types::Bool>(),
                    None::<String>.into_sql::<diesel::sql_types::Nullable<diesel::sql_types::Text>>(),
                )
                .otherwise(sessions::resume_at);
                diesel::update(sessions::table.find(&r.session_id))
                    .set((
                        sessions::message_count.eq(sessions::message_count + 1),
                        sessions::last_active_at.eq(r.finished_at),
                        sessions::total_cost_usd.eq(r.total_cost_usd),
                        sessions::input_tokens.eq(sessions::input_tokens + r.input_tokens),
                        sessions::output_tokens.eq(sessions::output_tokens + r.output_tokens),
                        sessions::last_event_id.eq(r.last_event_id),
                        sessions::status.eq(active_if_busy),
                        sessions::resume_at.eq(resume_at),
                    ))
                    .execute(conn)
                    .await?;
                // What budgets and usage reports count, committed with the turn or not at all.
                let owner: Option<String> =
                    sessions::table.find(&r.session_id).select(sessions::user_id).get_result(conn).await.optional()?;
                let mut added = 0;
                if let Some(user_id) = &owner {
                    // The event is built only for a user some hook may want it for.
                    if conn.subscribed(user_id, turn_event_type(r)).await? {
                        added = conn.insert_deliveries(user_id, &turn_event(r, user_id), r.finished_at).await?;
                    }
                    diesel::insert_into(turn_usage::table)
                        .values((
                            turn_usage::user_id.eq(user_id),
                            turn_usage::session_id.eq(&r.session_id),
                            turn_usage::turn_id.eq(&r.turn_id),
                            turn_usage::finished_at.eq(r.finished_at),
                            turn_usage::cost_usd.eq(r.turn_cost_usd),
                            turn_usage::input_tokens.eq(r.input_tokens),
                            turn_usage::output_tokens.eq(r.output_tokens),
                        ))
                        .execute(conn)
                        .await?;
                }
                let user = NewMessage {
                    session_id: &r.session_id,
                    turn_id: &r.turn_id,
                    role: "user",
                    text: &r.user_text,
                    tool_calls: "[]",
                    created_at: r.started_at,
                    cost_usd: None,
                    cli_uuid: r.user_cli_uuid.as_deref(),
                };
                let assistant = NewMessage {
                    role: "assistant",
                    text: &r.assistant_text,
                    tool_calls: &r.tool_calls,
                    created_at: r.finished_at,
                    cost_usd: Some(r.turn_cost_usd),
                    cli_uuid: r.leaf_uuid.as_deref(),
                    ..user.clone()
                };
                for message in [&user, &assistant] {
                    diesel::insert_into(messages::table).values(message).execute(conn).await?;
                }
                if !r.events.is_empty() {
                    conn.insert_event_rows(kept_events(&r.events, r.trim_events_to)).await?;
                    diesel::delete(
                        events::table
                            .filter(events::session_id.eq(&r.session_id))
                            .filter(events::event_id.le(r.trim_events_to)),
                    )
                    .execute(conn)
                    .await?;
                }
                Ok((owner, added))
            })
            .await?
        })?;
        self.ring_if(added);
        Ok(owner)
    }
}

/// One stored message of a conversation.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: i64,
    pub turn_id: String,
    pub role: String,
    pub text: String,
    pub tool_calls: String,
    pub created_at: i64,
    pub cost_usd: Option<f64>,
    pub cli_uuid: Option<String>,
}

impl Storage {
    /// The `limit` latest messages of a session with an id below `before`, oldest first.
    pub async fn list_messages(
        &self,
        session_id: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, StorageError> {
        let mut rows = run!(self, [session_id, before, limit], |conn| {
            let mut query = messages::table
                .filter(messages::session_id.eq(session_id))
                .select(MessageRow::as_select())
                .order(messages::id.desc())
                .limit(*limit)
                .into_boxed();
            if let Some(before) = before {
                query = query.filter(messages::id.lt(*before));
            }
            query.load(conn).await?
        })?;
        rows.reverse();
        Ok(rows)
    }
}

/// Events per INSERT on PostgreSQL: a row per statement (a round trip each) made a turn of
/// 12,000 deltas take a minute to store, which read-your-writes makes the client wait for.
const EVENT_INSERT_CHUNK: usize = 1000;

/// Inserting a batch of event rows, skipping ids already stored (a batch handed again after
/// a failure may be stored in part). One body per backend: diesel-async cannot run a batch
/// INSERT on SQLite, where a statement per row costs no network round trip anyway.
trait InsertEvents {
    async fn insert_event_rows(&mut self, rows: Vec<&EventRow>) -> diesel::QueryResult<()>;
}

impl InsertEvents for diesel_async::AsyncPgConnection {
    async fn insert_event_rows(&mut self, rows: Vec<&EventRow>) -> diesel::QueryResult<()> {
        for chunk in rows.chunks(EVENT_INSERT_CHUNK) {
            diesel::insert_into(events::table).values(chunk.to_vec()).on_conflict_do_nothing().execute(self).await?;
        }
        Ok(())
    }
}

impl InsertEvents for super::SqliteConn {
    async fn insert_event_rows(&mut self, rows: Vec<&EventRow>) -> diesel::QueryResult<()> {
        for row in rows {
            diesel::insert_into(events::table).values(row).on_conflict_do_nothing().execute(self).await?;
        }
        Ok(())
    }
}

/// The rows of a batch the trim to the latest `keep` would not delete right away (ids above
/// `trim_to`): a turn longer than the replay window stores only its tail. Not assumed sorted
/// (a batch handed again may have merged with a later one).
fn kept_events(rows: &[EventRow], trim_to: i64) -> Vec<&EventRow> {
    rows.iter().filter(|r| r.event_id > trim_to).collect()
}

impl Storage {
    /// Stores a batch of events and deletes the session's stored ones up to `trim_to`, in one
    /// transaction; also records the highest id on the session row.
    pub async fn insert_events(&self, rows: &[EventRow], trim_to: i64) -> Result<(), StorageError> {
        let Some(last) = rows.last() else { return Ok(()) };
        let (session_id, last_id) = (last.session_id.clone(), last.event_id);
        let (rows, fence) = (rows.to_vec(), self.fence.clone());
        run!(self, [rows, session_id, last_id, trim_to, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, session_id, fence.as_deref());
                conn.insert_event_rows(kept_events(rows, *trim_to)).await?;
                diesel::delete(
                    events::table.filter(events::session_id.eq(session_id)).filter(events::event_id.le(trim_to)),
                )
                .execute(conn)
                .await?;
                diesel::update(sessions::table.find(session_id))
                    .filter(sessions::last_event_id.lt(last_id))
                    .set(sessions::last_event_id.eq(last_id))
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await?
        })
    }

    /// The newest `limit` stored event ids of a session, newest first.
    pub async fn newest_event_ids(&self, session_id: &str, limit: i64) -> Result<Vec<i64>, StorageError> {
        run!(self, [session_id, limit], |conn| events::table
            .filter(events::session_id.eq(session_id))
            .select(events::event_id)
            .order(events::event_id.desc())
            .limit(*limit)
            .load(conn)
            .await?)
    }

    /// Stored events of a session after `after`, oldest first.
    pub async fn list_events(&self, session_id: &str, after: i64) -> Result<Vec<EventRow>, StorageError> {
        run!(self, [session_id, after], |conn| events::table
            .filter(events::session_id.eq(session_id))
            .filter(events::event_id.gt(after))
            .select(EventRow::as_select())
            .order(events::event_id.asc())
            .load(conn)
            .await?)
    }
}

impl Storage {
    /// Adds `tool` to the session's `allowed_tools` option ("always allow"), so a respawned
    /// CLI does not ask again.
    pub async fn allow_tool(&self, session_id: &str, tool: &str) -> Result<(), StorageError> {
        let fence = self.fence.clone();
        run!(self, [session_id, tool, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, session_id, fence.as_deref());
                let options: Option<String> =
                    sessions::table.find(session_id).select(sessions::options).get_result(conn).await.optional()?;
                let Some(options) = options else { return Ok(()) };
                // Corrupted options stay as they are: rewriting them as `{allowed_tools}` would
                // turn a launch that fails closed into one on the defaults.
                let Ok(mut options) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&options)
                else {
                    return Err(diesel::result::Error::DeserializationError(
                        format!("stored options of session {session_id} are not a JSON object").into(),
                    ));
                };
                let tools = options.entry("allowed_tools").or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let Some(list) = tools.as_array_mut()
                    && !list.iter().any(|t| t.as_str() == Some(tool.as_str()))
                {
                    list.push(serde_json::Value::String(tool.to_string()));
                }
                diesel::update(sessions::table.find(session_id))
                    .set(sessions::options.eq(serde_json::Value::Object(options).to_string()))
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await?
        })
    }
}

impl Storage {
    /// Sets (or with `None` removes) one of the session's stored options, so the next launch
    /// (respawn or resume) uses it. The row as it is afterwards; `None` if it is gone.
    pub async fn set_option(
        &self,
        session_id: &str,
        name: &str,
        value: Option<serde_json::Value>,
    ) -> Result<Option<SessionRow>, StorageError> {
        run!(self, [session_id, name, value], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let row: Option<SessionRow> = sessions::table
                    .find(session_id)
                    .select(SessionRow::as_select())
                    .get_result(conn)
                    .await
                    .optional()?;
                let Some(mut row) = row else { return Ok(None) };
                // Corrupted options are refused rather than replaced (see `allow_tool`).
                let Ok(mut options) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&row.options)
                else {
                    return Err(diesel::result::Error::DeserializationError(
                        format!("stored options of session {session_id} are not a JSON object").into(),
                    ));
                };
                match value {
                    Some(v) => options.insert(name.to_string(), v.clone()),
                    None => options.remove(name.as_str()),
                };
                row.options = serde_json::Value::Object(options).to_string();
                diesel::update(sessions::table.find(session_id))
                    .set(sessions::options.eq(&row.options))
                    .execute(conn)
                    .await?;
                Ok(Some(row))
            })
            .await?
        })
    }
}

impl Storage {
    /// How many sessions have each status.
    pub async fn count_sessions_by_status(&self) -> Result<Vec<(String, i64)>, StorageError> {
        run!(self, [], |conn| sessions::table
            .group_by(sessions::status)
            .select((sessions::status, diesel::dsl::count_star()))
            .load::<(String, i64)>(conn)
            .await?)
    }
}

impl Storage {
    /// Moves a session to `to` if its status is one of `from`, nothing read back (the session
    /// actor's status changes, off the request path): one statement, or for a status a webhook
    /// event stands for (idle) a transaction that adds its deliveries.
    pub async fn set_status_if(
        &self,
        session_id: &str,
        from: &[SessionStatus],
        to: SessionStatus,
    ) -> Result<(), StorageError> {
        let (from, fence) = (from.to_vec(), self.fence.clone());
        let added = run!(self, [session_id, from, to, fence], |conn| {
            let target =
                sessions::table.filter(sessions::session_id.eq(session_id)).filter(sessions::status.eq_any(from));
            if let (None, [a, b, c], None) = (WebhookEvent::of_status(*to), from.as_slice(), fence) {
                // busy and active, on every turn: one statement, of a fixed shape (an `IN` list
                // is a statement SQLite would prepare again on every run).
                let target = sessions::table
                    .filter(sessions::session_id.eq(session_id))
                    .filter(sessions::status.eq(*a).or(sessions::status.eq(*b)).or(sessions::status.eq(*c)));
                diesel::update(target).set(sessions::status.eq(to)).execute(conn).await?;
                0
            } else if WebhookEvent::of_status(*to).is_none() && fence.is_none() {
                diesel::update(target).set(sessions::status.eq(to)).execute(conn).await?;
                0
            } else {
                // Fenced, or with the deliveries of its webhook event: one transaction.
                conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                    check_fence!(conn, session_id, fence.as_deref());
                    let n = diesel::update(target).set(sessions::status.eq(to)).execute(conn).await?;
                    if n == 0 || WebhookEvent::of_status(*to).is_none() {
                        return Ok(0);
                    }
                    conn.insert_status_deliveries(session_id, *to, crate::clock::now_ms()).await
                })
                .await?
            }
        })?;
        self.ring_if(added);
        Ok(())
    }
}

impl Storage {
    /// Reserves `block` event ids for a new actor of the session and returns the floor: the
    /// actor hands out ids above it, up to the floor plus `block`. The floor is above every
    /// id stored or reserved before, so ids handed out by an earlier actor (even ones never
    /// stored) are never handed out again.
    pub async fn reserve_event_ids(&self, session_id: &str, block: i64) -> Result<i64, StorageError> {
        let fence = self.fence.clone();
        run!(self, [session_id, block, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, session_id, fence.as_deref());
                let (last, reserved): (i64, i64) = sessions::table
                    .find(session_id)
                    .select((sessions::last_event_id, sessions::event_id_reserved))
                    .get_result(conn)
                    .await?;
                let floor = last.max(reserved);
                diesel::update(sessions::table.find(session_id))
                    .set(sessions::event_id_reserved.eq(floor + block))
                    .execute(conn)
                    .await?;
                Ok(floor)
            })
            .await?
        })
    }

    /// Moves the session's reservation up to `up_to` (never down).
    pub async fn extend_event_ids(&self, session_id: &str, up_to: i64) -> Result<(), StorageError> {
        let fence = self.fence.clone();
        run!(self, [session_id, up_to, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, session_id, fence.as_deref());
                diesel::update(sessions::table.find(session_id))
                    .filter(sessions::event_id_reserved.lt(up_to))
                    .set(sessions::event_id_reserved.eq(up_to))
                    .execute(conn)
                    .await
            })
            .await?;
        })
    }

    /// Gives back the unused part of a reservation (`ours`) once every id below `to` is
    /// stored, so the next actor continues without a gap; a no-op if another actor reserved since.
    pub async fn release_event_ids(&self, session_id: &str, ours: i64, to: i64) -> Result<(), StorageError> {
        let fence = self.fence.clone();
        run!(self, [session_id, ours, to, fence], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                check_fence!(conn, session_id, fence.as_deref());
                diesel::update(sessions::table.find(session_id))
                    .filter(sessions::event_id_reserved.eq(ours))
                    .set(sessions::event_id_reserved.eq(to))
                    .execute(conn)
                    .await
            })
            .await?;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> EventRow {
        EventRow { session_id: "s".into(), event_id: id, turn_id: "t".into(), payload: "{}".into(), created_at: 0 }
    }

    #[test]
    fn only_rows_the_trim_would_keep_are_inserted_in_any_order() {
        let rows: Vec<EventRow> = [5, 6, 1, 2, 7].into_iter().map(row).collect();
        let kept: Vec<i64> = kept_events(&rows, 5).iter().map(|r| r.event_id).collect();
        assert_eq!(kept, [6, 7]);
        assert_eq!(kept_events(&rows, 0).len(), 5);
    }
}
