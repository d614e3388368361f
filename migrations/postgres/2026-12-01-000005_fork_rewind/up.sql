-- Fork and rewind. `messages.cli_uuid`: the CLI's transcript uuid of the message (the user
-- message's is the one the service sent it with; the assistant's is the last assistant
-- message of the turn, where a conversation cut after this turn resumes).
ALTER TABLE messages ADD COLUMN cli_uuid TEXT;
-- A fork's first start: the CLI session its conversation is copied from (`--fork-session`).
ALTER TABLE sessions ADD COLUMN fork_from TEXT;
-- `--resume-session-at` for the next starts, until a turn has continued from there.
ALTER TABLE sessions ADD COLUMN resume_at TEXT;
