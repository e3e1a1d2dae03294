-- Confab's initial schema (PostgreSQL). Keep in step with ../../sqlite.
-- Ids are UUID text and timestamps are Unix microseconds (BIGINT) so that the
-- one diesel code path reads both backends the same way.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE conversations (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title        TEXT NOT NULL,
    last_message TEXT,
    is_archived  BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at   BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- A user's list, newest first, by either order; deleted rows never listed.
CREATE INDEX conversations_user_updated_idx
    ON conversations (user_id, is_archived, updated_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX conversations_user_created_idx
    ON conversations (user_id, is_archived, created_at DESC) WHERE deleted_at IS NULL;

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    id              TEXT NOT NULL,
    position        BIGINT NOT NULL,
    parent_id       TEXT,
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('in_progress', 'finished_successfully',
                                                    'finished_partial_completion', 'failed')),
    model_slug      TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (conversation_id, id),
    CONSTRAINT messages_position_key UNIQUE (conversation_id, position)
);

-- Finds generations left unfinished (after a crash) without a full scan.
CREATE INDEX messages_in_progress_idx ON messages (status) WHERE status = 'in_progress';
