//! Users' sealed provider credentials (one row per user).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::schema::{user_credentials, webhooks};
use super::{Storage, StorageError, run};

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = user_credentials)]
pub struct CredentialsRow {
    pub user_id: String,
    /// `CredentialsKey::seal` of the JSON object of the variables.
    pub sealed: String,
    /// JSON array of the variable names, in clear: what `GET` shows.
    pub names: String,
    pub updated_at: i64,
}

impl Storage {
    /// Stores (or replaces) a user's credentials.
    pub async fn put_credentials(&self, row: &CredentialsRow) -> Result<(), StorageError> {
        run!(self, [row], |conn| {
            diesel::insert_into(user_credentials::table)
                .values(row)
                .on_conflict(user_credentials::user_id)
                .do_update()
                .set(row)
                .execute(conn)
                .await?;
        })
    }

    pub async fn get_credentials(&self, user_id: &str) -> Result<Option<CredentialsRow>, StorageError> {
        run!(self, [user_id], |conn| user_credentials::table
            .find(user_id)
            .select(CredentialsRow::as_select())
            .get_result(conn)
            .await
            .optional()?)
    }

    /// False if the user had none.
    pub async fn delete_credentials(&self, user_id: &str) -> Result<bool, StorageError> {
        run!(self, [user_id], |conn| diesel::delete(user_credentials::table.find(user_id)).execute(conn).await? > 0)
    }

    pub async fn list_credentials(&self) -> Result<Vec<CredentialsRow>, StorageError> {
        run!(self, [], |conn| user_credentials::table.select(CredentialsRow::as_select()).load(conn).await?)
    }

    /// Replaces each `(user_id, old, new)` credentials record and each `(webhook_id, old, new)`
    /// webhook secret in one transaction, only where it is still `old`: false (and nothing
    /// changed) if any was changed or removed meanwhile.
    pub async fn reseal_credentials(
        &self,
        changes: &[(String, String, String)],
        webhook_secrets: &[(String, String, String)],
    ) -> Result<bool, StorageError> {
        let changes = changes.to_vec();
        let webhook_secrets = webhook_secrets.to_vec();
        run!(self, [changes, webhook_secrets], |conn| {
            let done = conn
                .transaction::<_, diesel::result::Error, _>(async move |conn| {
                    for (user_id, old, new) in changes.iter() {
                        let n = diesel::update(user_credentials::table.find(user_id))
                            .filter(user_credentials::sealed.eq(old))
                            .set(user_credentials::sealed.eq(new))
                            .execute(conn)
                            .await?;
                        if n != 1 {
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                    }
                    for (webhook_id, old, new) in webhook_secrets.iter() {
                        let n = diesel::update(webhooks::table.find(webhook_id))
                            .filter(webhooks::sealed_secret.eq(old))
                            .set(webhooks::sealed_secret.eq(new))
                            .execute(conn)
                            .await?;
                        if n != 1 {
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                    }
                    Ok(())
                })
                .await;
            match done {
                Ok(()) => true,
                Err(diesel::result::Error::RollbackTransaction) => false,
                Err(e) => return Err(e.into()),
            }
        })
    }
}
