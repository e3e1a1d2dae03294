//! The ids readers see: `{generation}-{ms}-{seq}`, the generation of the
//! log followed by the Redis Streams entry id (`{ms}-{seq}`) of the event in
//! that generation's stream, every part a decimal number written without a
//! sign or leading zeros (`1717171717171-1717171717180-0`).
//!
//! The generation makes an id from another generation of the same
//! conversation recognisably not the current log's; the entry id is what a
//! reader resumes after (`XRANGE … (id`, `XREAD … id`).

/// The id of the entry `entry` of `generation`'s stream.
pub(super) fn event_id(generation: &str, entry: &str) -> String {
    format!("{generation}-{entry}")
}

/// A `Last-Event-ID` split into its generation and its entry id; `None`
/// unless it is written exactly as [`event_id`] writes one.
pub(super) fn parse_event_id(id: &str) -> Option<(&str, &str)> {
    let (generation, entry) = id.split_once('-')?;
    let (ms, seq) = entry.split_once('-')?;
    [generation, ms, seq]
        .into_iter()
        .all(is_canonical)
        .then_some((generation, entry))
}

/// A `u64` written as Rust (and Lua's `%d`, and Redis) write one: digits
/// only, no leading zero but in `0` itself.
fn is_canonical(part: &str) -> bool {
    part.parse::<u64>().is_ok_and(|n| n.to_string() == part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = event_id("1717171717171", "1717171717180-3");
        assert_eq!(id, "1717171717171-1717171717180-3");
        assert_eq!(
            parse_event_id(&id),
            Some(("1717171717171", "1717171717180-3"))
        );
        assert_eq!(parse_event_id("0-0-0"), Some(("0", "0-0")));
    }

    #[test]
    fn only_canonical_ids_parse() {
        for bad in [
            "",
            "1",
            "1-2",
            "1-2-3-4",
            "-1-2",
            "1--2",
            "1-2-",
            "01-2-3",
            "1-02-3",
            "1-2-03",
            "+1-2-3",
            "1-+2-3",
            "a-2-3",
            "1.0-2-3",
            " 1-2-3",
            "1-2-3 ",
            "18446744073709551616-1-1",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
