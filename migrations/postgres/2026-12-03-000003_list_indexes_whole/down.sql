DROP INDEX conversations_user_updated_idx;
DROP INDEX conversations_user_created_idx;
CREATE INDEX conversations_user_updated_idx
    ON conversations (user_id, is_archived, updated_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX conversations_user_created_idx
    ON conversations (user_id, is_archived, created_at DESC) WHERE deleted_at IS NULL;
