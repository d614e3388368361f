//! How SQLite queries leave the async runtime: a whole operation at a time.
//!
//! diesel-async's `SyncConnectionWrapper` hands every statement (and `BEGIN`/`COMMIT`) to a
//! blocking thread and back: a finished turn's transaction made a dozen thread hops, and those
//! context switches were most of the service's CPU per turn. Instead, a SQLite operation (see
//! `to_completion`) runs from its start to its end on one blocking thread, driven there with
//! `Handle::block_on`, and its statements run inline ([`Inline`]): one hop there and one back
//! per operation, whatever its number of statements. (A multi-thread runtime of its own cost
//! more: its idle workers searching for work made three times the context switches.) Such an
//! operation never yields between two statements (every statement's future is ready at once),
//! so nothing else waits on its thread meanwhile. An operation takes a blocking thread only
//! once it holds one of the storage's permits (one per pooled connection), so a burst of
//! requests queues on the callers' threads instead of starting a thread each.

use std::error::Error;

use diesel_async::sync_connection_wrapper::SpawnBlocking;
use futures_util::future::{BoxFuture, FutureExt};

/// Runs a SQLite statement right where it is asked for: only ever on a thread that may block
/// (a blocking thread running the operation, the migration harness).
pub struct Inline;

impl SpawnBlocking for Inline {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        futures_util::future::ready(Ok(task())).boxed()
    }

    fn get_runtime() -> Self {
        Inline
    }
}
