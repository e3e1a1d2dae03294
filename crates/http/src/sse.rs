//! Server-Sent Events: a stream-log reader as a response body.
//!
//! Every event carries its log id as `id:` so a client can resume with
//! `Last-Event-ID`. Data is one line of JSON (a text containing
//! `\n\ndata: [DONE]` is escaped inside its JSON string), so no content can
//! forge an event; a data value with a line break would still be split
//! into several `data:` lines, as the SSE format requires.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::web::Bytes;
use confab_ports::{EventFeed, LoggedEvent};
use futures_util::Stream;

/// How often a silent stream sends a keep-alive comment (app data), so
/// proxies and clients don't time out while the model thinks.
#[derive(Debug, Clone, Copy)]
pub struct SseSettings {
    /// The keep-alive interval.
    pub keep_alive: Duration,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
        }
    }
}

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One event in the SSE wire format, in a buffer of exactly its size (a
/// `Bytes` made from a vector with room to spare allocates again).
pub(crate) fn encode(event: &LoggedEvent) -> Bytes {
    const ID: &[u8] = b"id: ";
    const EVENT: &[u8] = b"event: ";
    const DATA: &[u8] = b"data: ";
    let text = &event.event.data;
    let data = text.as_bytes();
    let name = event.event.name.map(|n| n.as_str().as_bytes());
    // CR, LF and CRLF all end a line in SSE: each piece is its own
    // `data:` line, so no byte of the data can end the event early. The
    // data of almost every event is one line of JSON: two `memchr` scans
    // tell, and its size is then known without splitting it.
    let one_line = !text.contains('\n') && !text.contains('\r');
    let lines = data_lines(data);
    let mut size = ID.len() + event.id.len() + 1;
    if let Some(name) = name {
        size += EVENT.len() + name.len() + 1;
    }
    size += if one_line {
        DATA.len() + data.len() + 1
    } else {
        lines
            .clone()
            .map(|line| DATA.len() + line.len() + 1)
            .sum::<usize>()
    } + 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(ID);
    out.extend_from_slice(event.id.as_bytes());
    out.push(b'\n');
    if let Some(name) = name {
        out.extend_from_slice(EVENT);
        out.extend_from_slice(name);
        out.push(b'\n');
    }
    if one_line {
        out.extend_from_slice(DATA);
        out.extend_from_slice(data);
        out.push(b'\n');
    } else {
        for line in lines {
            out.extend_from_slice(DATA);
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The lines of `data`, each ended by CR, LF or CRLF (one break), as SSE
/// reads them: `a\r\nb\rc\n` is `a`, `b`, `c` and an empty last line.
fn data_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                rest = None;
                Some(text)
            }
            Some(end) => {
                let (line, tail) = text.split_at(end);
                rest = Some(
                    tail.strip_prefix(b"\r\n")
                        .unwrap_or_else(|| tail.get(1..).unwrap_or_default()),
                );
                Some(line)
            }
        }
    })
}

/// The events of `feed` as SSE bytes, with a keep-alive comment after
/// every `keep_alive` of silence; ends when the feed does. Dropping the
/// body (the client went away) drops the reader and nothing else.
///
/// One timer serves the whole stream: each event moves its deadline later,
/// which costs no lock (a timer made and dropped for every event would
/// take the runtime's timer lock twice).
fn body(
    feed: Box<dyn EventFeed>,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static {
    let silence = Box::pin(tokio::time::sleep(keep_alive));
    futures_util::stream::unfold(Some((feed, silence)), move |state| async move {
        let (mut feed, mut silence) = state?;
        let next = tokio::select! {
            biased;
            next = feed.next() => next,
            () = &mut silence => {
                silence.as_mut().reset(tokio::time::Instant::now() + keep_alive);
                return Some((Ok(Bytes::from_static(KEEP_ALIVE)), Some((feed, silence))));
            }
        };
        match next {
            Ok(Some(event)) => {
                silence
                    .as_mut()
                    .reset(tokio::time::Instant::now() + keep_alive);
                Some((Ok(encode(&event)), Some((feed, silence))))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "stream log read failed; ending the stream");
                None
            }
        }
    })
}

/// A `200 text/event-stream` response relaying `feed`.
pub(crate) fn response(feed: Box<dyn EventFeed>, settings: SseSettings) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
        // Tell buffering proxies (nginx) to pass events on at once.
        .insert_header((
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ))
        .streaming(body(feed, settings.keep_alive))
}

#[cfg(test)]
mod tests {
    use confab_domain::{EventName, WireEvent};

    use super::*;

    #[test]
    fn events_are_framed_with_their_id() {
        let e = LoggedEvent {
            id: "7".into(),
            event: WireEvent {
                name: Some(EventName::Delta),
                data: r#"{"v":"a\n\ndata: [DONE]"}"#.into(),
            },
        };
        assert_eq!(
            &encode(&e)[..],
            b"id: 7\nevent: delta\ndata: {\"v\":\"a\\n\\ndata: [DONE]\"}\n\n"
        );
        let plain = LoggedEvent {
            id: "8".into(),
            event: WireEvent {
                name: None,
                data: "[DONE]".into(),
            },
        };
        assert_eq!(&encode(&plain)[..], b"id: 8\ndata: [DONE]\n\n");
    }

