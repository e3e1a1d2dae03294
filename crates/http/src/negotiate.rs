//! `Accept` negotiation between the two answers of a send: the event
//! stream and JSON (RFC 9110 §12.5.1, with quality values).

/// The representation a client prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preferred {
    /// `text/event-stream` (also the default).
    EventStream,
    /// `application/json`.
    Json,
}

const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// The media ranges of an `Accept` value with their quality values.
fn ranges(accept: &str) -> Vec<(String, f32)> {
    accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let range = parts.next()?.trim().to_ascii_lowercase();
            if range.is_empty() {
                return None;
            }
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .map_or(1.0, |q| q.clamp(0.0, 1.0));
            Some((range, q))
        })
        .collect()
}

/// The quality the client gives `full`: that of the most specific range
/// that matches it (exact, then `type/*`, then `*/*`); 0 when none does.
fn quality(ranges: &[(String, f32)], full: &str) -> f32 {
    let kind = full.split('/').next().unwrap_or(full);
    let mut best: Option<(u8, f32)> = None;
    for (range, q) in ranges {
        let specificity = if range == full {
            2
        } else if range.strip_suffix("/*") == Some(kind) {
            1
        } else if range == "*/*" {
            0
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, *q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// What to answer a send with, or `None` (406) when the client accepts
/// neither. No `Accept` (or an empty one) means the stream.
/// Whether `accept` (the request's `Accept`, if any) allows `media`: no
/// header, or a range that covers it with a quality above zero.
pub(crate) fn accepts(accept: Option<&str>, media: &str) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    quality(&ranges(accept), media) > 0.0
}

pub(crate) fn preferred(accept: Option<&str>) -> Option<Preferred> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Preferred::EventStream);
    };
    let ranges = ranges(accept);
    let (sse, json) = (quality(&ranges, EVENT_STREAM), quality(&ranges, JSON));
    if sse <= 0.0 && json <= 0.0 {
        None
    } else if json > sse {
        Some(Preferred::Json)
    } else {
        Some(Preferred::EventStream)
    }
}

#[cfg(test)]
mod tests {
    use super::Preferred::{EventStream, Json};
    use super::preferred;

    #[test]
    fn the_stream_is_the_default() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/*"),
            Some("text/event-stream"),
        ] {
            assert_eq!(preferred(accept), Some(EventStream), "{accept:?}");
        }
    }

    #[test]
    fn json_when_asked_for() {
        for accept in [
            "application/json",
            "application/*",
            "Application/JSON; charset=utf-8",
            "text/html, application/json;q=0.9",
            "text/event-stream;q=0.5, application/json",
            "text/event-stream;q=0, application/json",
            "*/*;q=0.1, application/json",
        ] {
            assert_eq!(preferred(Some(accept)), Some(Json), "{accept}");
        }
    }

    #[test]
    fn the_most_specific_range_sets_the_quality() {
        // `text/event-stream;q=0` excludes the stream even under `*/*`.
        assert_eq!(preferred(Some("*/*, text/event-stream;q=0")), Some(Json));
        assert_eq!(
            preferred(Some("application/json;q=0.2, */*;q=0.8")),
            Some(EventStream)
        );
        // A tie keeps the default.
        assert_eq!(
            preferred(Some("application/json, text/event-stream")),
            Some(EventStream)
        );
    }

    #[test]
    fn a_media_type_is_accepted_by_a_range_that_covers_it() {
        use super::accepts;
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("application/*"),
            Some("application/json"),
            Some("text/html, application/json;q=0.1"),
        ] {
            assert!(accepts(accept, "application/json"), "{accept:?}");
        }
        for accept in [
            "application/xml",
            "text/*",
            "application/json;q=0",
            "*/*, application/json;q=0",
        ] {
            assert!(!accepts(Some(accept), "application/json"), "{accept}");
        }
    }

    #[test]
    fn neither_is_406() {
        for accept in [
            "text/html",
            "image/png, text/plain",
            "application/json;q=0, text/event-stream;q=0",
            "*/*;q=0",
        ] {
            assert_eq!(preferred(Some(accept)), None, "{accept}");
        }
    }
}
