//! Users and their API keys.

use diesel::prelude::*;
use diesel_async::AsyncConnection;
use diesel_async::RunQueryDsl;

use super::schema::{
    api_keys, events, messages, sessions, user_budgets, user_credentials, users, webhook_deliveries, webhooks,
};
use super::{ApiKeyRow, Storage, StorageError, UserRow, run};

impl Storage {
    /// Creates a user together with its first key, atomically. `Conflict` if the user exists.
    pub async fn insert_user_with_key(&self, user: &UserRow, key: &ApiKeyRow) -> Result<(), StorageError> {
        run!(self, [user, key], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::insert_into(users::table).values(user).execute(conn).await?;
                diesel::insert_into(api_keys::table).values(key).execute(conn).await?;
                Ok(())
            })
            .await?
        })
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StorageError> {
        run!(self, [], |conn| users::table.select(UserRow::as_select()).order(users::user_id.asc()).load(conn).await?)
    }

    pub async fn get_user(&self, user_id: &str) -> Result<Option<UserRow>, StorageError> {
        run!(self, [user_id], |conn| users::table
            .find(user_id)
            .select(UserRow::as_select())
            .get_result(conn)
            .await
            .optional()?)
    }

    /// Purges a user in one transaction: the user, its keys and credentials, its sessions with their messages
    /// and events, so a user created again with the same id starts with nothing. Returns `None`
    /// if there was no such user, else the ids of the sessions it had (their CLIs must stop).
    pub async fn delete_user(&self, user_id: &str) -> Result<Option<Vec<String>>, StorageError> {
        run!(self, [user_id], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let deleted = diesel::delete(users::table.find(user_id)).execute(conn).await?;
                if deleted == 0 {
                    return Ok(None);
                }
                diesel::delete(api_keys::table.filter(api_keys::user_id.eq(user_id))).execute(conn).await?;
                diesel::delete(user_credentials::table.find(user_id)).execute(conn).await?;
                diesel::delete(user_budgets::table.find(user_id)).execute(conn).await?;
                let hooks = webhooks::table.filter(webhooks::user_id.eq(user_id)).select(webhooks::webhook_id);
                diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::webhook_id.eq_any(hooks)))
                    .execute(conn)
                    .await?;
                diesel::delete(webhooks::table.filter(webhooks::user_id.eq(user_id))).execute(conn).await?;
                let owned = sessions::table
                    .filter(sessions::user_id.eq(user_id))
                    .select(sessions::session_id)
                    .load::<String>(conn)
                    .await?;
                // Explicit rather than by ON DELETE CASCADE, which SQLite honours only with
                // `foreign_keys` on for the connection.
                let of_user = sessions::table.filter(sessions::user_id.eq(user_id)).select(sessions::session_id);
                diesel::delete(events::table.filter(events::session_id.eq_any(of_user))).execute(conn).await?;
                diesel::delete(messages::table.filter(messages::session_id.eq_any(of_user))).execute(conn).await?;
                diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id))).execute(conn).await?;
                Ok(Some(owned))
            })
            .await?
        })
    }

    pub async fn insert_key(&self, key: &ApiKeyRow) -> Result<(), StorageError> {
        run!(self, [key], |conn| {
            diesel::insert_into(api_keys::table).values(key).execute(conn).await?;
        })
    }

    pub async fn find_key(&self, key_id: &str) -> Result<Option<ApiKeyRow>, StorageError> {
        run!(self, [key_id], |conn| api_keys::table
            .find(key_id)
            .select(ApiKeyRow::as_select())
            .get_result(conn)
            .await
            .optional()?)
    }

    /// Revokes one key of a user; false if the user has no such (unrevoked) key.
    pub async fn revoke_key(&self, user_id: &str, key_id: &str, now: i64) -> Result<bool, StorageError> {
        run!(self, [user_id, key_id, now], |conn| {
            diesel::update(api_keys::table.find(key_id))
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::revoked_at.is_null())
                .set(api_keys::revoked_at.eq(now))
                .execute(conn)
                .await?
                > 0
        })
    }

    pub async fn admin_key_exists(&self) -> Result<bool, StorageError> {
        run!(self, [], |conn| {
            let n: i64 = api_keys::table
                .filter(api_keys::is_admin.eq(true))
                .filter(api_keys::revoked_at.is_null())
                .count()
                .get_result(conn)
                .await?;
            n > 0
        })
    }

    pub async fn delete_key(&self, key_id: &str) -> Result<(), StorageError> {
        run!(self, [key_id], |conn| {
            diesel::delete(api_keys::table.find(key_id)).execute(conn).await?;
        })
    }

    /// Every key that belongs to a user (admin keys left out), oldest first.
    pub async fn list_user_keys(&self) -> Result<Vec<ApiKeyRow>, StorageError> {
        run!(self, [], |conn| api_keys::table
            .filter(api_keys::user_id.is_not_null())
            .select(ApiKeyRow::as_select())
            .order(api_keys::created_at.asc())
            .load(conn)
            .await?)
    }
}
