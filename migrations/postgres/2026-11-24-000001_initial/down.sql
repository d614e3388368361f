DROP TABLE events;
DROP TABLE messages;
DROP TABLE sessions;
DROP TABLE api_keys;
DROP TABLE users;
