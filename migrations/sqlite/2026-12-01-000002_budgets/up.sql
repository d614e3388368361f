-- Each user's own spending limits (USD); a NULL limit falls back to the [budgets] setting.
CREATE TABLE user_budgets (
    user_id TEXT PRIMARY KEY NOT NULL,
    daily_usd DOUBLE,
    monthly_usd DOUBLE,
    per_session_usd DOUBLE,
    updated_at BIGINT NOT NULL
);

-- One row per finished turn, written in the turn's own transaction: what budgets and usage
-- reports count. Not deleted with a purged session: what was spent stays spent.
CREATE TABLE turn_usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    cost_usd DOUBLE NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL
);
CREATE INDEX turn_usage_user_time ON turn_usage (user_id, finished_at);
CREATE INDEX turn_usage_time ON turn_usage (finished_at);

-- The turns stored before this table existed count too (their tokens were kept per session only).
INSERT INTO turn_usage (user_id, session_id, turn_id, finished_at, cost_usd, input_tokens, output_tokens)
SELECT s.user_id, m.session_id, m.turn_id, m.created_at, m.cost_usd, 0, 0
FROM messages m JOIN sessions s ON s.session_id = m.session_id
WHERE m.role = 'assistant' AND m.cost_usd IS NOT NULL;
