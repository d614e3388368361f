//! Users' own credentials as the CLI launch reads them: the stored, sealed set (auth) behind
//! the launch's [`UserEnv`] (cli), which knows nothing of storage or keys.

use crate::auth::credentials::UserCredentials;
use crate::cli::launch::{UserEnv, UserEnvLookup};

pub(super) struct LaunchCredentials(pub UserCredentials);

impl UserEnv for LaunchCredentials {
    fn for_launch<'a>(&'a self, user_id: &'a str) -> UserEnvLookup<'a> {
        Box::pin(self.0.for_launch(user_id))
    }
}
