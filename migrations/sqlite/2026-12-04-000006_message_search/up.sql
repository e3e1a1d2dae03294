-- Search in message text (issue 15). Keep in step with the other backend's
-- folder.
--
-- An FTS5 index of finished messages' text (the unicode61 tokenizer:
-- lowercased, diacritics folded). It keeps no copy of the text
-- (contentless) and its rows are deleted in place (contentless_delete).
-- FTS5 rows are keyed by an integer; messages have none of their own that
-- lasts (a table's implicit rowid may change on VACUUM), so message_search
-- gives each indexed message one. Only finished messages are indexed (an
-- answer being written is updated on every flush); the first 100,000
-- characters of each, as on PostgreSQL.
CREATE TABLE message_search (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    CONSTRAINT message_search_key UNIQUE (conversation_id, message_id)
);

CREATE VIRTUAL TABLE message_search_text USING fts5 (
    body, content = '', contentless_delete = 1
);

CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
WHEN new.status <> 'in_progress'
BEGIN
    INSERT INTO message_search (conversation_id, message_id)
    VALUES (new.conversation_id, new.id);
    INSERT INTO message_search_text (rowid, body)
    VALUES (last_insert_rowid(), substr(coalesce(
        (SELECT group_concat(value, ' ') FROM json_each(new.content, '$.parts')), ''
    ), 1, 100000));
END;

CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
WHEN old.status <> 'in_progress'
BEGIN
    DELETE FROM message_search_text WHERE rowid = (
        SELECT id FROM message_search
        WHERE conversation_id = old.conversation_id AND message_id = old.id
    );
    DELETE FROM message_search
    WHERE conversation_id = old.conversation_id AND message_id = old.id;
END;

-- An answer's flushes (in progress before and after) never run it.
CREATE TRIGGER messages_search_update AFTER UPDATE OF content, status ON messages
WHEN old.status <> 'in_progress' OR new.status <> 'in_progress'
BEGIN
    DELETE FROM message_search_text WHERE rowid = (
        SELECT id FROM message_search
        WHERE conversation_id = old.conversation_id AND message_id = old.id
    );
    DELETE FROM message_search
    WHERE conversation_id = old.conversation_id AND message_id = old.id;
    INSERT INTO message_search (conversation_id, message_id)
    SELECT new.conversation_id, new.id WHERE new.status <> 'in_progress';
    INSERT INTO message_search_text (rowid, body)
    SELECT last_insert_rowid(), substr(coalesce(
        (SELECT group_concat(value, ' ') FROM json_each(new.content, '$.parts')), ''
    ), 1, 100000)
    WHERE new.status <> 'in_progress';
END;

INSERT INTO message_search (conversation_id, message_id)
SELECT conversation_id, id FROM messages WHERE status <> 'in_progress';
INSERT INTO message_search_text (rowid, body)
SELECT s.id, substr(coalesce(
    (SELECT group_concat(value, ' ') FROM json_each(m.content, '$.parts')), ''
), 1, 100000)
FROM message_search AS s
JOIN messages AS m ON m.conversation_id = s.conversation_id AND m.id = s.message_id;
