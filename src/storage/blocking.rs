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
//!
//! Those threads are [`sqlite_threads`], one small pool for the process, not each runtime's
//! own: every arbiter and HTTP worker is a runtime with a blocking pool of its own, and a
//! burst of 10,000 `/events` replays started 60–90 threads across them (a thread finishing
//! hands its permit on before it is idle again, so the next operation started one more),
//! whose stacks, thread caches and allocator arenas stayed warm after they had gone.

use std::error::Error;
use std::sync::OnceLock;
use std::time::Duration;

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

/// At most this many SQLite operations run at once in the whole process (each holds a
/// pooled connection; a pool larger than this queues its extra operations here): twice the
/// cores, from 4 to 16. SQLite's work is CPU on the page cache; more threads than that only
/// add stacks, thread caches and allocator arenas that a burst leaves behind.
fn sqlite_thread_cap() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (2 * cores).clamp(4, 16)
}

/// How long an idle SQLite thread lives. Short: idle threads wait on one condition variable
/// and are woken in turn, so a steady trickle of operations (the checkpoint every second)
/// keeps alive as many threads as operations within this time.
const IDLE_THREAD: Duration = Duration::from_secs(2);

/// The blocking threads SQLite operations run on: a runtime only for its blocking pool (no
/// task ever runs on its scheduler), capped at [`sqlite_thread_cap`], idle ones kept
/// [`IDLE_THREAD`].
pub fn sqlite_threads() -> Option<&'static tokio::runtime::Handle> {
    static THREADS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    THREADS
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(sqlite_thread_cap())
                .thread_keep_alive(IDLE_THREAD)
                .thread_name("sqlite")
                .build()
                .map_err(|e| log::warn!("no SQLite thread pool ({e}); using each runtime's own"))
                .ok()
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
}
