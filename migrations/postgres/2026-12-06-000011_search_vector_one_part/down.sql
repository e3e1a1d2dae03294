CREATE OR REPLACE FUNCTION confab_search_vector(content TEXT) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN to_tsvector('simple', left(coalesce((
        SELECT string_agg(part, ' ')
        FROM jsonb_array_elements_text(content::jsonb -> 'parts') AS part
    ), ''), 100000));
END
$$;
