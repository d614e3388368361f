//! Users' spending limits (one row per user) and the per-turn usage ledger that budgets and
//! usage reports read (written by `finish_turn`, in the turn's transaction).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::{sessions, turn_usage, user_budgets};
use super::{SessionRow, Storage, StorageError, run};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = user_budgets, treat_none_as_null = true)]
pub struct BudgetRow {
    pub user_id: String,
    /// `None`: the `[budgets]` default applies.
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub per_session_usd: Option<f64>,
    pub updated_at: i64,
}

/// One finished turn as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = turn_usage)]
pub struct UsageRow {
    pub user_id: String,
    pub session_id: String,
    pub finished_at: i64,
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl Storage {
    /// Stores (or replaces) a user's limits.
    pub async fn put_budget(&self, row: &BudgetRow) -> Result<(), StorageError> {
        run!(self, [row], |conn| {
            diesel::insert_into(user_budgets::table)
                .values(row)
                .on_conflict(user_budgets::user_id)
                .do_update()
                .set(row)
                .execute(conn)
                .await?;
        })
    }

    pub async fn get_budget(&self, user_id: &str) -> Result<Option<BudgetRow>, StorageError> {
        run!(self, [user_id], |conn| user_budgets::table
            .find(user_id)
            .select(BudgetRow::as_select())
            .get_result(conn)
            .await
            .optional()?)
    }

    /// A session and its owner's budget row, in one operation (what a turn reads first).
    pub async fn get_session_and_budget(
        &self,
        session_id: &str,
    ) -> Result<Option<(SessionRow, Option<BudgetRow>)>, StorageError> {
        run!(self, [session_id], |conn| {
            let session: Option<SessionRow> =
                sessions::table.find(session_id).select(SessionRow::as_select()).get_result(conn).await.optional()?;
            match session {
                Some(row) => {
                    let budget = user_budgets::table
                        .find(&row.user_id)
                        .select(BudgetRow::as_select())
                        .get_result(conn)
                        .await
                        .optional()?;
                    Some((row, budget))
                }
                None => None,
            }
        })
    }

    /// What the user spent on turns finished at or after each of `since` (epoch ms), in one
    /// connection: `[today, this month]` for a budget check.
    pub async fn spent_since(&self, user_id: &str, since: &[i64]) -> Result<Vec<f64>, StorageError> {
        let since = since.to_vec();
        run!(self, [user_id, since], |conn| {
            let mut spent = Vec::with_capacity(since.len());
            for from in since.iter() {
                let sum: Option<f64> = turn_usage::table
                    .filter(turn_usage::user_id.eq(user_id))
                    .filter(turn_usage::finished_at.ge(*from))
                    .select(diesel::dsl::sum(turn_usage::cost_usd))
                    .get_result(conn)
                    .await?;
                spent.push(sum.unwrap_or(0.0));
            }
            spent
        })
    }

    /// What each user spent on turns finished at or after `since` (those who spent only).
    pub async fn spent_by_user_since(&self, since: i64) -> Result<Vec<(String, f64)>, StorageError> {
        let rows = run!(self, [since], |conn| turn_usage::table
            .filter(turn_usage::finished_at.ge(*since))
            .group_by(turn_usage::user_id)
            .select((turn_usage::user_id, diesel::dsl::sum(turn_usage::cost_usd)))
            .load::<(String, Option<f64>)>(conn)
            .await?)?;
        Ok(rows.into_iter().map(|(user, sum)| (user, sum.unwrap_or(0.0))).collect())
    }

    /// Every user's own limits.
    pub async fn list_budgets(&self) -> Result<Vec<BudgetRow>, StorageError> {
        run!(self, [], |conn| user_budgets::table.select(BudgetRow::as_select()).load(conn).await?)
    }

    /// The session's total cost (what its per-session limit counts), `None` if it is gone.
    pub async fn session_cost(&self, session_id: &str) -> Result<Option<f64>, StorageError> {
        run!(self, [session_id], |conn| sessions::table
            .find(session_id)
            .select(sessions::total_cost_usd)
            .get_result(conn)
            .await
            .optional()?)
    }

    /// The turns finished in `[from, to)`, of one user or of everyone, oldest first.
    pub async fn list_usage(&self, user_id: Option<&str>, from: i64, to: i64) -> Result<Vec<UsageRow>, StorageError> {
        let user_id = user_id.map(str::to_owned);
        run!(self, [user_id, from, to], |conn| {
            let mut query = turn_usage::table
                .filter(turn_usage::finished_at.ge(*from))
                .filter(turn_usage::finished_at.lt(*to))
                .select(UsageRow::as_select())
                .order(turn_usage::id.asc())
                .into_boxed();
            if let Some(user) = user_id {
                query = query.filter(turn_usage::user_id.eq(user.clone()));
            }
            query.load(conn).await?
        })
    }
}
