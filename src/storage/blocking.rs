//! How SQLite queries leave the async runtime.
//!
//! diesel-async's default strategy waits for a cancelled query with `block_in_place`, which
//! panics on actix's current-thread runtimes: a request dropped mid-query (a client that hangs
//! up, a sibling extractor that fails) would take its worker down. This strategy detaches the
//! blocking task instead; the connection stays behind its mutex until the task ends, and a
//! connection left inside a transaction is discarded by the pool's `is_broken` check.

use std::error::Error;

use diesel_async::sync_connection_wrapper::SpawnBlocking;
use futures_util::future::{BoxFuture, FutureExt, TryFutureExt};

pub struct DetachedBlocking;

impl SpawnBlocking for DetachedBlocking {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        tokio::task::spawn_blocking(task).map_err(Box::from).boxed()
    }

    fn get_runtime() -> Self {
        DetachedBlocking
    }
}
