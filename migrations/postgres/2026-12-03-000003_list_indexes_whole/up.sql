-- The list indexes cover every row, deleted ones too.
--
-- As partial indexes (WHERE deleted_at IS NULL) they matched the ownership
-- check of every update by id (`id = $1 AND user_id = $2 AND deleted_at IS
-- NULL`). Until the table's first ANALYZE, PostgreSQL estimates `IS NULL`
-- at 0.5 % of the rows, so it found the partial index on `user_id` as cheap
-- as the primary key and could take it: each such update (a new
-- conversation's title) then read every conversation of its owner. On a
-- fresh database under a burst of sends (autovacuum analyzes a minute
-- later at the soonest), that made each send cost as much as its user's
-- conversation count. Whole indexes are never estimated below the primary
-- key for one id. The list still reads them in order; it skips the
-- deleted rows of its user.
--
-- SQLite keeps its partial indexes: its planner always takes an equality
-- on a unique index first.
DROP INDEX conversations_user_updated_idx;
DROP INDEX conversations_user_created_idx;
CREATE INDEX conversations_user_updated_idx
    ON conversations (user_id, is_archived, updated_at DESC);
CREATE INDEX conversations_user_created_idx
    ON conversations (user_id, is_archived, created_at DESC);
