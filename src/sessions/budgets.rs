//! Spending limits: a user's own (`PUT /users/{id}/budget`) over the `[budgets]` defaults, what
//! they spent in the current UTC day and month (the turn ledger), the 402 before a turn and
//! the `--max-budget-usd` a CLI starts with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// What the users' running turns may still spend, in memory (see [`Budgets::reserve`]).
    holds: Arc<Mutex<Holds>>,
}

/// The running turns' holds, by user: what each turn's CLI may still spend. A spend is
/// either held here (not yet spent) or in the ledger (spent), never neither: a hold goes
/// once its turn's record is committed.
#[derive(Debug, Default)]
struct Holds {
    by_user: HashMap<String, UserHolds>,
    next_id: u64,
}

/// One user's holds (kept once the user had one: a few bytes per user).
#[derive(Debug, Default)]
struct UserHolds {
    held: HashMap<u64, Held>,
    /// Counts releases: a reservation that read the ledger before a release and sees the
    /// holds after it (that turn's cost in neither) reads again.
    released: u64,
}

impl UserHolds {
    fn by_others(&self, session_id: &str) -> f64 {
        self.held.values().filter(|h| h.session_id != session_id).map(|h| h.usd).sum()
    }
}

#[derive(Debug, Clone)]
struct Held {
    session_id: String,
    usd: f64,
}

/// What a turn of a user with a daily or monthly limit holds of what the limits leave, until
/// it is dropped (with the turn, once its record is committed).
#[derive(Debug)]
pub struct BudgetHold {
    holds: Arc<Mutex<Holds>>,
    user_id: String,
    id: u64,
    /// What the turn's CLI may spend: its budget (a CLI started for it gets this).
    pub usd: f64,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = holds.by_user.get_mut(&self.user_id) {
            user.held.remove(&self.id);
            user.released += 1;
        }
    }
}

/// What a turn may spend, once the 402 check passed.
#[derive(Debug)]
pub enum Reserved {
    /// The user's limits do not bound it (none set, or only the session's own).
    Unbounded,
    Held(BudgetHold),
}

/// The least `--max-budget-usd` a CLI gets: a budget of 0 is not a positive amount, which the
/// CLI may refuse to start with; a user with nothing left gets 402 before a turn anyway.
const MIN_CLI_BUDGET_USD: f64 = 0.0001;

/// How many times a reservation reads the ledger again after a release of the same user's.
const MAX_REREADS: u32 = 3;

/// The UTC day and month `now` (epoch ms) is in, as `[start, end)` pairs.
pub use crate::clock::utc_periods as periods;

impl Budgets {
    pub fn new(settings: Arc<Settings>, storage: Storage) -> Self {
        Self { settings, storage, holds: Arc::default() }
    }

    /// The user's limits as they apply now, with what was spent today and this month.
    pub async fn standing(&self, user_id: &str) -> Result<Standing, ApiError> {
        self.standing_counted(user_id, true).await
    }

    /// [`Self::standing`]; without `always`, what was spent is only read when a daily or
    /// monthly limit needs it, so the default configuration adds one query to a turn.
    async fn standing_counted(&self, user_id: &str, always: bool) -> Result<Standing, ApiError> {
        let own = self.storage.get_budget(user_id).await?;
        self.standing_with(user_id, own, always).await
    }

