//! `budget.reached`: after each turn that cost something, for a user some hook listens for, the
//! limits in force (their own over the `[budgets]` defaults) are compared with what was spent;
//! each limit reached is announced once per period: once per UTC day for `daily`, per UTC
//! month for `monthly`, once per session for `per_session` (a limit raised and reached again
//! in the same period is not announced again).

use serde_json::{Map, Value, json};

use crate::clock;
use crate::domain::webhooks::{OutboxEvent, WebhookEvent};
use crate::settings::BudgetSettings;
use crate::storage::{Storage, StorageError, message_id};

/// Checks the user's limits after a turn of `session_id` and queues the events due.
pub async fn after_turn(
    storage: &Storage,
    defaults: &BudgetSettings,
    user_id: &str,
    session_id: &str,
) -> Result<(), StorageError> {
    let own = storage.get_budget(user_id).await?;
    let daily = own.as_ref().and_then(|o| o.daily_usd).or(defaults.daily_usd);
    let monthly = own.as_ref().and_then(|o| o.monthly_usd).or(defaults.monthly_usd);
    let per_session = own.as_ref().and_then(|o| o.per_session_usd).or(defaults.per_session_usd);
    if daily.is_none() && monthly.is_none() && per_session.is_none() {
        return Ok(());
    }
    if !storage.webhook_subscribed(user_id, WebhookEvent::BudgetReached).await? {
        return Ok(());
    }
    let now = clock::now_ms();
    let ((day_start, day_end), (month_start, month_end)) = clock::utc_periods(now);
    let spent = storage.spent_since(user_id, &[day_start, month_start]).await?;
    let session_cost = match per_session {
        Some(_) => storage.session_cost(session_id).await?.unwrap_or(0.0),
        None => 0.0,
    };
    let day = clock::rfc3339(day_start)[..10].to_string();
    let month = clock::rfc3339(month_start)[..7].to_string();
    let checks = [
        ("daily", daily, spent[0], day, Some(day_end)),
        ("monthly", monthly, spent[1], month, Some(month_end)),
        ("per_session", per_session, session_cost, format!("session:{session_id}"), None),
    ];
    for (limit, cap, spent, period, resets) in checks {
        let Some(cap) = cap else { continue };
        if spent < cap {
            continue;
        }
        let data = json!({
            "user_id": user_id,
            "session_id": session_id,
            "limit": limit,
            "limit_usd": cap,
            "spent_usd": spent,
            "resets_at": resets.map(clock::rfc3339),
        });
        let Value::Object(data) = data else { continue };
        let event = OutboxEvent::new(WebhookEvent::BudgetReached, message_id(), clock::rfc3339(now), data, Map::new());
        let label = if limit == "per_session" { "this session".to_string() } else { period.clone() };
        if storage.enqueue_budget_reached(user_id, limit, &period, &event).await? {
            log::info!("user {user_id}: the {limit} budget is reached ({label}); budget.reached queued");
        }
    }
    Ok(())
}
