//! A pure, incremental parser for the `text/event-stream` body of an
//! OpenAI-style streamed chat completion.
//!
//! [`LineSplitter`] turns bytes, split anywhere, into whole lines (ended by
//! `\n`, `\r\n` or `\r`) with a bound on a line's length; [`decode_line`]
//! turns one line into what it means for a completion.

use serde::Deserialize;

/// The longest line accepted, in bytes (1 MiB): a bound on the memory one
/// stream can hold.
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Why the stream can't be parsed. The text never quotes the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SseError(pub(crate) String);

/// Splits a byte stream into lines.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    /// Bytes received and not yet returned as a line.
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// How far past `start` has been searched for a line end.
    scanned: usize,
    /// The last line ended with `\r`: a `\n` right after it belongs to it.
    skip_lf: bool,
    /// The body ended: what is left is the last line.
    ended: bool,
    /// The longest line accepted.
    max_line: usize,
}

impl LineSplitter {
    /// A splitter that refuses lines longer than `max_line` bytes.
    pub(crate) const fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skip_lf: false,
            ended: false,
            max_line,
        }
    }

    /// Adds bytes received.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the body: bytes left without a line end make the
    /// last line.
    pub(crate) fn end(&mut self) {
        self.ended = true;
    }

    /// The next whole line, without its line end, or `None` until more
    /// bytes come.
    ///
    /// # Errors
    /// [`SseError`] when a line is longer than the bound.
    pub(crate) fn next_line(&mut self) -> Result<Option<Vec<u8>>, SseError> {
        if self.skip_lf && self.start < self.buf.len() {
            self.skip_lf = false;
            if self.buf.get(self.start) == Some(&b'\n') {
                self.start += 1;
            }
        }
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let from = self.scanned.min(rest.len());
        let found = rest
            .get(from..)
            .unwrap_or_default()
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .map(|i| from + i);
        match found {
            Some(len) => {
                if len > self.max_line {
                    return Err(too_long());
                }
                let line = rest.get(..len).unwrap_or_default().to_vec();
                let is_cr = rest.get(len) == Some(&b'\r');
                self.start += len + 1;
                self.scanned = 0;
                self.skip_lf = is_cr;
                Ok(Some(line))
            }
            None if rest.len() > self.max_line => Err(too_long()),
            None if self.ended && !rest.is_empty() => {
                let line = rest.to_vec();
                self.start = self.buf.len();
                self.scanned = 0;
                Ok(Some(line))
            }
            None => {
                self.scanned = rest.len();
                Ok(None)
            }
        }
    }
}

fn too_long() -> SseError {
    SseError(format!("a line is longer than {MAX_LINE_BYTES} bytes"))
}

/// Why the upstream said it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    /// `stop`: the model ended its turn.
    Stop,
    /// `length`: the token cap was reached.
    Length,
    /// Anything else (`content_filter`, `tool_calls`…), as sent.
    Other(String),
}

/// What one chunk of the stream carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// More text (never empty).
    pub(crate) text: Option<String>,
    /// Why the model stopped, if it says so here.
    pub(crate) finish: Option<Finish>,
    /// Token counts, if reported here.
    pub(crate) usage: Option<confab_ports::Usage>,
}

/// What one line of the stream means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// Nothing for the completion: a blank line, a comment, another field.
    Skip,
    /// A chunk of the completion.
    Chunk(Chunk),
    /// `data: [DONE]`: the stream is over.
    Done,
    /// An error object, as the upstream's JSON text (to log, not relay).
    Error(String),
}

#[derive(Deserialize)]
struct ChunkWire {
    #[serde(default)]
    choices: Vec<ChoiceWire>,
    #[serde(default)]
    usage: Option<UsageWire>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceWire {
    #[serde(default)]
    delta: Option<DeltaWire>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaWire {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// What a line means.
///
/// # Errors
/// [`SseError`] when a `data` line is not UTF-8, not JSON, or not shaped
/// like a chat completion chunk.
pub(crate) fn decode_line(line: &[u8]) -> Result<Item, SseError> {
    let Some(value) = line.strip_prefix(b"data:") else {
        // Blank lines end an event; `:` lines are comments; `event`, `id`,
        // `retry` and unknown fields carry nothing for a completion.
        return Ok(Item::Skip);
    };
    let value = value.strip_prefix(b" ").unwrap_or(value);
    let text = std::str::from_utf8(value)
        .map_err(|_| SseError("a chunk is not valid UTF-8".to_owned()))?;
    if text.trim() == "[DONE]" {
        return Ok(Item::Done);
    }
    let wire: ChunkWire = serde_json::from_str(text).map_err(|e| {
        let what = if e.is_data() {
            "is not shaped like a completion chunk"
        } else {
            "is not valid JSON"
        };
        // serde_json's messages can quote the input: only the column goes.
        SseError(format!("a chunk {what} (column {})", e.column()))
    })?;
    if let Some(error) = wire.error.filter(|e| !e.is_null()) {
        return Ok(Item::Error(error.to_string()));
    }
    let mut chunk = Chunk {
        usage: wire.usage.map(|u| confab_ports::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }),
        ..Chunk::default()
    };
    if let Some(choice) = wire.choices.into_iter().next() {
        chunk.text = choice
            .delta
            .and_then(|d| d.content)
            .filter(|t| !t.is_empty());
        chunk.finish = choice.finish_reason.map(|r| match r.as_str() {
            "stop" => Finish::Stop,
            "length" => Finish::Length,
            _ => Finish::Other(r),
        });
    }
    Ok(Item::Chunk(chunk))
}

#[cfg(test)]
mod tests;
