-- The OpenAI-compatible API's conversations: a caller's conversation so far (the SHA-256 of
-- its `user` tag and messages, as the client will send them back) → the session holding it.
-- Keyed by the session's owner, so one user's hash never finds another's session.
CREATE TABLE openai_conversations (
    user_id TEXT NOT NULL,
    prefix_hash TEXT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, prefix_hash)
);
CREATE INDEX openai_conversations_session ON openai_conversations (session_id);
