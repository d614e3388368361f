ALTER TABLE sessions DROP COLUMN event_id_reserved;