    #[test]
    fn a_raw_line_break_cannot_forge_an_event() {
        let e = LoggedEvent {
            id: "1".into(),
            event: WireEvent {
                name: None,
                data: "x\n\nevent: evil\r\ndata: y\rid: 9".into(),
            },
        };
        assert_eq!(
            &encode(&e)[..],
            b"id: 1\ndata: x\ndata: \ndata: event: evil\ndata: data: y\ndata: id: 9\n\n"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Any text a model sends reaches a client unchanged: through the
    //! events a generation builds, this encoder, an SSE parser as the
    //! WHATWG specification reads the format, and the delta applier.

    use confab_domain::{DeltaApplier, MessageStatus, WireEvent, events};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The events of `bytes` as a spec-following client reads them: lines
    /// end at CRLF, LF or CR; `data:` values (one leading space dropped)
    /// join with LF; a blank line dispatches.
    fn parse(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut events = Vec::new();
        let (mut name, mut data): (Option<String>, Option<String>) = (None, None);
        for line in text.split('\n') {
            if line.is_empty() {
                if let Some(data) = data.take() {
                    events.push((name.take(), data));
                }
                name = None;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                "event" => name = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }

    /// `event` on the wire and back, as a client sees it.
    fn through_the_wire(id: usize, event: WireEvent) -> (Option<String>, String) {
        let bytes = encode(&LoggedEvent {
            id: id.to_string(),
            event,
        });
        let mut parsed = parse(&bytes);
        assert_eq!(parsed.len(), 1, "one event per encode");
        parsed.remove(0)
    }

    proptest! {
        #[test]
        fn any_text_comes_back_identical(
            pieces in proptest::collection::vec(any::<String>(), 0..12),
            nasty in proptest::collection::vec(
                prop_oneof![Just("\r"), Just("\n"), Just("\r\n"), Just("\0"), Just("\n\ndata: [DONE]\n\n"), Just("é✓𝄞")],
                0..6,
            ),
        ) {
            let mut pieces = pieces;
            pieces.extend(nasty.into_iter().map(str::to_owned));
            let mut applier = DeltaApplier::new();
            let opening = json!({"o": "add", "v": {"message": {
                "update_time": 0.0, "content": {"parts": [""]}, "status": "in_progress", "end_turn": null, "metadata": {}}}});
            applier.apply_json(&opening).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut sent = vec![];
            for piece in &pieces {
                sent.push(events::append_text(piece).map_err(|e| TestCaseError::fail(e.to_string()))?);
            }
            sent.push(events::finish(MessageStatus::FinishedSuccessfully, time::OffsetDateTime::UNIX_EPOCH).map_err(|e| TestCaseError::fail(e.to_string()))?);
            sent.push(events::done());
            let count = sent.len();
            let mut received = Vec::new();
            for (i, event) in sent.into_iter().enumerate() {
                let name = event.name.map(|n| n.as_str().to_owned());
                let (got_name, data) = through_the_wire(i + 1, event);
                prop_assert_eq!(&got_name, &name);
                received.push(data);
            }
            prop_assert_eq!(received.len(), count, "no event split or merged");
            prop_assert_eq!(received.last().map(String::as_str), Some("[DONE]"));
            for data in &received[..count - 1] {
                let frame: Value = serde_json::from_str(data).map_err(|e| TestCaseError::fail(e.to_string()))?;
                applier.apply_json(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let document = applier.into_document();
            prop_assert_eq!(&document["message"]["content"]["parts"][0], &json!(pieces.concat()));
            prop_assert_eq!(&document["message"]["status"], "finished_successfully");
        }

        /// The encoder writes what replacing CRLF and CR by LF and
        /// prefixing each line with `data: ` writes, for any data.
        #[test]
        fn encoding_matches_the_line_by_line_reference(
            data in prop_oneof![any::<String>(), "[a\r\n]{0,12}"],
            named in any::<bool>(),
            id in "[0-9]{1,4}",
        ) {
            let name = named.then_some(confab_domain::EventName::Delta);
            let mut expected = format!("id: {id}\n");
            if let Some(name) = name {
                expected.push_str(&format!("event: {}\n", name.as_str()));
            }
            for line in data.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
                expected.push_str(&format!("data: {line}\n"));
            }
            expected.push('\n');
            let bytes = encode(&LoggedEvent { id, event: WireEvent { name, data } });
            prop_assert_eq!(&bytes[..], expected.as_bytes());
        }

        #[test]
        fn raw_data_never_ends_an_event_early(data in any::<String>()) {
            let event = WireEvent { name: None, data };
            let bytes = encode(&LoggedEvent { id: "1".into(), event });
            prop_assert_eq!(parse(&bytes).len(), 1);
        }
    }
}
