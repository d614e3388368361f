//! The OpenAI-compatible API's conversation map: (owner, hash of the conversation so far) →
//! the session that holds it. Rows go with their session (`ON DELETE CASCADE`).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::{openai_conversations, sessions};
use super::{Storage, StorageError, run};

impl Storage {
    /// The session `user_id` continues the conversation hashed `prefix_hash` in, if any. The
    /// session must still be `user_id`'s: the owner is matched on the session row too, so a
    /// mapping can never lead to another user's session.
    pub async fn find_openai_conversation(
        &self,
        user_id: &str,
        prefix_hash: &str,
    ) -> Result<Option<String>, StorageError> {
        run!(self, [user_id, prefix_hash], |conn| openai_conversations::table
            .inner_join(sessions::table.on(sessions::session_id.eq(openai_conversations::session_id)))
            .filter(openai_conversations::user_id.eq(user_id))
            .filter(openai_conversations::prefix_hash.eq(prefix_hash))
            .filter(sessions::user_id.eq(user_id))
            .select(openai_conversations::session_id)
            .get_result::<String>(conn)
            .await
            .optional()?)
    }

    /// Records that `user_id`'s conversation hashed `prefix_hash` continues in `session_id`
    /// (replacing an earlier session for the same conversation: the latest answer wins).
    pub async fn put_openai_conversation(
        &self,
        user_id: &str,
        prefix_hash: &str,
        session_id: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        run!(self, [user_id, prefix_hash, session_id], |conn| {
            diesel::insert_into(openai_conversations::table)
                .values((
                    openai_conversations::user_id.eq(user_id),
                    openai_conversations::prefix_hash.eq(prefix_hash),
                    openai_conversations::session_id.eq(session_id),
                    openai_conversations::created_at.eq(now),
                ))
                .on_conflict((openai_conversations::user_id, openai_conversations::prefix_hash))
                .do_update()
                .set((openai_conversations::session_id.eq(session_id), openai_conversations::created_at.eq(now)))
                .execute(conn)
                .await?;
        })
    }
}
