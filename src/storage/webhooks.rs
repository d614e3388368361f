//! Webhook subscriptions and their outbox. A delivery row is written before anything is sent,
//! in the transaction of the event itself where there is one (a finished turn, a status
//! change): one INSERT … SELECT from the subscriptions that match the event and its user.
//! After a commit that added rows the storage rings [`Storage::outbox_bell`], which wakes the
//! delivery worker.

use diesel::dsl::case_when;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::{Map, Value, json};

use super::schema::{sessions, webhook_budget_marks, webhook_deliveries, webhooks};
use super::{Storage, StorageError, TurnRecord, run};
use crate::clock;
use crate::domain::SessionStatus;
use crate::domain::webhooks::{OutboxEvent, WebhookEvent};

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhooks)]
pub struct WebhookRow {
    pub webhook_id: String,
    /// `None`: the admin's hook for every user's events.
    pub user_id: Option<String>,
    pub url: String,
    /// The event types between commas: `,turn.completed,session.idle,`.
    pub events: String,
    /// The signing secret, sealed under the credentials key.
    pub sealed_secret: String,
    pub include_text: bool,
    pub created_at: i64,
}

impl WebhookRow {
    /// `events` as stored, from a list of names.
    pub fn events_column(events: &[WebhookEvent]) -> String {
        let mut names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        format!(",{},", names.join(","))
    }

