DROP TABLE user_credentials;
