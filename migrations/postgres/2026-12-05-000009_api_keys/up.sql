-- API keys (issue 16): long-lived credentials a user gives a service, each
-- with its scopes. Only the SHA-256 of the secret is kept. Keep in step
-- with the other backend's folder.
CREATE TABLE api_keys (
    id            TEXT   PRIMARY KEY,
    user_id       TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT   NOT NULL,
    scopes        TEXT   NOT NULL,
    secret_digest TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    UNIQUE (user_id, name)
);

-- The sweep of expired keys.
CREATE INDEX api_keys_expires_at_idx ON api_keys (expires_at);
