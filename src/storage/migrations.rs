//! Embedded migrations, one directory per backend, run at start-up.

use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{SqliteConn, StorageError};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub(super) async fn run_sqlite(url: &str) -> Result<(), StorageError> {
    run::<SqliteConn>(url, SQLITE_MIGRATIONS, "").await
}

/// Instances starting at once on one database migrate one at a time: the first applies the
/// migrations, the others wait for its lock (held by the migrating connection until it
/// closes) and find nothing left to apply.
pub(super) async fn run_postgres(url: &str) -> Result<(), StorageError> {
    let lock = "SELECT pg_advisory_lock(hashtext('claude-agent-http migrations ' || current_schema()))";
    run::<AsyncPgConnection>(url, PG_MIGRATIONS, lock).await
}

/// The harness blocks (and would panic with `block_in_place` on actix's current-thread
/// runtime), so it runs on a blocking thread that drives its own connection.
async fn run<C>(url: &str, migrations: EmbeddedMigrations, first: &'static str) -> Result<(), StorageError>
where
    C: AsyncConnection + diesel_async::SimpleAsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
{
    let url = url.to_owned();
    let handle = tokio::runtime::Handle::current();
    let applied = tokio::task::spawn_blocking(move || -> Result<Vec<String>, StorageError> {
        let mut conn: C = handle.block_on(C::establish(&url))?;
        if !first.is_empty() {
            handle.block_on(conn.batch_execute(first))?;
        }
        let mut harness = AsyncMigrationHarness::new(conn);
        let versions = harness
            .run_pending_migrations(migrations)
            .map_err(|e| StorageError::Query(format!("migration failed: {e}")))?;
        Ok(versions.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|e| StorageError::Query(format!("migration task failed: {e}")))??;
    if !applied.is_empty() {
        log::info!("applied migrations: {}", applied.join(", "));
    }
    Ok(())
}
