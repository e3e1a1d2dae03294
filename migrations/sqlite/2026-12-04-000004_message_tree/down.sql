DROP INDEX messages_parent_idx;
ALTER TABLE conversations DROP COLUMN current_node;
