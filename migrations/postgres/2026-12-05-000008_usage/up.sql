-- Token usage and allowances (issue 16): one row per user, day (UTC, 'YYYY-MM-DD') and
-- model, to which every answer adds its counts. Keep in step with the
-- other backend's folder.
CREATE TABLE usage_daily (
    user_id           TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day               TEXT   NOT NULL,
    model             TEXT   NOT NULL,
    answers           BIGINT NOT NULL,
    estimated_answers BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (user_id, day, model)
);

-- Everyone's usage of a period (an admin's report).
CREATE INDEX usage_daily_day_idx ON usage_daily (day);

-- A user's own token allowances, set by an admin (NULL: the configured
-- default's).
CREATE TABLE user_allowances (
    user_id        TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    daily_tokens   BIGINT,
    monthly_tokens BIGINT
);
