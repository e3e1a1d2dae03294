//! The ids readers see: `{generation}-{ms}-{seq}`, the generation of the
//! log followed by the Redis Streams entry id (`{ms}-{seq}`) of the event in
//! that generation's stream, every part a decimal number written without a
//! sign or leading zeros (`1717171717171-0-3`). An event's entry id is
//! `0-{n}`, its number in the generation (from 1), given by the instance
//! that runs it; the end entry's is Redis's own (`{ms}-0`, after them all).
//!
//! The generation makes an id from another generation of the same
//! conversation recognisably not the current log's; the entry id is what a
//! reader resumes after (`XRANGE … (id`, `XREAD … id`).

/// The entry id of a generation's event number `n`.
pub(super) fn entry_id(n: u64) -> String {
    format!("0-{n}")
}

/// The event number of the entry id `entry`; `None` for an id of another
/// form (the end entry's, or one written before events were numbered).
pub(super) fn event_number(entry: &str) -> Option<u64> {
    entry.strip_prefix("0-")?.parse().ok()
}

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
    fn events_are_numbered_entries() {
        assert_eq!(entry_id(7), "0-7");
        assert_eq!(event_number(&entry_id(7)), Some(7));
        assert_eq!(event_number("1717171717180-0"), None);
        assert_eq!(event_number("0-x"), None);
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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every id this log gives reads back as itself.
        #[test]
        fn given_ids_round_trip(generation in any::<u64>(), n in any::<u64>()) {
            let generation = generation.to_string();
            let entry = entry_id(n);
            let id = event_id(&generation, &entry);
            prop_assert_eq!(parse_event_id(&id), Some((generation.as_str(), entry.as_str())));
            prop_assert_eq!(event_number(&entry), Some(n));
        }

        /// Any `Last-Event-ID` a client sends is taken only when it is
        /// written exactly as the log writes one.
        #[test]
        fn anything_else_is_refused(
            id in prop_oneof![any::<String>(), "[0-9+-]{1,30}", "0?[0-9]{1,3}-0?[0-9]{1,3}-0?[0-9]{1,3}"],
        ) {
            if let Some((generation, entry)) = parse_event_id(&id) {
                prop_assert_eq!(event_id(generation, entry), id.clone());
                for part in id.split('-') {
                    prop_assert!(is_canonical(part), "{}", id);
                }
            }
        }
    }
}
