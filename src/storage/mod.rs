//! Storage: one type over SQLite and PostgreSQL (diesel-async), the backend chosen from the
//! settings. Every query is written once; [`with_conn!`] instantiates it per backend.
//!
//! One row is read by its key with `get_result`, not `first`: `first` binds `LIMIT ?`, and
//! SQLite (3.4x+) re-prepares a statement whose `LIMIT` parameter is bound again, so every
//! use of a cached statement paid a full parse and plan (a quarter of the service's
//! instructions per turn).

mod blocking;
mod budgets;
mod credentials;
mod forks;
mod leases;
mod migrations;
pub mod models;
mod notices;
mod openai;
pub mod schema;
mod sessions;
mod users;
mod wal;
mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel::result::{ConnectionError, DatabaseErrorKind};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

use crate::error::ApiError;
use crate::settings::{SessionSettings, StorageKind};

pub use budgets::{BudgetRow, UsageRow};
pub use credentials::CredentialsRow;
pub use forks::RewindTo;
pub use leases::{InstanceRow, Lease, Take};
pub use models::*;
pub use sessions::{MessageRow, SessionFilter, TurnRecord};
pub use webhooks::{DELIVERED, DeliveryRow, FAILED, PENDING, WebhookRow, message_id};

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, blocking::Inline>;

/// How long a request waits for a connection before the storage counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The database cannot be reached (or is shutting down): 503, try again later.
    Unavailable(String),
    /// A unique key already exists.
    Conflict(String),
    /// A write of a session's former owner, refused: another instance holds its lease now.
    Fenced,
    /// Any other query failure (a bug or a corrupt database).
    Query(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Unavailable(m) => write!(f, "storage unavailable: {m}"),
            StorageError::Conflict(m) => write!(f, "conflict: {m}"),
            StorageError::Fenced => f.write_str("fenced: the session's lease belongs to another instance now"),
            StorageError::Query(m) => write!(f, "query failed: {m}"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<diesel::result::Error> for StorageError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        if leases::is_fenced(&e) {
            return StorageError::Fenced;
        }
        match &e {
            E::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StorageError::Conflict(info.message().to_string())
            }
            E::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, info) => {
                StorageError::Unavailable(info.message().to_string())
            }
            E::DatabaseError(_, info) if is_connection_trouble(info.message()) => {
                StorageError::Unavailable(info.message().to_string())
            }
            _ => StorageError::Query(e.to_string()),
        }
    }
}

/// Errors whose text says the server went away or is busy rather than that the query is wrong
/// (PostgreSQL admin shutdown, SQLite lock or I/O trouble).
fn is_connection_trouble(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["terminating connection", "connection", "shutting down", "database is locked", "disk i/o"]
        .iter()
        .any(|needle| m.contains(needle))
}

