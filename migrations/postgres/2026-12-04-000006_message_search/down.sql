DROP INDEX messages_search_idx;
DROP TRIGGER messages_search_vector_update ON messages;
DROP TRIGGER messages_search_vector_insert ON messages;
DROP FUNCTION confab_messages_search_vector();
DROP FUNCTION confab_search_vector(TEXT);
ALTER TABLE messages DROP COLUMN search_vector;
