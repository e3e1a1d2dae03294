//! A completion being streamed: the response body read under deadlines,
//! parsed into [`LlmEvent`]s.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use confab_ports::{CompletionStream, FinishReason, LlmError, LlmEvent, Usage};
use tokio::time::{Instant, Sleep};

use crate::client::printable;
use crate::http::Response;
use crate::sse::{self, Finish, Item, LineSplitter, MAX_LINE_BYTES};

/// The most of an upstream error object or unknown finish reason logged.
const MAX_LOGGED_BYTES: usize = 4096;

/// When waiting for the upstream has to stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    first_token: Instant,
    total: Instant,
    idle: Duration,
}

impl Deadlines {
    /// Deadlines for a completion: the first text by `first_token`, the
    /// end by `total`, and no gap longer than `idle` once text streams.
    pub(crate) const fn new(first_token: Instant, total: Instant, idle: Duration) -> Self {
        Self {
            first_token,
            total,
            idle,
        }
    }

    /// The deadline while no text has come, and its name.
    pub(crate) fn before_first_token(&self) -> (Instant, &'static str) {
        if self.first_token <= self.total {
            (self.first_token, "first token")
        } else {
            (self.total, "total")
        }
    }

    /// The deadline for the next read once text streams, and its name.
    pub(crate) fn between_tokens(&self) -> (Instant, &'static str) {
        let idle = Instant::now() + self.idle;
        if idle < self.total {
            (idle, "between tokens")
        } else {
            (self.total, "total")
        }
    }
}

/// Where the stream is.
#[derive(Debug)]
enum State {
    /// Reading the body.
    Streaming,
    /// The token cap was reached: `Finished` comes next.
    Capped,
    /// `Finished` was returned: only `Ok(None)` follows.
    Done,
    /// It failed: the same error again.
    Failed(LlmError),
}

/// A streamed completion from an OpenAI-compatible server. Dropping it
/// before its end drops the response, which closes the connection and so
/// cancels the upstream request; at its `[DONE]` the connection is
/// released for the next request (kept when the server keeps it open).
#[derive(Debug)]
pub(crate) struct OpenAiStream {
    /// The body being read; `None` once done with it.
    response: Option<Response>,
    lines: LineSplitter,
    state: State,
    /// The body has ended.
    eof: bool,
    /// Why the upstream said it stopped, if it did.
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// Text deltas returned so far.
    texts: u32,
    max_tokens: u32,
    deadlines: Deadlines,
    /// The timer of the read under way, made at the first read and moved
    /// for each one after it: moving a deadline later costs no lock, where
    /// a timer made and dropped for every read takes the runtime's timer
    /// lock twice.
    timer: Option<Pin<Box<Sleep>>>,
}

impl OpenAiStream {
    /// Streams `response`'s body, stopping after `max_tokens` text deltas.
    pub(crate) fn new(response: Response, max_tokens: u32, deadlines: Deadlines) -> Self {
        Self {
            response: Some(response),
            lines: LineSplitter::new(MAX_LINE_BYTES),
            state: State::Streaming,
            eof: false,
            finish: None,
            usage: None,
            texts: 0,
            max_tokens,
            deadlines,
            timer: None,
        }
    }

    /// The next event, without the bookkeeping of a failure.
    async fn step(&mut self) -> Result<Option<LlmEvent>, LlmError> {
        loop {
            match &self.state {
                State::Streaming => {}
                State::Capped => return Ok(Some(self.finished(FinishReason::Length))),
                State::Done => return Ok(None),
                State::Failed(e) => return Err(e.clone()),
            }
            let line = self
                .lines
                .next_line()
                .map_err(|e| LlmError::Protocol(e.0))?;
            if let Some(line) = line {
                if let Some(event) = self.on_line(&line)? {
                    return Ok(Some(event));
                }
            } else if self.eof {
                return Err(LlmError::Protocol(
                    "the stream ended without [DONE]".to_owned(),
                ));
            } else {
                self.read().await?;
            }
        }
    }

    /// Reads more of the body under the deadline that applies.
    async fn read(&mut self) -> Result<(), LlmError> {
        let (deadline, what) = if self.texts == 0 {
            self.deadlines.before_first_token()
        } else {
            self.deadlines.between_tokens()
        };
        let Some(response) = self.response.as_mut() else {
            self.eof = true;
            self.lines.end();
            return Ok(());
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let lines = &mut self.lines;
        let read = tokio::select! {
            biased;
            read = response.read(|bytes| lines.push(bytes)) => Ok(read),
            () = timer.as_mut() => Err(()),
        };
        match read {
            Err(()) => Err(LlmError::Timeout(what)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the model's stream broke off");
                Err(LlmError::Protocol(
                    "the connection broke during the stream".to_owned(),
                ))
            }
            Ok(Ok(false)) => {
                self.eof = true;
                self.lines.end();
                self.response = None;
                Ok(())
            }
            Ok(Ok(true)) => Ok(()),
        }
    }

    /// What a line means for the caller, if anything yet.
    fn on_line(&mut self, line: &[u8]) -> Result<Option<LlmEvent>, LlmError> {
        let chunk = match sse::decode_line(line).map_err(|e| LlmError::Protocol(e.0))? {
            Item::Skip => return Ok(None),
            Item::Done => {
                let reason = self.finish.unwrap_or(FinishReason::Stop);
                return Ok(Some(self.finished(reason)));
            }
            Item::Error(detail) => {
                let detail = detail.as_bytes();
                tracing::warn!(
                    error = %printable(detail.get(..MAX_LOGGED_BYTES).unwrap_or(detail)),
                    "the model's server sent an error in its stream"
                );
                return Err(LlmError::Upstream { status: 0 });
            }
            Item::Chunk(chunk) => chunk,
        };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(finish) = chunk.finish {
            self.finish = Some(match finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
                Finish::Other(reason) => {
                    let reason = reason.as_bytes();
                    tracing::info!(
                        reason = %printable(reason.get(..MAX_LOGGED_BYTES).unwrap_or(reason)),
                        "the model stopped for a reason taken as stop"
                    );
                    FinishReason::Stop
                }
            });
        }
        let Some(text) = chunk.text else {
            return Ok(None);
        };
        if self.texts >= self.max_tokens {
            return Ok(Some(self.finished(FinishReason::Length)));
        }
        self.texts += 1;
        if self.texts >= self.max_tokens {
            // Enough: stop reading, which cancels the upstream.
            self.response = None;
            self.state = State::Capped;
        }
        Ok(Some(LlmEvent::Text(text)))
    }

    /// The last event; the response is released.
    fn finished(&mut self, reason: FinishReason) -> LlmEvent {
        if let Some(response) = self.response.take() {
            response.release();
        }
        self.state = State::Done;
        LlmEvent::Finished {
            reason,
            usage: self.usage,
        }
    }
}

#[async_trait]
impl CompletionStream for OpenAiStream {
    async fn next(&mut self) -> Result<Option<LlmEvent>, LlmError> {
        let result = self.step().await;
        if let Err(e) = &result {
            self.response = None;
            self.state = State::Failed(e.clone());
        }
        result
    }
}