impl From<PoolError> for StorageError {
    fn from(e: PoolError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

impl From<ConnectionError> for StorageError {
    fn from(e: ConnectionError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

#[derive(Clone)]
enum Backend {
    /// Operations run on blocking threads, one at a time each (see `blocking`), at most as
    /// many at once as the pool has connections (the semaphore's permits).
    Sqlite(Pool<SqliteConn>, Arc<tokio::sync::Semaphore>),
    Pg(Pool<AsyncPgConnection>),
}

/// The service's storage. Cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
    kind: StorageKind,
    /// `memory` keeps one connection open so the shared in-memory database lives as long as we do.
    _keepalive: Option<Arc<std::sync::Mutex<SqliteConn>>>,
    /// Rung after a commit that added webhook deliveries (the worker waits on it).
    outbox_bell: Arc<tokio::sync::Notify>,
    /// A session writer's lease: its session writes are refused once another instance took it.
    fence: Option<Arc<Lease>>,
    /// PostgreSQL's URL, for the connection that listens for other instances' notices.
    database_url: Option<String>,
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever backend is configured.
/// The body is compiled once per backend, so every query is written once.
macro_rules! with_conn {
    ($storage:expr, |$conn:ident| $body:expr) => {
        match &$storage.backend {
            $crate::storage::Backend::Sqlite(pool, _) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
            $crate::storage::Backend::Pg(pool) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// One storage operation: the arguments named in `[...]` are copied into it (as owned values,
/// seen by the body as references), and it runs with [`with_conn!`] through [`to_completion`].
macro_rules! run {
    ($storage:expr, [$($arg:ident),*], |$conn:ident| $body:expr) => {{
        let storage = $storage.clone();
        let runner = storage.runner();
        $( let $arg = $arg.to_owned(); )*
        $crate::storage::to_completion(runner, async move {
            $( #[allow(unused_variables)] let $arg = &$arg; )*
            Ok($crate::storage::with_conn!(storage, |$conn| $body))
        })
        .await
    }};
}
pub(crate) use run;

/// Where a storage operation runs: SQLite's on a blocking thread, PostgreSQL's on the
/// caller's runtime (its I/O is asynchronous).
pub(crate) enum Runner {
    /// On a blocking thread, once one of these permits is free: an operation waiting for a
    /// connection waits here, on the caller's thread, not on a blocking thread of its own (a
    /// burst of requests would start hundreds of threads that all wait for the pool).
    Blocking(Arc<tokio::sync::Semaphore>),
    Local,
}

/// Runs a storage operation in a task of its own, so it always runs to its end: a request
/// that goes away mid-query (a client hanging up, a sibling extractor failing) can neither
/// leave a write half-done nor hand a connection still in use back to the pool.
pub(crate) async fn to_completion<T: Send + 'static>(
    runner: Runner,
    operation: impl std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    let failed = |e: tokio::task::JoinError| StorageError::Query(format!("storage task failed: {e}"));
    match runner {
        // A task of its own from here too: once asked for, the operation runs.
        Runner::Blocking(slots) => actix_web::rt::spawn(on_sqlite_thread(slots, operation)).await.map_err(failed)?,
        Runner::Local => actix_web::rt::spawn(operation).await.map_err(failed)?,
    }
}

/// Runs a SQLite operation whole on one of [`blocking::sqlite_threads`], once it holds a permit.
async fn on_sqlite_thread<T: Send + 'static>(
    slots: Arc<tokio::sync::Semaphore>,
    operation: impl std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    let failed = |e: tokio::task::JoinError| StorageError::Query(format!("storage task failed: {e}"));
    let slot = slots.acquire_owned().await.map_err(|e| StorageError::Unavailable(e.to_string()))?;
    // The caller's runtime keeps driving its timers (the pool's wait) meanwhile.
    let runtime = tokio::runtime::Handle::current();
    let run = move || {
        let result = runtime.block_on(operation);
        drop(slot);
        result
    };
    match blocking::sqlite_threads() {
        Some(threads) => threads.spawn_blocking(run).await.map_err(failed)?,
        None => tokio::task::spawn_blocking(run).await.map_err(failed)?,
    }
}

/// The database file exists with mode 0600 before SQLite opens it; SQLite gives its WAL and
/// shared-memory files the database file's mode.
fn private_file(path: &std::path::Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| StorageError::Unavailable(format!("cannot create {}: {e}", path.display()));
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(failed)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
    }
    Ok(())
}

impl Storage {
    /// Opens the configured storage and brings its schema up to date.
    pub async fn connect(settings: &SessionSettings) -> Result<Storage, StorageError> {
        match settings.storage {
            StorageKind::Sqlite => {
                let path = &settings.sqlite_path;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StorageError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
                }
                private_file(path)?;
                let url = sqlite_url(path)?;
                // WAL is a property of the file: set once here, before any pooled connection,
                // because switching it takes an exclusive lock that concurrent connections would race for.
                let wal = url.clone();
                to_completion(Runner::Blocking(slots(1)), async move {
                    SqliteConn::establish(&wal).await?.batch_execute("PRAGMA journal_mode=WAL;").await?;
                    Ok(())
                })
                .await?;
                migrations::run_sqlite(&url).await?;
                let storage = Storage {
                    backend: sqlite_backend(&url, settings.pool_size)?,
                    kind: StorageKind::Sqlite,
                    _keepalive: None,
                    outbox_bell: Default::default(),
                    fence: None,
                    database_url: None,
                };
                storage.ping().await?;
                Ok(storage)
            }
            StorageKind::Memory => {
                // A named shared-cache in-memory database: every connection of the pool sees it.
                let url = format!("file:claude-agent-http-{}?mode=memory&cache=shared", uuid::Uuid::new_v4());
                let first = url.clone();
                let keepalive =
                    to_completion(Runner::Blocking(slots(1)), async move { Ok(SqliteConn::establish(&first).await?) })
                        .await?;
                migrations::run_sqlite(&url).await?;
                // One connection: shared-cache mode locks per table, so concurrency buys nothing.
                let storage = Storage {
                    backend: sqlite_backend(&url, 1)?,
                    kind: StorageKind::Memory,
                    _keepalive: Some(Arc::new(std::sync::Mutex::new(keepalive))),
                    outbox_bell: Default::default(),
                    fence: None,
                    database_url: None,
                };
                storage.ping().await?;
                Ok(storage)
            }
            StorageKind::Postgresql => {
                let url = settings.database_url.clone().unwrap_or_default();
                let url_for_notices = url.clone();
                migrations::run_postgres(&url).await?;
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
                let pool = Pool::builder(manager)
                    .max_size(settings.pool_size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .wait_timeout(Some(POOL_TIMEOUT))
                    .create_timeout(Some(POOL_TIMEOUT))
                    .recycle_timeout(Some(POOL_TIMEOUT))
                    .build()
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                let storage = Storage {
                    backend: Backend::Pg(pool),
                    kind: StorageKind::Postgresql,
                    _keepalive: None,
                    outbox_bell: Default::default(),
                    fence: None,
                    database_url: Some(url_for_notices),
                };
                storage.ping().await?;
                Ok(storage)
            }
        }
    }

    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// Where this storage's operations run.
    pub(crate) fn runner(&self) -> Runner {
        match &self.backend {
            Backend::Sqlite(_, slots) => Runner::Blocking(slots.clone()),
            Backend::Pg(_) => Runner::Local,
        }
    }

    /// A trivial round trip: is the database there?
    pub async fn ping(&self) -> Result<(), StorageError> {
        let this = self.clone();
        to_completion(self.runner(), async move {
            with_conn!(this, |conn| conn.batch_execute("SELECT 1").await?);
            Ok(())
        })
        .await
    }
}

fn sqlite_url(path: &Path) -> Result<String, StorageError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| StorageError::Unavailable(format!("sqlite path is not UTF-8: {}", path.display())))
}

/// One permit per pooled connection (see [`Runner::Blocking`]).
fn slots(connections: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(connections.max(1)))
}

/// A SQLite pool, its permits and its upkeep (see [`maintain_sqlite`]).
fn sqlite_backend(url: &str, size: usize) -> Result<Backend, StorageError> {
    let (pool, slots) = (sqlite_pool(url, size)?, slots(size));
    maintain_sqlite(&pool, &slots);
    Ok(Backend::Sqlite(pool, slots))
}

fn sqlite_pool(url: &str, size: usize) -> Result<Pool<SqliteConn>, StorageError> {
    let mut config = ManagerConfig::<SqliteConn>::default();
    // A local file does not go away between two uses: skip the test query on every checkout.
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = SqliteConn::establish(&url).await?;
            // After a checkpoint restarts the WAL, a WAL grown bigger than 64 MiB (a burst) is
            // cut back to that; below it, the file's blocks are reused, not zeroed anew.
            conn.batch_execute(&format!(
                "PRAGMA busy_timeout={BUSY_TIMEOUT_MS}; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; \
                 PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;"
            ))
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(url, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        // The connection used last first: its page cache and prepared statements are warm (one
        // that another connection wrote behind reads its pages again from the WAL).
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    Ok(pool)
}

/// How long a SQLite connection waits for another one's lock.
const BUSY_TIMEOUT_MS: u32 = 5000;

/// How long a pooled SQLite connection may sit unused before it is closed.
const IDLE_CONNECTION: Duration = Duration::from_secs(5);

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The pool's upkeep, in a task of its own for as long as the pool lives:
/// - **checkpoints**: the pooled connections never checkpoint the WAL themselves
///   (`wal_autocheckpoint=0`): SQLite's automatic checkpoint runs inside the commit that
///   crosses 1,000 pages, and its fsyncs made that turn's reply wait milliseconds (the p99
///   overhead per turn was 3–5 ms with it, 0.8 ms without). A checkpoint every second here
///   ([`wal::checkpoint`]) waits for no reader or writer, and keeps the WAL bounded.
/// - **idle connections**: those unused for [`IDLE_CONNECTION`] are closed, all but one. A burst
///   (10,000 `/events` followers replaying at once) opens every connection the pool allows, each
///   with its own page and statement caches, which otherwise stay for good and count toward
///   `api.memory_limit_mb`. Reopening one costs about a millisecond; a steady load keeps the
///   warm ones (the pool hands out the most recently used first).
fn maintain_sqlite(pool: &Pool<SqliteConn>, slots: &Arc<tokio::sync::Semaphore>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let (weak, slots) = (pool.weak(), slots.clone());
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_closing = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            let checkpointing = pool.clone();
            let checkpoint = on_sqlite_thread(slots.clone(), async move {
                let mut conn = checkpointing.get().await?;
                wal::checkpoint(&mut conn).await.map(drop)
            });
            if let Err(e) = checkpoint.await {
                log::warn!("SQLite checkpoint failed (the next one retries): {e}");
            }
            if last_closing.elapsed() < IDLE_CONNECTION {
                continue;
            }
            last_closing = tokio::time::Instant::now();
            let mut kept = 0;
            let closed = pool
                .retain(|_, used| {
                    let keep = kept == 0 || used.last_used() < IDLE_CONNECTION;
                    kept += usize::from(keep);
                    keep
                })
                .removed;
            drop(pool);
            if !closed.is_empty() {
                // Closing a connection can checkpoint the WAL: file I/O, off the runtime.
                let _ = tokio::task::spawn_blocking(move || drop(closed)).await;
            }
        }
    });
}

/// Storage failures as the API reports them (here so the error table depends on nothing).
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(m) => ApiError::StorageUnavailable(m),
            StorageError::Conflict(m) | StorageError::Query(m) => ApiError::Internal(m),
            StorageError::Fenced => ApiError::Internal(StorageError::Fenced.to_string()),
        }
    }
}
