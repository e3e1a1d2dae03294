-- Conversations become trees (issue 15): every message names its parent
-- (edits and regenerations are siblings under one parent), and each
-- conversation keeps the node its current branch ends at. Keep in step with
-- the other backend's folder.
ALTER TABLE conversations ADD COLUMN current_node TEXT;

-- Until now every message followed the one stored before it: write that
-- down, so each conversation comes over as one branch whatever its rows
-- said.
UPDATE messages AS m SET parent_id = (
    SELECT p.id FROM messages AS p
    WHERE p.conversation_id = m.conversation_id AND p.position < m.position
    ORDER BY p.position DESC LIMIT 1
);

-- The current branch ends at the newest message.
UPDATE conversations AS c SET current_node = (
    SELECT m.id FROM messages AS m
    WHERE m.conversation_id = c.id
    ORDER BY m.position DESC LIMIT 1
);

-- A message's children: the siblings of a branch, the answers to a question.
CREATE INDEX messages_parent_idx ON messages (conversation_id, parent_id);
