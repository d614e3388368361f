//! Embedded migrations, one directory per backend, run at start-up.

use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{SqliteConn, StorageError};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub(super) async fn run_sqlite(url: &str) -> Result<(), StorageError> {
    run::<SqliteConn>(url, SQLITE_MIGRATIONS).await
}

pub(super) async fn run_postgres(url: &str) -> Result<(), StorageError> {
    run::<AsyncPgConnection>(url, PG_MIGRATIONS).await
}

/// The harness blocks (and would panic with `block_in_place` on actix's current-thread
/// runtime), so it runs on a blocking thread that drives its own connection.
async fn run<C>(url: &str, migrations: EmbeddedMigrations) -> Result<(), StorageError>
where
    C: AsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
{
    let url = url.to_owned();
    let handle = tokio::runtime::Handle::current();
    let applied = tokio::task::spawn_blocking(move || -> Result<Vec<String>, StorageError> {
        let conn: C = handle.block_on(C::establish(&url))?;
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
