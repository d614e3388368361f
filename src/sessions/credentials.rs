//! Users' own credentials as the CLI launch reads them: the stored, sealed set (auth) behind
//! the launch's [`UserEnv`] (cli), which knows nothing of storage or keys.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::auth::credentials::UserCredentials;
use crate::cli::launch::UserEnv;
use crate::error::ApiError;

pub(super) struct LaunchCredentials(pub UserCredentials);

impl UserEnv for LaunchCredentials {
    fn for_launch<'a>(
        &'a self,
        user_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<BTreeMap<String, String>>, ApiError>> + 'a>> {
        Box::pin(self.0.for_launch(user_id))
    }
}
