//! A Server-Sent Events parser that follows the HTML specification's
//! rules: lines end at CRLF, LF or CR; `:` starts a comment; one space
//! after the colon is dropped; an event is dispatched at a blank line when
//! it has data.

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
    /// Takes more bytes; returns the events they complete.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<RawEvent> {
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
                _ => self.buffer.push(byte),
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<RawEvent> {
        let mut parser = Parser::default();
        chunks.iter().flat_map(|c| parser.feed(c)).collect()
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
