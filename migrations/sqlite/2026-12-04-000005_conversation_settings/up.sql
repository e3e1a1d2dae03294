-- A conversation's own system prompt and default model (issue 15); NULL:
-- the service's. Keep in step with the other backend's folder.
ALTER TABLE conversations ADD COLUMN system_prompt TEXT;
ALTER TABLE conversations ADD COLUMN model TEXT;
