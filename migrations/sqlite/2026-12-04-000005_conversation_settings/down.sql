ALTER TABLE conversations DROP COLUMN model;
ALTER TABLE conversations DROP COLUMN system_prompt;
