-- The words of a message for search (migrations 000006 and 000010),
-- computed the same way, with a shortcut for the common shape: content
-- whose `parts` is an array of one part (every message Confab writes
-- today) is that part's text, read with `->>` instead of a subquery that
-- unnests the array and joins it again. The trigger calls this for every
-- user message stored (inside the send's transaction, before its first
-- delta) and every answer that ends. Any other shape takes the general
-- path, unchanged.
CREATE OR REPLACE FUNCTION confab_search_vector(content TEXT) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    parts jsonb := content::jsonb -> 'parts';
BEGIN
    IF jsonb_typeof(parts) = 'array' AND jsonb_array_length(parts) = 1 THEN
        RETURN to_tsvector('simple', left(coalesce(parts ->> 0, ''), 100000));
    END IF;
    RETURN to_tsvector('simple', left(coalesce((
        SELECT string_agg(part, ' ')
        FROM jsonb_array_elements_text(parts) AS part
    ), ''), 100000));
END
$$;
