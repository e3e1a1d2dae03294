//! A chat model that answers from a script.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use confab_ports::{
    ChatModel, CompletionRequest, CompletionStream, FinishReason, LlmError, LlmEvent, PromptRole,
    Usage,
};

/// The phrase by which the title call's instruction is recognised (the app
/// promises it in its title prompt).
const TITLE_PHRASE: &str = "a title for this conversation";

/// What an unscripted answer says, in two pieces.
pub const DEFAULT_ANSWER: [&str; 2] = ["Hello from ", "the scripted model."];

/// What an unscripted title call answers.
pub const DEFAULT_TITLE: &str = "Scripted title";

/// Whether `request` is the app's title call (its system turn asks for
/// a title) rather than an answer.
#[must_use]
pub fn is_title_request(request: &CompletionRequest) -> bool {
    request
        .turns
        .iter()
        .any(|t| t.role == PromptRole::System && t.text.contains(TITLE_PHRASE))
}

/// One step of a scripted completion stream.
#[derive(Debug, Clone)]
pub enum Step {
    /// A piece of text.
    Text(String),
    /// The end, with a reason and optional usage; nothing follows.
    Finish(FinishReason, Option<Usage>),
    /// A failure of the stream.
    Fail(LlmError),
    /// Silence for a while (tokio's time: a paused clock skips it), then
    /// the next step. Cancel-safe: a `next` dropped during the pause
    /// resumes the same pause, not a new one.
    Pause(Duration),
    /// Silence until the stream is dropped.
    Hang,
}

/// The script of one call to [`ChatModel::complete`].
#[derive(Debug, Clone)]
pub enum Reply {
    /// The call is refused before any stream (`complete` fails).
    Refuse(LlmError),
    /// The call streams these steps. A script that runs out without a
    /// [`Step::Finish`] ends the stream (`Ok(None)`).
    Steps(Vec<Step>),
    /// The call panics, as an adapter with a bug would.
    Panic,
}

impl Reply {
    /// These pieces of text, then [`FinishReason::Stop`].
    #[must_use]
    pub fn text(pieces: &[&str]) -> Self {
        Self::finished(pieces, FinishReason::Stop)
    }

    /// These pieces of text, then the end for `reason`.
    #[must_use]
    pub fn finished(pieces: &[&str], reason: FinishReason) -> Self {
        let mut steps: Vec<Step> = pieces.iter().map(|p| Step::Text((*p).to_owned())).collect();
        steps.push(Step::Finish(reason, None));
        Self::Steps(steps)
    }

    /// These pieces of text, then a failure of the stream.
    #[must_use]
    pub fn failing(pieces: &[&str], error: LlmError) -> Self {
        let mut steps: Vec<Step> = pieces.iter().map(|p| Step::Text((*p).to_owned())).collect();
        steps.push(Step::Fail(error));
        Self::Steps(steps)
    }

    /// These pieces of text, then silence until the stream is dropped.
    #[must_use]
    pub fn hanging(pieces: &[&str]) -> Self {
        let mut steps: Vec<Step> = pieces.iter().map(|p| Step::Text((*p).to_owned())).collect();
        steps.push(Step::Hang);
        Self::Steps(steps)
    }
}

#[derive(Default)]
struct Scripts {
    answers: VecDeque<Reply>,
    titles: VecDeque<Reply>,
    requests: Vec<CompletionRequest>,
}

/// A [`ChatModel`] that plays scripted replies: each answer call takes the
/// next reply queued with [`ScriptedModel::answer`], each title call (see
/// [`is_title_request`]) the next one queued with
/// [`ScriptedModel::title`]; an unscripted call answers
/// [`DEFAULT_ANSWER`] or [`DEFAULT_TITLE`]. It records every request.
#[derive(Default)]
pub struct ScriptedModel {
    scripts: Mutex<Scripts>,
    saturated: AtomicBool,
    open_streams: Arc<AtomicUsize>,
}

impl ScriptedModel {
    /// A model with nothing scripted.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the reply of a later answer call.
    pub fn answer(&self, reply: Reply) -> &Self {
        self.lock().answers.push_back(reply);
        self
    }

    /// Queues the reply of a later title call.
    pub fn title(&self, reply: Reply) -> &Self {
        self.lock().titles.push_back(reply);
        self
    }

    /// Every request received so far, in order (answers and titles).
    #[must_use]
    pub fn requests(&self) -> Vec<CompletionRequest> {
        self.lock().requests.clone()
    }

    /// The answer requests received so far, in order.
    #[must_use]
    pub fn answer_requests(&self) -> Vec<CompletionRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !is_title_request(r))
            .collect()
    }

    /// Makes [`ChatModel::saturated`] say `saturated`.
    pub fn set_saturated(&self, saturated: bool) {
        self.saturated.store(saturated, Ordering::Relaxed);
    }

    /// How many of its streams are still alive (not dropped).
    #[must_use]
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Scripts> {
        self.scripts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> Result<Box<dyn CompletionStream>, LlmError> {
        let reply = {
            let mut scripts = self.lock();
            let title = is_title_request(&request);
            scripts.requests.push(request);
            if title {
                scripts
                    .titles
                    .pop_front()
                    .unwrap_or_else(|| Reply::text(&[DEFAULT_TITLE]))
            } else {
                scripts
                    .answers
                    .pop_front()
                    .unwrap_or_else(|| Reply::text(&DEFAULT_ANSWER))
            }
        };
        match reply {
            Reply::Refuse(e) => Err(e),
            #[allow(clippy::panic)] // the reply scripts a panic
            Reply::Panic => panic!("the scripted model panics, as scripted"),
            Reply::Steps(steps) => {
                self.open_streams.fetch_add(1, Ordering::AcqRel);
                Ok(Box::new(ScriptedStream {
                    steps: steps.into(),
                    pause_until: None,
                    finished: false,
                    open: self.open_streams.clone(),
                }))
            }
        }
    }

    fn saturated(&self) -> bool {
        self.saturated.load(Ordering::Relaxed)
    }
}

/// One scripted completion being streamed.
struct ScriptedStream {
    steps: VecDeque<Step>,
    /// The end of the pause under way, kept across dropped calls.
    pause_until: Option<tokio::time::Instant>,
    finished: bool,
    open: Arc<AtomicUsize>,
}

impl Drop for ScriptedStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl CompletionStream for ScriptedStream {
    async fn next(&mut self) -> Result<Option<LlmEvent>, LlmError> {
        loop {
            // A pause outlives a dropped call: the next call waits out the
            // rest of it.
            if let Some(until) = self.pause_until {
                tokio::time::sleep_until(until).await;
                self.pause_until = None;
            }
            if self.finished {
                return Ok(None);
            }
            match self.steps.pop_front() {
                None => return Ok(None),
                Some(Step::Text(text)) => return Ok(Some(LlmEvent::Text(text))),
                Some(Step::Finish(reason, usage)) => {
                    self.finished = true;
                    return Ok(Some(LlmEvent::Finished { reason, usage }));
                }
                Some(Step::Fail(e)) => return Err(e),
                Some(Step::Pause(d)) => {
                    self.pause_until = Some(tokio::time::Instant::now() + d);
                }
                Some(Step::Hang) => {
                    self.steps.push_front(Step::Hang);
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