    pub fn event_names(&self) -> Vec<String> {
        self.events.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    pub id: i64,
    pub webhook_id: String,
    pub message_id: String,
    pub event_type: String,
    pub payload: String,
    pub created_at: i64,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub claimed_until: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// Inserting the deliveries of one event for every subscription that matches it (its type,
/// and the event's user or every user), in the caller's transaction. One body per backend.
pub(super) trait Outbox {
    async fn insert_deliveries(&mut self, user_id: &str, event: &OutboxEvent, now: i64) -> QueryResult<usize>;

    /// Whether any subscription may take `event` of `user_id`: a cached SELECT, so a turn of a
    /// user nobody subscribed for builds no payload and runs no INSERT … SELECT (its `LIKE`
    /// on a bound pattern makes SQLite prepare that statement again on every run).
    async fn subscribed(&mut self, user_id: &str, event: WebhookEvent) -> QueryResult<bool>;

    /// The deliveries of the session's move to `to` (none for a status no event stands for).
    async fn insert_status_deliveries(&mut self, session_id: &str, to: SessionStatus, now: i64) -> QueryResult<usize>;
}

macro_rules! outbox_for {
    ($conn:ty) => {
        impl Outbox for $conn {
            async fn insert_deliveries(&mut self, user_id: &str, event: &OutboxEvent, now: i64) -> QueryResult<usize> {
                if !self.subscribed(user_id, event.event).await? {
                    return Ok(0);
                }
                let matching = webhooks::table
                    .filter(webhooks::events.like(format!("%,{},%", event.event.as_str())))
                    .filter(webhooks::user_id.is_null().or(webhooks::user_id.eq(user_id)))
                    .select((
                        webhooks::webhook_id,
                        event.message_id.clone().into_sql::<Text>(),
                        event.event.as_str().into_sql::<Text>(),
                        case_when(webhooks::include_text, event.payload_with_text.clone().into_sql::<Text>())
                            .otherwise(event.payload.clone().into_sql::<Text>()),
                        now.into_sql::<BigInt>(),
                        PENDING.into_sql::<Text>(),
                        0i64.into_sql::<BigInt>(),
                        Some(now).into_sql::<Nullable<BigInt>>(),
                    ));
                diesel::insert_into(webhook_deliveries::table)
                    .values(matching)
                    .into_columns((
                        webhook_deliveries::webhook_id,
                        webhook_deliveries::message_id,
                        webhook_deliveries::event_type,
                        webhook_deliveries::payload,
                        webhook_deliveries::created_at,
                        webhook_deliveries::status,
                        webhook_deliveries::attempts,
                        webhook_deliveries::next_attempt_at,
                    ))
                    .execute(self)
                    .await
            }

            async fn subscribed(&mut self, user_id: &str, event: WebhookEvent) -> QueryResult<bool> {
                let lists: Vec<String> = webhooks::table
                    .filter(webhooks::user_id.is_null().or(webhooks::user_id.eq(user_id)))
                    .select(webhooks::events)
                    .load(self)
                    .await?;
                Ok(lists.iter().any(|list| may_list(list, event)))
            }

            async fn insert_status_deliveries(
                &mut self,
                session_id: &str,
                to: SessionStatus,
                now: i64,
            ) -> QueryResult<usize> {
                let Some(event) = WebhookEvent::of_status(to) else { return Ok(0) };
                let owner: Option<String> =
                    sessions::table.find(session_id).select(sessions::user_id).get_result(self).await.optional()?;
                match owner {
                    Some(user_id) => {
                        let e = status_event(event, session_id, &user_id, now);
                        self.insert_deliveries(&user_id, &e, now).await
                    }
                    None => Ok(0),
                }
            }
        }
    };
}
outbox_for!(diesel_async::AsyncPgConnection);
outbox_for!(super::SqliteConn);

/// Whether a stored `events` list may name `event`. Case-insensitive, as SQLite's `LIKE`
/// is: this only rules hooks out, the INSERT … SELECT still decides which match.
fn may_list(list: &str, event: WebhookEvent) -> bool {
    let name = event.as_str().as_bytes();
    list.as_bytes()
        .windows(name.len() + 2)
        .any(|w| w[0] == b',' && w[w.len() - 1] == b',' && w[1..w.len() - 1].eq_ignore_ascii_case(name))
}

/// `turn.completed`, or `turn.failed` when the turn ended with an error code.
pub(super) fn turn_event_type(r: &TurnRecord) -> WebhookEvent {
    if r.error_code.is_some() { WebhookEvent::TurnFailed } else { WebhookEvent::TurnCompleted }
}

/// A new `webhook-id`.
pub fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `turn.completed` (or `turn.failed` when the turn ended with an error code) of a record.
pub(super) fn turn_event(r: &TurnRecord, user_id: &str) -> OutboxEvent {
    let event = turn_event_type(r);
    let mut data = object(json!({
        "session_id": r.session_id,
        "user_id": user_id,
        "turn_id": r.turn_id,
        "cost_usd": r.turn_cost_usd,
        "tokens": {"input": r.input_tokens, "output": r.output_tokens},
    }));
    if let Some(code) = &r.error_code {
        data.insert("error_code".into(), Value::from(code.clone()));
    }
    if let Some(subtype) = &r.subtype {
        data.insert("subtype".into(), Value::from(subtype.clone()));
    }
    let text = object(json!({"message": r.user_text, "text": r.assistant_text}));
    OutboxEvent::new(event, message_id(), clock::rfc3339(r.finished_at), data, text)
}

/// `session.idle`, `session.closed` or `session.expired`.
fn status_event(event: WebhookEvent, session_id: &str, user_id: &str, now: i64) -> OutboxEvent {
    let data = object(json!({"session_id": session_id, "user_id": user_id}));
    OutboxEvent::new(event, message_id(), clock::rfc3339(now), data, Map::new())
}

impl Storage {
    pub async fn insert_webhook(&self, row: &WebhookRow) -> Result<(), StorageError> {
        run!(self, [row], |conn| {
            diesel::insert_into(webhooks::table).values(row).execute(conn).await?;
        })
    }

    /// A user's hooks, or (`None`) every hook, oldest first.
    pub async fn list_webhooks(&self, user_id: Option<&str>) -> Result<Vec<WebhookRow>, StorageError> {
        let user_id = user_id.map(str::to_owned);
        run!(self, [user_id], |conn| {
            let mut query = webhooks::table
                .select(WebhookRow::as_select())
                .order((webhooks::created_at.asc(), webhooks::webhook_id.asc()))
                .into_boxed();
            if let Some(user) = user_id {
                query = query.filter(webhooks::user_id.eq(user.clone()));
            }
            query.load(conn).await?
        })
    }

    pub async fn get_webhook(&self, webhook_id: &str) -> Result<Option<WebhookRow>, StorageError> {
        run!(self, [webhook_id], |conn| webhooks::table
            .find(webhook_id)
            .select(WebhookRow::as_select())
            .get_result(conn)
            .await
            .optional()?)
    }

    /// Deletes a hook and its delivery log. False if it did not exist.
    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StorageError> {
        run!(self, [webhook_id], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq(webhook_id)))
                    .execute(conn)
                    .await?;
                Ok(diesel::delete(webhooks::table.find(webhook_id)).execute(conn).await? > 0)
            })
            .await?
        })
    }

    /// The `limit` latest deliveries of a hook, newest first.
    pub async fn list_deliveries(&self, webhook_id: &str, limit: i64) -> Result<Vec<DeliveryRow>, StorageError> {
        run!(self, [webhook_id, limit], |conn| webhook_deliveries::table
            .filter(webhook_deliveries::webhook_id.eq(webhook_id))
            .select(DeliveryRow::as_select())
            .order(webhook_deliveries::id.desc())
            .limit(*limit)
            .load(conn)
            .await?)
    }

    /// Adds the deliveries of an event of `user_id` (in a transaction of its own).
    pub async fn enqueue_webhook_event(&self, user_id: &str, event: &OutboxEvent) -> Result<usize, StorageError> {
        let now = clock::now_ms();
        let n = run!(self, [user_id, event, now], |conn| conn.insert_deliveries(user_id, event, *now).await?)?;
        self.ring_if(n);
        Ok(n)
    }

    /// Adds the deliveries of an event of the session's owner, built from the owner's id (none
    /// if the session is gone).
    pub async fn enqueue_session_webhook_event(
        &self,
        session_id: &str,
        event: impl FnOnce(&str) -> OutboxEvent + 'static,
    ) -> Result<usize, StorageError> {
        let owner: Option<String> = run!(self, [session_id], |conn| sessions::table
            .find(session_id)
            .select(sessions::user_id)
            .get_result(conn)
            .await
            .optional()?)?;
        match owner {
            Some(user_id) => self.enqueue_webhook_event(&user_id, &event(&user_id)).await,
            None => Ok(0),
        }
    }

    /// Leases up to `limit` due deliveries to this instance until `now + lease_ms`, with their
    /// hooks: a row another instance holds (its lease not yet run out) is skipped. The lease
    /// is a conditional UPDATE per row, so of two instances racing for a row one wins.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<(DeliveryRow, WebhookRow)>, StorageError> {
        run!(self, [now, lease_ms, limit], |conn| {
            let free = || webhook_deliveries::claimed_until.is_null().or(webhook_deliveries::claimed_until.lt(*now));
            let due: Vec<i64> = webhook_deliveries::table
                .filter(webhook_deliveries::status.eq(PENDING))
                .filter(webhook_deliveries::next_attempt_at.le(*now))
                .filter(free())
                .order(webhook_deliveries::next_attempt_at.asc())
                .limit(*limit)
                .select(webhook_deliveries::id)
                .load(conn)
                .await?;
            let mut claimed = Vec::with_capacity(due.len());
            for id in due {
                let n = diesel::update(
                    webhook_deliveries::table.find(id).filter(webhook_deliveries::status.eq(PENDING)).filter(free()),
                )
                .set(webhook_deliveries::claimed_until.eq(*now + *lease_ms))
                .execute(conn)
                .await?;
                if n == 1 {
                    claimed.push(id);
                }
            }
            let rows: Vec<DeliveryRow> = webhook_deliveries::table
                .filter(webhook_deliveries::id.eq_any(&claimed))
                .select(DeliveryRow::as_select())
                .order(webhook_deliveries::id.asc())
                .load(conn)
                .await?;
            let ids: Vec<&str> = rows.iter().map(|r| r.webhook_id.as_str()).collect();
            let hooks: Vec<WebhookRow> = webhooks::table
                .filter(webhooks::webhook_id.eq_any(ids))
                .select(WebhookRow::as_select())
                .load(conn)
                .await?;
            rows.into_iter()
                .filter_map(|r| hooks.iter().find(|h| h.webhook_id == r.webhook_id).cloned().map(|h| (r, h)))
                .collect::<Vec<_>>()
        })
    }

    /// When the next pending delivery is due (epoch ms), if any.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>, StorageError> {
        run!(self, [], |conn| webhook_deliveries::table
            .filter(webhook_deliveries::status.eq(PENDING))
            .select(diesel::dsl::min(webhook_deliveries::next_attempt_at))
            .first::<Option<i64>>(conn)
            .await?)
    }

    /// Records an attempt: delivered (`next` is then ignored), or failed with the next attempt
    /// at `next` (`None`: given up, the delivery is `failed`).
    pub async fn record_attempt(
        &self,
        id: i64,
        delivered: bool,
        status_code: Option<i64>,
        error: Option<String>,
        next: Option<i64>,
        now: i64,
    ) -> Result<(), StorageError> {
        run!(self, [id, delivered, status_code, error, next, now], |conn| {
            let status = match (delivered, next) {
                (true, _) => DELIVERED,
                (false, Some(_)) => PENDING,
                (false, None) => FAILED,
            };
            diesel::update(webhook_deliveries::table.find(*id))
                .set((
                    webhook_deliveries::status.eq(status),
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::last_status_code.eq(*status_code),
                    webhook_deliveries::last_error.eq(error.clone()),
                    webhook_deliveries::claimed_until.eq(None::<i64>),
                    webhook_deliveries::next_attempt_at.eq(if *delivered { None } else { *next }),
                    webhook_deliveries::delivered_at.eq(if *delivered { Some(*now) } else { None }),
                ))
                .execute(conn)
                .await?;
        })
    }

    /// Adds the deliveries of `budget.reached` unless it was already sent for this user, limit
    /// and period (`period`: the day, month or session), in one transaction: false if it was.
    pub async fn enqueue_budget_reached(
        &self,
        user_id: &str,
        limit: &str,
        period: &str,
        event: &OutboxEvent,
    ) -> Result<bool, StorageError> {
        let now = clock::now_ms();
        let (first, added) = run!(self, [user_id, limit, period, event, now], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let marked = diesel::insert_into(webhook_budget_marks::table)
                    .values((
                        webhook_budget_marks::user_id.eq(user_id),
                        webhook_budget_marks::budget_limit.eq(limit),
                        webhook_budget_marks::period_start.eq(period),
                        webhook_budget_marks::created_at.eq(*now),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if marked == 0 {
                    return Ok((false, 0));
                }
                Ok((true, conn.insert_deliveries(user_id, event, *now).await?))
            })
            .await?
        })?;
        self.ring_if(added);
        Ok(first)
    }

    /// Removes delivered and failed deliveries of events before `before` (epoch ms), and the
    /// `budget.reached` marks older than `marks_before` (their periods are over). How many
    /// deliveries went.
    pub async fn prune_deliveries(&self, before: i64, marks_before: i64) -> Result<usize, StorageError> {
        run!(self, [before, marks_before], |conn| {
            let n = diesel::delete(
                webhook_deliveries::table
                    .filter(webhook_deliveries::status.ne(PENDING))
                    .filter(webhook_deliveries::created_at.lt(*before)),
            )
            .execute(conn)
            .await?;
            diesel::delete(webhook_budget_marks::table.filter(webhook_budget_marks::created_at.lt(*marks_before)))
                .execute(conn)
                .await?;
            n
        })
    }

    /// Whether any hook subscribes to `event` for `user_id` (theirs or every user's).
    pub async fn webhook_subscribed(&self, user_id: &str, event: WebhookEvent) -> Result<bool, StorageError> {
        run!(self, [user_id, event], |conn| {
            diesel::select(diesel::dsl::exists(
                webhooks::table
                    .filter(webhooks::events.like(format!("%,{},%", event.as_str())))
                    .filter(webhooks::user_id.is_null().or(webhooks::user_id.eq(user_id))),
            ))
            .get_result::<bool>(conn)
            .await?
        })
    }

    /// Every hook's sealed secret, for the credentials key's rotation.
    pub async fn list_webhook_secrets(&self) -> Result<Vec<(String, String)>, StorageError> {
        run!(self, [], |conn| webhooks::table
            .select((webhooks::webhook_id, webhooks::sealed_secret))
            .load::<(String, String)>(conn)
            .await?)
    }

    /// Rings the outbox's bell after a commit that added `n` rows.
    pub(super) fn ring_if(&self, n: usize) {
        if n > 0 {
            self.outbox_bell.notify_one();
        }
    }

    /// Rung after every commit that added deliveries: the delivery worker waits on it.
    pub fn outbox_bell(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox_bell.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_column_is_sorted_deduplicated_and_fenced_with_commas() {
        let col = WebhookRow::events_column(&[
            WebhookEvent::SessionIdle,
            WebhookEvent::TurnCompleted,
            WebhookEvent::SessionIdle,
        ]);
        assert_eq!(col, ",session.idle,turn.completed,");
        let row = WebhookRow {
            webhook_id: "w".into(),
            user_id: None,
            url: "u".into(),
            events: col,
            sealed_secret: String::new(),
            include_text: false,
            created_at: 0,
        };
        assert_eq!(row.event_names(), ["session.idle", "turn.completed"]);
    }

    #[test]
    fn a_list_may_name_an_event_only_whole_and_between_commas() {
        assert!(may_list(",session.idle,turn.completed,", WebhookEvent::TurnCompleted));
        assert!(may_list(",TURN.COMPLETED,", WebhookEvent::TurnCompleted), "LIKE ignores ASCII case");
        assert!(!may_list(",session.idle,", WebhookEvent::TurnCompleted));
        assert!(!may_list(",turn.completed.x,", WebhookEvent::TurnCompleted));
        assert!(!may_list("turn.completed", WebhookEvent::TurnCompleted), "not fenced");
        assert!(!may_list("", WebhookEvent::TurnFailed));
    }
}
