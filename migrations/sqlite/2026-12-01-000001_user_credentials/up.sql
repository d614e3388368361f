-- Each user's own provider credentials: `sealed` is XChaCha20-Poly1305 under the credentials
-- key (never plaintext); `names` (a JSON array of the variable names) is what GET shows.
CREATE TABLE user_credentials (
    user_id TEXT PRIMARY KEY NOT NULL,
    sealed TEXT NOT NULL,
    names TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
