-- Webhook subscriptions: a user's (user_id) or the admin's for every user (user_id NULL).
-- `events` is the subscribed event types between commas (",turn.completed,session.idle,"), so
-- the outbox can match them with LIKE in the transaction that writes the event. `sealed_secret`
-- is the signing secret sealed under the credentials key (XChaCha20-Poly1305), never plaintext.
CREATE TABLE webhooks (
    webhook_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    sealed_secret TEXT NOT NULL,
    include_text BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_user ON webhooks (user_id);

-- The outbox: one row per event and subscription, written before anything is sent (in the
-- same transaction as the event where there is one), so a delivery survives a restart.
-- `message_id` is the `webhook-id` header, the same on every attempt. `claimed_until` is the
-- lease of the instance sending it. status: pending, delivered, failed.
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    claimed_until BIGINT,
    last_status_code BIGINT,
    last_error TEXT,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);

-- budget.reached is sent once per user, limit and period: a row here says it was.
CREATE TABLE webhook_budget_marks (
    user_id TEXT NOT NULL,
    budget_limit TEXT NOT NULL,
    period_start TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, budget_limit, period_start)
);