    /// [`Self::standing_counted`] with the user's own row already read.
    async fn standing_with(&self, user_id: &str, own: Option<BudgetRow>, always: bool) -> Result<Standing, ApiError> {
        let now = clock::now_ms();
        let ((day_start, day_end), (month_start, month_end)) = periods(now);
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

    /// The 402 check before a turn, and what the turn may spend: the user's daily and monthly
    /// limits are shared by their sessions, whose turns may run at once, so each running turn
    /// holds what its CLI may still spend, and a turn counts the others' holds as spent. A
    /// turn whose live CLI (`cli_left`: `Some` when the session has one, its `None` for a CLI
    /// without a budget) may spend no more than what is unheld holds that; any other gets
    /// half of what is unheld (see [`share`]), and its CLI is started again with that.
    /// Nothing unheld: 402 with `Retry-After: 1` (holds go when their turns end).
    pub async fn reserve(
        &self,
        user_id: &str,
        session_id: &str,
        session_cost: f64,
        own: Option<BudgetRow>,
        cli_left: impl Future<Output = Option<Option<f64>>>,
    ) -> Result<Reserved, ApiError> {
        let mut cli_left = Some(cli_left);
        let mut asked = None;
        let mut rereads = 0;
        // The user's own row as the caller read it (with the session); read again on a reread.
        let mut own = Some(own);
        loop {
            let released =
                self.holds.lock().unwrap_or_else(|p| p.into_inner()).by_user.get(user_id).map(|u| u.released);
            let s = match own.take() {
                Some(own) => self.standing_with(user_id, own, false).await?,
                None => self.standing_counted(user_id, false).await?,
            };
            refuse_at_a_limit(&s, session_cost)?;
            let shared = shared_left(&s);
            let Some(shared) = shared else { return Ok(Reserved::Unbounded) };
            let own = s.limits.per_session_usd.map(|cap| cap - session_cost);
            if let Some(ask) = cli_left.take() {
                asked = ask.await; // only with a shared limit: the actor is asked nothing else
            }
            let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
            holds.next_id += 1;
            let id = holds.next_id;
            let user = holds.by_user.entry(user_id.to_string()).or_default();
            // A turn ended meanwhile: its cost may be in neither (read again, a few times: a
            // user whose turns keep ending is counted with the last reading).
            if released.unwrap_or(0) != user.released && rereads < MAX_REREADS {
                rereads += 1;
                continue;
            }
            let held = user.by_others(session_id);
            let unheld = shared - held;
            if unheld <= 0.0 {
                // What the others hold counts as spent; it is free again when their turns end.
                let (limit, limit_usd, spent, resets_at) = tightest_shared(&s);
                return Err(ApiError::BudgetExceeded(OverBudget {
                    limit,
                    limit_usd,
                    spent_usd: spent + held,
                    resets_at: Some(clock::rfc3339(resets_at)),
                    retry_after_secs: Some(1),
                }));
            }
            let usd = match asked {
                Some(Some(left)) if left <= unheld => left,
                _ => share(unheld, own).max(MIN_CLI_BUDGET_USD),
            };
            user.held.insert(id, Held { session_id: session_id.to_string(), usd });
            return Ok(Reserved::Held(BudgetHold { holds: self.holds.clone(), user_id: user_id.to_string(), id, usd }));
        }
    }

    /// What a CLI starting now may spend, `None` without limits: its `--max-budget-usd`. For
    /// a turn, what the turn holds; else (a session started ahead of its first turn) half of
    /// what the user's daily and monthly limits leave unheld, and at most what the session's
    /// own limit leaves.
    pub async fn left(&self, user_id: &str, session_id: &str) -> Result<Option<f64>, ApiError> {
        if let Some(held) = self.held(user_id, session_id) {
            return Ok(Some(held.max(MIN_CLI_BUDGET_USD)));
        }
        let s = self.standing_counted(user_id, false).await?;
        let own = match s.limits.per_session_usd {
            Some(cap) => Some(cap - self.storage.session_cost(session_id).await?.unwrap_or(0.0)),
            None => None,
        };
        let left = match shared_left(&s) {
            Some(shared) => {
                let held: f64 = self.held_by_others(user_id, session_id);
                Some(share(shared - held, own))
            }
            None => own,
        };
        Ok(left.map(|usd| usd.max(MIN_CLI_BUDGET_USD)))
    }

    /// What the session's running turn holds, if it holds anything.
    fn held(&self, user_id: &str, session_id: &str) -> Option<f64> {
        let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let user = holds.by_user.get(user_id)?;
        user.held.values().filter(|h| h.session_id == session_id).map(|h| h.usd).reduce(f64::max)
    }

    fn held_by_others(&self, user_id: &str, session_id: &str) -> f64 {
        let holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.by_user.get(user_id).map_or(0.0, |u| u.by_others(session_id))
    }
}

/// 402 `budget_exceeded` when the user is at or over a limit (the session's own total for
/// the per-session one), naming the first such limit.
fn refuse_at_a_limit(s: &Standing, session_cost: f64) -> Result<(), ApiError> {
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

/// What the user's daily and monthly limits leave (the smaller), `None` if neither is set.
fn shared_left(s: &Standing) -> Option<f64> {
    let left = [
        s.limits.daily_usd.map(|cap| cap - s.spent_today_usd),
        s.limits.monthly_usd.map(|cap| cap - s.spent_month_usd),
    ];
    left.into_iter().flatten().reduce(f64::min)
}

/// The daily or monthly limit that leaves the least: its name, cap, what was spent in its
/// period and when that ends (only called when one is set).
fn tightest_shared(s: &Standing) -> (&'static str, f64, f64, i64) {
    let daily = s.limits.daily_usd.map(|cap| ("daily", cap, s.spent_today_usd, s.day_resets_at));
    let monthly = s.limits.monthly_usd.map(|cap| ("monthly", cap, s.spent_month_usd, s.month_resets_at));
    match (daily, monthly) {
        (Some(d), Some(m)) if m.1 - m.2 < d.1 - d.2 => m,
        (Some(d), _) => d,
        (None, Some(m)) => m,
        (None, None) => ("daily", 0.0, 0.0, s.day_resets_at),
    }
}

/// What a CLI starting for a turn may spend: half of what the user's shared limits leave
/// unheld, so that turns of other sessions starting while it runs find the other half (each
/// the half of what is left: together they never pass the limit), and at most what the
/// session's own limit leaves (`own`).
fn share(unheld: f64, own: Option<f64>) -> f64 {
    let half = unheld.max(0.0) / 2.0;
    own.map_or(half, |own| half.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cli_gets_half_of_what_is_unheld_so_turns_at_once_never_pass_the_limit() {
        assert_eq!(share(1.0, None), 0.5);
        assert_eq!(share(1.0, Some(0.25)), 0.25, "the session's own limit, if smaller");
        assert_eq!(share(-0.5, None), 0.0, "nothing unheld, nothing to give");
        // Ten turns start one after the other while the earlier ones run, $1 left.
        let (mut unheld, mut held) = (1.0, 0.0);
        for _ in 0..10 {
            let usd = share(unheld, None);
            assert!(usd > 0.0, "a later one still gets something");
            held += usd;
            unheld -= usd;
        }
        assert!(held < 1.0, "together within what was left: {held}");
    }

    #[test]
    fn a_hold_counts_for_the_users_other_sessions_until_it_is_dropped() {
        let holds = Arc::new(Mutex::new(Holds::default()));
        let hold = |id: u64, session: &str, usd: f64| {
            let mut h = holds.lock().unwrap();
            h.by_user.entry("alice".into()).or_default().held.insert(id, Held { session_id: session.into(), usd });
            BudgetHold { holds: holds.clone(), user_id: "alice".into(), id, usd }
        };
        let (a, b) = (hold(1, "a", 0.5), hold(2, "b", 0.25));
        let others = |session: &str| holds.lock().unwrap().by_user["alice"].by_others(session);
        assert_eq!((others("a"), others("b"), others("c")), (0.25, 0.5, 0.75));
        drop(a);
        assert_eq!(others("c"), 0.25);
        assert_eq!(holds.lock().unwrap().by_user["alice"].released, 1, "a reservation under way reads again");
        drop(b);
        assert_eq!(others("c"), 0.0);
    }

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
