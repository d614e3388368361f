ALTER TABLE sessions DROP COLUMN resume_at;
ALTER TABLE sessions DROP COLUMN fork_from;
ALTER TABLE messages DROP COLUMN cli_uuid;
