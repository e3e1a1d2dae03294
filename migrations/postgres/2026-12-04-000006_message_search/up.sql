-- Search in message text (issue 15). Keep in step with the other backend's
-- folder.
--
-- A message's words are kept as a tsvector under the 'simple' configuration
-- (lowercased, no stemming and no stop words, so a search means the same in
-- every language), in a GIN index that finds a word or a word's start. Only
-- finished messages are indexed: an answer being written is updated on
-- every flush, and indexing it each time would cost the send path for text
-- nobody can search before it ends. The first 100,000 characters of a
-- message are indexed (a tsvector holds at most 1 MiB of words, and a
-- message that broke that limit must still be stored).
ALTER TABLE messages ADD COLUMN search_vector tsvector;

CREATE FUNCTION confab_search_vector(content TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('simple', left(coalesce((
        SELECT string_agg(part, ' ')
        FROM jsonb_array_elements_text(content::jsonb -> 'parts') AS part
    ), ''), 100000))
$$;

CREATE FUNCTION confab_messages_search_vector() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'in_progress' THEN
        NEW.search_vector := NULL;
    ELSE
        NEW.search_vector := confab_search_vector(NEW.content);
    END IF;
    RETURN NEW;
END
$$;

-- An answer's flushes (in progress before and after) never run it.
CREATE TRIGGER messages_search_vector_insert
    BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.status <> 'in_progress')
    EXECUTE FUNCTION confab_messages_search_vector();
CREATE TRIGGER messages_search_vector_update
    BEFORE UPDATE OF content, status ON messages
    FOR EACH ROW WHEN (NEW.status <> 'in_progress' OR OLD.status <> 'in_progress')
    EXECUTE FUNCTION confab_messages_search_vector();

UPDATE messages SET search_vector = confab_search_vector(content)
WHERE status <> 'in_progress';

CREATE INDEX messages_search_idx ON messages USING GIN (search_vector);
