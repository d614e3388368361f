//! Revocations told to every instance on one PostgreSQL: `NOTIFY` on a channel of the
//! schema's own (tests and tenants may share a database), carrying ids, never secrets. Each
//! instance keeps one connection that `LISTEN`s, reconnecting when it drops.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;

use super::{Storage, StorageError, run};
use crate::settings::StorageKind;

/// The channel's name: this prefix and the schema the connection uses.
const CHANNEL: &str = "claude_agent_revocations";

impl Storage {
    /// Tells the other instances (no-op on SQLite and `memory`, which are single-instance).
    pub async fn notify_revocation(&self, payload: &str) -> Result<(), StorageError> {
        if self.kind != StorageKind::Postgresql {
            return Ok(());
        }
        let sql = format!("SELECT pg_notify('{CHANNEL}:' || current_schema(), $1)");
        run!(self, [payload, sql], |conn| {
            diesel::sql_query(sql.as_str()).bind::<diesel::sql_types::Text, _>(payload).execute(conn).await?;
        })
    }

    /// Calls `on` with every payload any instance notifies, for as long as the service runs.
    pub fn listen_for_revocations(&self, on: impl Fn(&str) + 'static) {
        let Some(url) = self.database_url.clone() else { return };
        actix_web::rt::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                match listen(&url, &on).await {
                    Ok(()) => delay = Duration::from_millis(500),
                    Err(e) => log::warn!("revocation notices: {e}; listening again in {delay:?}"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }
}

/// One connection's life: LISTEN, then every notification until it drops.
async fn listen(url: &str, on: &impl Fn(&str)) -> Result<(), StorageError> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    #[derive(diesel::QueryableByName)]
    struct Schema {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let schema: Schema = diesel::sql_query("SELECT current_schema() AS name").get_result(&mut conn).await?;
    let channel = format!("{CHANNEL}:{}", schema.name);
    conn.batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\""))).await?;
    let mut notices = std::pin::pin!(conn.notifications_stream());
    while let Some(notice) = notices.next().await {
        on(&notice?.payload);
    }
    Ok(())
}
