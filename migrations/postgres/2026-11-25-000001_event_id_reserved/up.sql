-- The highest event id an actor may hand out: reserved before use, so ids are never reused
-- after a crash, a respawn or a restart, even when events handed out were never stored.
ALTER TABLE sessions ADD COLUMN event_id_reserved BIGINT NOT NULL DEFAULT 0;
