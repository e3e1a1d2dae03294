-- What a user sees of their sessions (issue 16): where each was opened
-- from, when it was last used and when it ends. Keep in step with the
-- other backend's folder.
ALTER TABLE refresh_families ADD COLUMN user_agent TEXT;
ALTER TABLE refresh_families ADD COLUMN client_addr TEXT;
ALTER TABLE refresh_families ADD COLUMN last_used_at BIGINT;
ALTER TABLE refresh_families ADD COLUMN expires_at BIGINT;

-- Sessions of earlier releases: last used when their newest token was
-- issued, ending when it expires.
UPDATE refresh_families SET
    last_used_at = coalesce((
        SELECT max(t.issued_at) FROM refresh_tokens AS t WHERE t.family_id = refresh_families.id
    ), created_at),
    expires_at = coalesce((
        SELECT max(t.expires_at) FROM refresh_tokens AS t WHERE t.family_id = refresh_families.id
    ), created_at);

-- The sweep of ended sessions and expired tokens.
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
CREATE INDEX refresh_families_ended_idx ON refresh_families (expires_at);
