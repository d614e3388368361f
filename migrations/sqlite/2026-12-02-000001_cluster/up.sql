-- Instances sharing this database (PostgreSQL; SQLite is single-instance and never writes it).
-- Times are epoch ms of the database's clock, never an instance's.
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY NOT NULL,
    advertise_url TEXT,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- A live session's lease: the instance running its CLI, until `lease_expires_at` unless renewed.
-- Taking it (create, resume, respawn, takeover) bumps `lease_generation`; the owner's writes
-- for the session carry its generation and are refused once another has taken it.
ALTER TABLE sessions ADD COLUMN owner_instance TEXT;
ALTER TABLE sessions ADD COLUMN lease_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX sessions_owner ON sessions (owner_instance);
