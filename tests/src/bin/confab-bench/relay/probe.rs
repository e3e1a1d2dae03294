//! One timed stream of the relay scenario: a streaming request, straight
//! to the upstream or through Confab, read to its end, timing the response
//! head, the first text delta, and each delta from the upstream's write.

use std::time::{Duration, Instant};

use confab_e2e::chat::{MODEL, message_body};
use serde_json::{Value, json};

use super::{DELTAS, PROMPT};
use confab_e2e::fake_llm::stamp;

/// Where a stream's request goes.
pub(super) enum Target {
    /// `POST <upstream>/chat/completions`, as an OpenAI client sends it.
    Direct(String),
    /// `POST /api/v1/conversations` on Confab, as one signed-in user.
    Confab {
        /// The send URL.
        url: String,
        /// The user's access token.
        token: String,
    },
}

impl Target {
    /// A ready-to-send streaming request.
    pub(super) fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        match self {
            Self::Direct(url) => client.post(url).json(&json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": true,
            })),
            Self::Confab { url, token } => client
                .post(url)
                .bearer_auth(token)
                .json(&message_body(PROMPT)),
        }
    }

    /// The table's name of the path.
    pub(super) const fn name(&self) -> &'static str {
        match self {
            Self::Direct(_) => "direct",
            Self::Confab { .. } => "through Confab",
        }
    }
}

/// What one SSE block is.
enum Block {
    /// A text delta, with the upstream's stamp (see [`stamp`]).
    Text(u64),
    /// `data: [DONE]`.
    Done,
    /// Anything else (Confab's opening events, markers, the finish).
    Other,
}

/// Classifies one SSE block (up to its blank line) of a direct or Confab
/// stream.
fn classify(direct: bool, block: &[u8]) -> Block {
    let block = String::from_utf8_lossy(block);
    let mut event = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = Some(name);
        } else if let Some(value) = line.strip_prefix("data: ") {
            data.push_str(value);
        }
    }
    if data == "[DONE]" {
        return Block::Done;
    }
    let Ok(json) = serde_json::from_str::<Value>(&data) else {
        return Block::Other;
    };
    let text = if direct {
        json["choices"][0]["delta"]["content"].as_str()
    } else {
        let op = &json["v"][0];
        let append = op["o"] == "append" && op["p"] == "/message/content/parts/0";
        if event == Some("delta") && append {
            op["v"].as_str()
        } else {
            None
        }
    };
    // A text that is not a stamp is not counted: the stream ends `short`.
    match text.and_then(|t| t.trim().parse().ok()) {
        Some(stamp) => Block::Text(stamp),
        None => Block::Other,
    }
}

/// The timings of one complete stream, from just before its request was
/// sent.
pub(super) struct Timings {
    /// The response head.
    pub(super) head: Duration,
    /// The first text delta.
    pub(super) first: Duration,
    /// Each text delta's time from its write by the upstream to its arrival.
    pub(super) deltas: Vec<Duration>,
}

/// How one stream ended.
pub(super) enum Outcome {
    /// Every text delta and `[DONE]`.
    Complete(Timings),
    /// A status other than 200.
    Status(u16),
    /// The body ended early (fewer deltas, or no `[DONE]`).
    Short,
    /// The round's cap passed first.
    Timeout,
    /// The connection failed.
    Error,
}

/// Sends `request` and reads its stream to the end, timing each text delta
/// at the arrival of the chunk that holds it.
pub(super) async fn stream(
    request: reqwest::RequestBuilder,
    direct: bool,
    cap: tokio::time::Instant,
) -> Outcome {
    let sent = Instant::now();
    let read = async {
        let Ok(mut res) = request.send().await else {
            return Outcome::Error;
        };
        let head = sent.elapsed();
        if res.status() != 200 {
            return Outcome::Status(res.status().as_u16());
        }
        let mut first = None;
        let mut deltas = Vec::with_capacity(DELTAS);
        let mut done = false;
        let mut buf = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(bytes)) => {
                    let now = Instant::now();
                    let arrived = stamp(now);
                    buf.extend_from_slice(&bytes);
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buf.drain(..end + 2).collect();
                        match classify(direct, &block) {
                            Block::Text(written) => {
                                first.get_or_insert(now - sent);
                                deltas.push(Duration::from_nanos(arrived.saturating_sub(written)));
                            }
                            Block::Done => done = true,
                            Block::Other => {}
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return Outcome::Error,
            }
        }
        match first {
            Some(first) if done && deltas.len() == DELTAS => Outcome::Complete(Timings {
                head,
                first,
                deltas,
            }),
            _ => Outcome::Short,
        }
    };
    tokio::time::timeout_at(cap, read)
        .await
        .unwrap_or(Outcome::Timeout)
}
