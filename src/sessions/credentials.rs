//! What a CLI launch reads about its user: their own credentials, the stored, sealed set
//! (auth), and what their budgets leave, behind the launch's [`UserEnv`] (cli), which knows
//! nothing of storage or keys.

use super::budgets::Budgets;
use crate::auth::credentials::UserCredentials;
use crate::cli::launch::{BudgetLookup, UserEnv, UserEnvLookup};

pub(super) struct LaunchCredentials {
    pub credentials: UserCredentials,
    pub budgets: Budgets,
}

impl UserEnv for LaunchCredentials {
    fn for_launch<'a>(&'a self, user_id: &'a str) -> UserEnvLookup<'a> {
        Box::pin(self.credentials.for_launch(user_id))
    }

    fn budget_left<'a>(&'a self, user_id: &'a str, session_id: &'a str) -> BudgetLookup<'a> {
        Box::pin(self.budgets.left(user_id, session_id))
    }
}
