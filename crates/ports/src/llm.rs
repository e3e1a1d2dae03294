//! The chat model: a prompt in, a stream of text deltas out.

use async_trait::async_trait;
use confab_domain::{ErrorCode, ModelSlug};

/// Who said a turn of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptRole {
    /// Instructions framing the conversation.
    System,
    /// The person.
    User,
    /// The model, earlier in the conversation.
    Assistant,
}

impl PromptRole {
    /// The role's name in the OpenAI chat format.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One turn of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTurn {
    /// Who said it.
    pub role: PromptRole,
    /// What was said.
    pub text: String,
}

/// A request for a completion.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The model to ask.
    pub model: ModelSlug,
    /// The conversation so far, oldest first, system prompt first.
    pub turns: Vec<PromptTurn>,
    /// Sampling temperature (0..=2), the model's default when `None`.
    pub temperature: Option<f32>,
    /// The most tokens to generate; the adapter also enforces it.
    pub max_tokens: u32,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    Stop,
    /// The token cap was reached.
    Length,
}

/// Token counts the upstream reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// One step of a completion stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// More text (never empty).
    Text(String),
    /// The end: why, and the usage when the upstream sent it. Nothing
    /// follows.
    Finished {
        /// Why the model stopped.
        reason: FinishReason,
        /// Token counts, if reported.
        usage: Option<Usage>,
    },
}

/// Why a completion failed. The messages are safe to log; none carries an
/// upstream's response body (those are logged by the adapter, never
/// returned).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Connecting, the first token, a gap between tokens or the whole
    /// completion took longer than allowed.
    #[error("the model timed out: {0}")]
    Timeout(&'static str),
    /// The upstream answered with an error status or an error object.
    #[error("the model's server failed (status {status})")]
    Upstream {
        /// The HTTP status it answered with (0 for an error in the stream).
        status: u16,
    },
    /// The upstream broke the protocol: a malformed chunk, or a stream
    /// that ended without `[DONE]`.
    #[error("the model's server broke the protocol: {0}")]
    Protocol(String),
    /// The upstream can't be reached, or no model is configured.
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
}

impl LlmError {
    /// The API error code a client sees for this failure.
    #[must_use]
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::Timeout(_) => ErrorCode::UpstreamTimeout,
            Self::Upstream { .. } | Self::Protocol(_) => ErrorCode::UpstreamError,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// A message for the client that says what happened without any
    /// upstream detail.
    #[must_use]
    pub const fn public_message(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "The model took too long to answer.",
            Self::Upstream { .. } | Self::Protocol(_) => "The model's server failed.",
            Self::Unavailable(_) => "The model is unavailable.",
        }
    }
}

/// A completion being streamed. Dropping it cancels the upstream request.
#[async_trait]
pub trait CompletionStream: Send {
    /// The next step; `Ok(None)` only after [`LlmEvent::Finished`].
    ///
    /// Cancel-safe: a call dropped before it resolves loses nothing, and
    /// the next call goes on where it would have (the generation drops it
    /// to save its text while the model is quiet).
    ///
    /// # Errors
    /// [`LlmError`] when the upstream fails, stalls or breaks the protocol.
    async fn next(&mut self) -> Result<Option<LlmEvent>, LlmError>;
}

/// A chat model (an OpenAI-compatible server, or the built-in model).
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Starts a streamed completion.
    ///
    /// # Errors
    /// [`LlmError`] when the request can't be made or the upstream refuses
    /// it before streaming.
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> Result<Box<dyn CompletionStream>, LlmError>;

    /// True when the model has no room for another completion, not even
    /// in its queue: a send is then refused at once (503) instead of being
    /// stored and failing. Remote servers queue on their side: `false`.
    fn saturated(&self) -> bool {
        false
    }

    /// Who serves the model, whether it can answer now and how long a
    /// context it takes: what `GET /api/v1/models` shows. An
    /// OpenAI-compatible server is taken to be ready (it is not probed)
    /// and its context length is not known.
    fn status(&self) -> ModelStatus {
        ModelStatus {
            provider: ModelProvider::OpenAiCompatible,
            state: ModelState::Ready,
            context_length: None,
        }
    }
}

/// Who serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelProvider {
    /// The built-in model, in this process.
    Local,
    /// The configured OpenAI-compatible server.
    OpenAiCompatible,
}

impl ModelProvider {
    /// Its name in the API: `local` or `openai`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::OpenAiCompatible => "openai",
        }
    }
}

/// Whether a model can answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// Its weights are still loading: a send is refused (503) until then.
    Loading,
    /// It answers.
    Ready,
    /// Its weights could not be loaded: it never will.
    Failed,
}

impl ModelState {
    /// Its name in the API.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// What a chat model says of itself ([`ChatModel::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelStatus {
    /// Who serves it.
    pub provider: ModelProvider,
    /// Whether it answers now.
    pub state: ModelState,
    /// The most tokens a prompt and its answer can span, when known.
    pub context_length: Option<u64>,
}
