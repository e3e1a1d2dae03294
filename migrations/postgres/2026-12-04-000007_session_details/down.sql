DROP INDEX refresh_families_ended_idx;
DROP INDEX refresh_tokens_expires_idx;
ALTER TABLE refresh_families DROP COLUMN expires_at;
ALTER TABLE refresh_families DROP COLUMN last_used_at;
ALTER TABLE refresh_families DROP COLUMN client_addr;
ALTER TABLE refresh_families DROP COLUMN user_agent;
