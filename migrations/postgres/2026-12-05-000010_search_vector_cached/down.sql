CREATE OR REPLACE FUNCTION confab_search_vector(content TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('simple', left(coalesce((
        SELECT string_agg(part, ' ')
        FROM jsonb_array_elements_text(content::jsonb -> 'parts') AS part
    ), ''), 100000))
$$;
