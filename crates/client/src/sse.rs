//! A Server-Sent Events parser that follows the HTML specification's
//! rules: lines end at CRLF, LF or CR; `:` starts a comment; one space
//! after the colon is dropped; an event is dispatched at a blank line when
//! it has data. A line, or an event's data, longer than [`MAX_LINE`] bytes
//! is a protocol error: a server that never ends its line can't make the
//! client hold it all.

use crate::Error;

/// The longest line, and the longest data of one event, in bytes: 4 MiB.
/// Confab's events are one line each, the longest an `add` delta of a
/// continued answer or a question of 100,000 characters (at most 4 bytes
/// each, escaped).
pub(crate) const MAX_LINE: usize = 4 << 20;

/// One event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    /// Its `id:`, when it had one.
    pub(crate) id: Option<String>,
    /// Its `event:` name, when it had one.
    pub(crate) event: Option<String>,
    /// Its data lines, joined by `\n`.
    pub(crate) data: String,
}

/// Splits bytes as they arrive into events.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buffer: Vec<u8>,
    /// A CR ended the last line: an LF that follows belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Takes more bytes; returns the events they complete, and the error
    /// that stopped the parsing, when one did (the events before it are
    /// whole; nothing after it is read).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> (Vec<RawEvent>, Option<Error>) {
        let mut out = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.buffer);
                    if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                        out.push(event);
                    }
                }
                _ => {
                    if self.buffer.len() >= MAX_LINE {
                        return (out, Some(too_long()));
                    }
                    self.buffer.push(byte);
                }
            }
            if self.data.as_ref().is_some_and(|data| data.len() > MAX_LINE) {
                return (out, Some(too_long()));
            }
        }
        (out, None)
    }

    fn line(&mut self, line: &str) -> Option<RawEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| RawEvent {
                id: self.id.clone(),
                event,
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

fn too_long() -> Error {
    Error::Protocol(format!(
        "an event stream line or event longer than {MAX_LINE} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<RawEvent> {
        let mut parser = Parser::default();
        chunks
            .iter()
            .flat_map(|c| {
                let (events, error) = parser.feed(c);
                assert!(error.is_none(), "{error:?}");
                events
            })
            .collect()
    }

    #[test]
    fn a_line_past_the_bound_is_an_error_after_the_events_before_it() {
        let mut parser = Parser::default();
        let (events, error) = parser.feed(b"data: 1\n\ndata: ");
        assert_eq!(events.len(), 1);
        assert!(error.is_none());
        let chunk = vec![b'x'; 64 * 1024];
        let mut fed = 0;
        let error = loop {
            let (events, error) = parser.feed(&chunk);
            assert!(events.is_empty());
            fed += chunk.len();
            if let Some(error) = error {
                break error;
            }
            assert!(fed <= MAX_LINE, "no error after {fed} bytes");
        };
        assert!(matches!(error, Error::Protocol(_)), "{error}");
        // Many short data lines of one event are bounded the same way.
        let mut parser = Parser::default();
        let line = format!("data: {}\n", "y".repeat(1000));
        let mut error = None;
        for _ in 0..=(MAX_LINE / 1000 + 1) {
            let (events, e) = parser.feed(line.as_bytes());
            assert!(events.is_empty());
            if e.is_some() {
                error = e;
                break;
            }
        }
        assert!(error.is_some(), "the event's data was not bounded");
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let text =
            b"id: 1\nevent: delta\ndata: {\"v\":1}\n\n: keep-alive\n\nid: 2\ndata: [DONE]\n\n";
        let whole = all(&[text]);
        for split in 0..text.len() {
            assert_eq!(
                all(&[&text[..split], &text[split..]]),
                whole,
                "split at {split}"
            );
        }
        assert_eq!(
            whole,
            [
                RawEvent {
                    id: Some("1".into()),
                    event: Some("delta".into()),
                    data: "{\"v\":1}".into()
                },
                RawEvent {
                    id: Some("2".into()),
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn every_line_ending_works_and_data_lines_join() {
        for ending in ["\n", "\r\n", "\r"] {
            let text = format!("data: a{ending}data:b{ending}{ending}");
            let events = all(&[text.as_bytes()]);
            assert_eq!(events.len(), 1, "{ending:?}");
            assert_eq!(events[0].data, "a\nb");
        }
    }

    #[test]
    fn the_id_carries_over_and_comments_dispatch_nothing() {
        let events = all(&[b"id: 7\ndata: x\n\n: ping\n\ndata: y\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].id.as_deref(), Some("7"));
    }
}
