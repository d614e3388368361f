CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

-- user_id NULL with is_admin = 1 is the admin key.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT,
    is_admin BOOLEAN NOT NULL DEFAULT 0,
    key_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    subdir TEXT NOT NULL,
    cwd TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_active_at BIGINT NOT NULL,
    message_count BIGINT NOT NULL DEFAULT 0,
    total_cost_usd DOUBLE NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    cli_session_id TEXT NOT NULL,
    last_event_id BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_user_created ON sessions (user_id, created_at);
CREATE INDEX sessions_status ON sessions (status, last_active_at);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    turn_id TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    tool_calls TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    cost_usd DOUBLE
);
CREATE INDEX messages_session ON messages (session_id, id);

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL,
    turn_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, event_id)
);
