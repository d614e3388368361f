DROP INDEX sessions_owner;
ALTER TABLE sessions DROP COLUMN lease_expires_at;
ALTER TABLE sessions DROP COLUMN lease_generation;
ALTER TABLE sessions DROP COLUMN owner_instance;
DROP TABLE instances;
