//! Spending limits: a user's own (`PUT /users/{id}/budget`) over the `[budgets]` defaults, what
//! they spent in the current UTC day and month (the turn ledger), the 402 before a turn and
//! the `--max-budget-usd` a CLI starts with.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock;
use crate::error::{ApiError, OverBudget};
use crate::settings::Settings;
use crate::storage::{BudgetRow, Storage};

/// The limits that apply to a user, in USD (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Limits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub per_session_usd: Option<f64>,
}

/// A user's limits against what they spent so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub limits: Limits,
    /// The user's own row, if the admin set one.
    pub own: Option<BudgetRow>,
    pub spent_today_usd: f64,
    pub spent_month_usd: f64,
    /// Epoch ms: the next UTC midnight and the first instant of the next UTC month.
    pub day_resets_at: i64,
    pub month_resets_at: i64,
}

#[derive(Clone)]
pub struct Budgets {
    settings: Arc<Settings>,
    storage: Storage,
}

/// The least `--max-budget-usd` a CLI gets: a budget of 0 is not a positive amount, which the
/// CLI may refuse to start with; a user with nothing left gets 402 before a turn anyway.
const MIN_CLI_BUDGET_USD: f64 = 0.0001;

/// The UTC day and month `now` (epoch ms) is in, as `[start, end)` pairs.
pub use crate::clock::utc_periods as periods;

impl Budgets {
    pub fn new(settings: Arc<Settings>, storage: Storage) -> Self {
        Self { settings, storage }
    }

    /// The user's limits as they apply now, with what was spent today and this month.
    pub async fn standing(&self, user_id: &str) -> Result<Standing, ApiError> {
        self.standing_counted(user_id, true).await
    }

    /// [`Self::standing`]; without `always`, what was spent is only read when a daily or
    /// monthly limit needs it, so the default configuration adds one query to a turn.
    async fn standing_counted(&self, user_id: &str, always: bool) -> Result<Standing, ApiError> {
        let now = clock::now_ms();
        let ((day_start, day_end), (month_start, month_end)) = periods(now);
        let own = self.storage.get_budget(user_id).await?;
        let d = &self.settings.budgets;
        let limits = Limits {
            daily_usd: own.as_ref().and_then(|o| o.daily_usd).or(d.daily_usd),
            monthly_usd: own.as_ref().and_then(|o| o.monthly_usd).or(d.monthly_usd),
            per_session_usd: own.as_ref().and_then(|o| o.per_session_usd).or(d.per_session_usd),
        };
        let (mut spent_today_usd, mut spent_month_usd) = (0.0, 0.0);
        if always || limits.daily_usd.is_some() || limits.monthly_usd.is_some() {
            let spent = self.storage.spent_since(user_id, &[day_start, month_start]).await?;
            (spent_today_usd, spent_month_usd) = (spent[0], spent[1]);
        }
        Ok(Standing {
            limits,
            own,
            spent_today_usd,
            spent_month_usd,
            day_resets_at: day_end,
            month_resets_at: month_end,
        })
    }

    /// 402 `budget_exceeded` when the user is at or over a limit (the session's own total
    /// for the per-session one), naming the first such limit.
    pub async fn check(&self, user_id: &str, session_cost: f64) -> Result<(), ApiError> {
        let s = self.standing_counted(user_id, false).await?;
        let now = clock::now_ms();
        let periods = [
            ("daily", s.limits.daily_usd, s.spent_today_usd, Some(s.day_resets_at)),
            ("monthly", s.limits.monthly_usd, s.spent_month_usd, Some(s.month_resets_at)),
            ("per_session", s.limits.per_session_usd, session_cost, None),
        ];
        for (limit, cap, spent, resets) in periods {
            if let Some(cap) = cap
                && spent >= cap
            {
                return Err(ApiError::BudgetExceeded(OverBudget {
                    limit,
                    limit_usd: cap,
                    spent_usd: spent,
                    resets_at: resets.map(clock::rfc3339),
                    retry_after_secs: resets.map(|at| ((at - now).max(1000) / 1000) as u64),
                }));
            }
        }
        Ok(())
    }

    /// What the user may still spend in this session (the smallest of what each limit leaves),
    /// `None` without limits: the CLI's `--max-budget-usd`.
    pub async fn left(&self, user_id: &str, session_id: &str) -> Result<Option<f64>, ApiError> {
        let s = self.standing_counted(user_id, false).await?;
        let session_cost = match s.limits.per_session_usd {
            Some(_) => self.storage.session_cost(session_id).await?.unwrap_or(0.0),
            None => 0.0,
        };
        let left = [
            s.limits.daily_usd.map(|cap| cap - s.spent_today_usd),
            s.limits.monthly_usd.map(|cap| cap - s.spent_month_usd),
            s.limits.per_session_usd.map(|cap| cap - session_cost),
        ];
        Ok(left.into_iter().flatten().reduce(f64::min).map(|usd| usd.max(MIN_CLI_BUDGET_USD)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_are_utc_and_december_rolls_over() {
        // 2026-12-31T13:00:00Z
        let now = 1_798_722_000_000;
        let ((day, day_end), (month, month_end)) = periods(now);
        assert_eq!(clock::rfc3339(day), "2026-12-31T00:00:00.000+00:00");
        assert_eq!(clock::rfc3339(day_end), "2027-01-01T00:00:00.000+00:00");
        assert_eq!(clock::rfc3339(month), "2026-12-01T00:00:00.000+00:00");
        assert_eq!(clock::rfc3339(month_end), "2027-01-01T00:00:00.000+00:00");
        let ((_, _), (feb, mar)) = periods(1_771_000_000_000); // 2026-02-13
        assert_eq!(clock::rfc3339(feb), "2026-02-01T00:00:00.000+00:00");
        assert_eq!(clock::rfc3339(mar), "2026-03-01T00:00:00.000+00:00");
    }
}
