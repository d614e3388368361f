//! Usage reports: the turn ledger summed by UTC day, user or session over `[from, to)`, and a
//! user's own totals for today and this month against their limits.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::budgets::{Budgets, periods};
use crate::auth::Caller;
use crate::clock;
use crate::error::ApiError;
use crate::storage::{Storage, UsageRow};

/// What a report is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    User,
    Session,
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageReportRow {
    /// The UTC day (`2026-12-01`) by `day`; else the report's range as an ISO 8601 interval
    /// of RFC 3339 times (`from/to`).
    pub period: String,
    /// By `user` and `session`, and by `day` when the report is of one user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// By `session` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub turns: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// A period's totals against its limit (`GET /me/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PeriodUsage {
    pub turns: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    /// Null: no limit.
    pub limit_usd: Option<f64>,
    /// What the limit leaves (0 at or over it); null without a limit.
    pub left_usd: Option<f64>,
    /// RFC 3339, UTC.
    pub resets_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MyUsage {
    pub user_id: String,
    pub today: PeriodUsage,
    pub this_month: PeriodUsage,
    /// The per-session limit (each session's total counts against it); null: none.
    pub per_session_usd: Option<f64>,
}

/// A report's query, as the client wrote it.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Option<String>,
    pub user_id: Option<String>,
}

/// `2026-12-01` (a UTC day) or an RFC 3339 time, as epoch ms.
fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
    time::OffsetDateTime::parse(&full, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::query_validation(field, "must be a date (2026-12-01) or an RFC 3339 time"))
}

#[derive(Default)]
struct Totals {
    turns: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
}

impl Totals {
    fn add(&mut self, row: &UsageRow) {
        self.turns += 1;
        self.input_tokens += row.input_tokens;
        self.output_tokens += row.output_tokens;
        self.cost_usd += row.cost_usd;
    }
}

/// Sums `rows` by `group_by`, in key order (days ascending, then ids).
fn group(rows: &[UsageRow], group_by: GroupBy, one_user: Option<&str>, range: &str) -> Vec<UsageReportRow> {
    let mut groups: BTreeMap<(String, String, String), Totals> = BTreeMap::new();
    for row in rows {
        let key = match group_by {
            GroupBy::Day => (clock::rfc3339(row.finished_at)[..10].to_string(), String::new(), String::new()),
            GroupBy::User => (range.to_string(), row.user_id.clone(), String::new()),
            GroupBy::Session => (range.to_string(), row.user_id.clone(), row.session_id.clone()),
        };
        groups.entry(key).or_default().add(row);
    }
    groups
        .into_iter()
        .map(|((period, user, session), t)| UsageReportRow {
            period,
            user_id: match group_by {
                GroupBy::Day => one_user.map(str::to_string),
                _ => Some(user),
            },
            session_id: (group_by == GroupBy::Session).then_some(session),
            turns: t.turns,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cost_usd: t.cost_usd,
        })
        .collect()
}

/// A usage report: the admin's of everyone (or `user_id`), a user's of themselves.
pub async fn report(storage: &Storage, caller: &Caller, query: UsageQuery) -> Result<Vec<UsageReportRow>, ApiError> {
    let user_id = caller.visible_user(query.user_id.as_deref())?;
    let group_by = match query.group_by.as_deref() {
        None | Some("") | Some("day") => GroupBy::Day,
        Some("user") => GroupBy::User,
        Some("session") => GroupBy::Session,
        Some(_) => return Err(ApiError::query_validation("group_by", "must be one of day, user, session")),
    };
    let now = clock::now_ms();
    let ((_, today_end), (month_start, _)) = periods(now);
    let from = match query.from.as_deref() {
        Some(t) if !t.is_empty() => parse_time("from", t)?,
        _ => month_start,
    };
    let to = match query.to.as_deref() {
        Some(t) if !t.is_empty() => parse_time("to", t)?,
        _ => today_end,
    };
    if from >= to {
        return Err(ApiError::query_validation("to", "must be after `from`"));
    }
    let rows = storage.list_usage(user_id.as_deref(), from, to).await?;
    let range = format!("{}/{}", clock::rfc3339(from), clock::rfc3339(to));
    Ok(group(&rows, group_by, user_id.as_deref(), &range))
}

/// The user's totals for the current UTC day and month against their limits.
pub async fn mine(storage: &Storage, budgets: &Budgets, user_id: &str) -> Result<MyUsage, ApiError> {
    let standing = budgets.standing(user_id).await?;
    let ((day_start, day_end), (month_start, month_end)) = periods(clock::now_ms());
    let rows = storage.list_usage(Some(user_id), month_start, month_end).await?;
    let (mut today, mut month) = (Totals::default(), Totals::default());
    for row in &rows {
        month.add(row);
        if row.finished_at >= day_start {
            today.add(row);
        }
    }
    let against = |t: Totals, limit: Option<f64>, resets: i64| PeriodUsage {
        left_usd: limit.map(|l| (l - t.cost_usd).max(0.0)),
        turns: t.turns,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cost_usd: t.cost_usd,
        limit_usd: limit,
        resets_at: clock::rfc3339(resets),
    };
    Ok(MyUsage {
        user_id: user_id.to_string(),
        today: against(today, standing.limits.daily_usd, day_end),
        this_month: against(month, standing.limits.monthly_usd, month_end),
        per_session_usd: standing.limits.per_session_usd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, session: &str, at: i64, cost: f64) -> UsageRow {
        UsageRow {
            user_id: user.into(),
            session_id: session.into(),
            finished_at: at,
            cost_usd: cost,
            input_tokens: 10,
            output_tokens: 2,
        }
    }

    #[test]
    fn rows_are_summed_by_day_user_and_session() {
        let day = 86_400_000;
        let rows = [row("a", "s1", 0, 0.5), row("b", "s2", 10, 0.25), row("a", "s3", day + 1, 1.0)];
        let by_day = group(&rows, GroupBy::Day, None, "r");
        assert_eq!(
            by_day.iter().map(|r| (r.period.as_str(), r.turns, r.cost_usd)).collect::<Vec<_>>(),
            [("1970-01-01", 2, 0.75), ("1970-01-02", 1, 1.0)]
        );
        let by_user = group(&rows, GroupBy::User, None, "r");
        assert_eq!(
            by_user.iter().map(|r| (r.user_id.as_deref(), r.input_tokens, r.cost_usd)).collect::<Vec<_>>(),
            [(Some("a"), 20, 1.5), (Some("b"), 10, 0.25)]
        );
        assert_eq!(group(&rows, GroupBy::Session, None, "r").len(), 3);
        assert!(parse_time("from", "2026-12-01").is_ok() && parse_time("to", "2026-12-01T10:00:00+00:00").is_ok());
        assert!(parse_time("from", "yesterday").is_err());
    }
}
