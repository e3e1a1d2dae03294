//! The built-in model: a GGUF llama (SmolLM2-135M-Instruct) run in-process
//! on the CPU with candle, behind the same port as the OpenAI adapter.
//!
//! [`LocalModel::load`] reads the file once: the weights (the formats
//! candle has no fast CPU kernel for re-quantized to Q8_0 when
//! `requantize_q8`) and a byte-level BPE tokenizer built from the GGUF's
//! own vocabulary, merges and control tokens. Nothing is downloaded.
//!
//! A completion renders the conversation with the model's ChatML template
//! (its default system prompt first when the conversation has none),
//! fitting it into the context by dropping the oldest turns after the
//! system turn, and samples with the request's temperature (0.2 when unset,
//! the model card's; 0 means the most likely token), the settings' top-p
//! and repeat penalty, and a seeded generator: the same seed and request
//! give the same answer. It stops at `<|im_end|>` or `<|endoftext|>`
//! (`Stop`) or at `max_tokens` (`Length`), and reports the usage. The
//! model's state after a system turn is kept for the next prompts that
//! start with it (a few of them), which about halves the time to the first
//! token of a short question.
//!
//! Inference never runs on the async workers: each generation runs on a
//! thread of its own and sends its events through a channel the stream
//! reads. At most `max_concurrent` run at once; up to `max_waiting` more
//! wait (first come, first served) for at most `queue_timeout`; anything
//! beyond is refused at once with
//! [`LlmError::Unavailable`]`("the local model is busy")`. Dropping the
//! stream frees the slot at once and closes the channel: the thread sees
//! it at the next token (or between chunks of a long prompt) and stops.
//!
//! Loading: [`LocalModel::load`] blocks for the whole file (about a second
//! for SmolLM2-135M with re-quantization);
//! [`LocalModel::load_in_background`] checks the header and tokenizer at
//! once and reads the weights on a thread, returning a [`LoadingModel`]
//! that refuses completions and reports not ready (`llm`) until they are
//! in.
//!
//! Threads: candle 0.11 computes on a process-wide pool it sizes once,
//! from `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the number of
//! physical cores, and has no other way to set it. Changing the
//! environment from inside the process would take `unsafe` (forbidden
//! here), so the process has to be started with `CANDLE_NUM_THREADS` and
//! `RAYON_NUM_THREADS` set (`confab serve` restarts itself with both, see
//! [`default_threads`]); loading warns when [`LocalSettings::threads`] asks for another
//! count than candle runs with, and [`LocalModel::threads`] says which it
//! is.

mod engine;
mod loading;
mod primed;
mod sampling;
mod stream;
mod template;
#[cfg(test)]
mod tests;
mod tokenizer;

use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::quantized::gguf_file::Content;
use confab_ports::{
    ChatModel, CompletionRequest, CompletionStream, LlmError, ModelProvider, ModelState,
    ModelStatus, PromptTurn,
};
use tokio::sync::{Semaphore, mpsc, watch};

use self::engine::{Job, Weights};
use self::loading::LoadState;
pub use self::loading::LoadingModel;
use self::primed::Primed;
use self::stream::{Held, LocalStream, Slots};
use self::tokenizer::GgufTokenizer;

/// The temperature when a request sets none: SmolLM2's model card's. A
/// model this small drifts off topic quickly at higher temperatures.
const DEFAULT_TEMPERATURE: f32 = 0.2;

/// Events a generation may get ahead of its reader: the thread waits
/// beyond that.
const EVENT_BUFFER: usize = 64;

/// The model file and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSettings {
    /// The GGUF file (a llama-architecture chat model with a ChatML
    /// vocabulary, e.g. `models/SmolLM2-135M-Instruct.Q4_1.gguf`).
    pub model_path: PathBuf,
    /// Inference threads; 0 = candle's own choice (the number of physical
    /// cores). candle sizes its pool once per process from the environment
    /// (see the module docs): the loader checks this against it and warns
    /// on a mismatch; the process's starter applies it.
    pub threads: usize,
    /// Generations running at once, each on a dedicated thread (at least
    /// one).
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; beyond this, a completion fails
    /// at once with [`LlmError::Unavailable`].
    pub max_waiting: usize,
    /// How long a waiting request waits before it fails the same way.
    pub queue_timeout: Duration,
    /// Re-quantize weights stored as Q4_1 (or Q5_0, Q5_1: formats candle
    /// has no SIMD kernel for) to Q8_0 at load. Measured with SmolLM2-135M
    /// on 2 cores: ~3x the tokens per second and ~1/5 of the time to the
    /// first token, for ~0.6 s more loading and ~50 MB more memory (~150
    /// MB more at the peak of loading).
    pub requantize_q8: bool,
    /// The sampling seed: the same seed and request give the same answer.
    pub seed: u64,
    /// Nucleus sampling: only the most likely tokens whose probabilities
    /// add up to this (in (0, 1]; `None` or 1 = all).
    pub top_p: Option<f64>,
    /// Divides the scores of tokens the model generated recently (1.0 =
    /// off).
    pub repeat_penalty: f32,
    /// How many of the last generated tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// The system turn put first when the conversation starts with none
    /// (empty = none).
    pub default_system_prompt: String,
}

impl LocalSettings {
    /// The recommended settings for the model at `model_path`: candle's
    /// threads (all physical cores), two generations at once (on 2 cores
    /// they share ~75 tok/s, against ~80 for one alone, and neither waits
    /// for the other to start) with four more waiting up to 30 s,
    /// Q8_0 re-quantization, top-p 0.9 (SmolLM2's model card), a light
    /// repeat penalty (1.1 over 64 tokens: a model this small loops
    /// easily), and SmolLM2's own system prompt.
    #[must_use]
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            threads: 0,
            max_concurrent: 2,
            max_waiting: 4,
            queue_timeout: Duration::from_secs(30),
            requantize_q8: true,
            seed: 42,
            top_p: Some(0.9),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            default_system_prompt:
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face".to_owned(),
        }
    }
}

/// Why the local model can't be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file isn't there.
    #[error(
        "the local model file {} is missing: run `make model` (or scripts/fetch-model.sh) to fetch it",
        path.display()
    )]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The file can't be read or isn't a usable model: the reason says why.
    #[error("the local model file is invalid: {0}")]
    Invalid(String),
    /// A setting is out of range: the reason says which.
    #[error("the local model's settings are invalid: {0}")]
    Settings(&'static str),
}

/// What every generation shares: read-only but for the cache of primed
/// models.
struct Shared {
    weights: Weights,
    tokenizer: GgufTokenizer,
    settings: LocalSettings,
    primed: Primed,
}

/// The built-in chat model, loaded once and shared by every generation.
pub struct LocalModel {
    shared: Arc<Shared>,
    slots: Slots,
    name: String,
    threads: usize,
}

impl fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalModel")
            .field("name", &self.name)
            .field("context", &self.shared.weights.context)
            .field("threads", &self.threads)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl LocalModel {
    /// Loads the weights and the tokenizer (about a second: call it from a
    /// blocking context, not an async worker).
    ///
    /// # Errors
    /// [`LocalError::Missing`] when the file isn't there,
    /// [`LocalError::Invalid`] when it can't be read or isn't a llama GGUF
    /// with a byte-level BPE ChatML vocabulary, [`LocalError::Settings`]
    /// when a setting is out of range.
    pub fn load(settings: LocalSettings) -> Result<Self, LocalError> {
        Opened::open(settings)?.load()
    }

    /// Checks the settings and reads the file's header and tokenizer now
    /// (a fraction of a second), then loads the weights on a thread of its
    /// own: the returned model answers as soon as they are in, and says
    /// whether they are through [`LoadingModel`]'s readiness check.
    ///
    /// # Errors
    /// As [`LocalModel::load`] for everything but the weights; a failure
    /// to load those is reported by [`LoadingModel::loaded`].
    pub fn load_in_background(settings: LocalSettings) -> Result<LoadingModel, LocalError> {
        let opened = Opened::open(settings)?;
        let name = opened.name.clone();
        let (state, watcher) = watch::channel(LoadState::Loading);
        std::thread::Builder::new()
            .name("confab-model-load".to_owned())
            .spawn(move || {
                let loaded = match opened.load() {
                    Ok(model) => LoadState::Ready(Arc::new(model)),
                    Err(e) => LoadState::Failed(e.to_string()),
                };
                // Nobody waiting is fine: the model is then unused.
                let _ = state.send(loaded);
            })
            .map_err(|e| LocalError::Invalid(format!("no thread to load the model on: {e}")))?;
        Ok(LoadingModel {
            name,
            state: watcher,
        })
    }

    /// The model's name: the GGUF's `general.name` when it is a usable
    /// model slug, else the file's name without its extension and
    /// quantization tag (`SmolLM2-135M-Instruct`).
    #[must_use]
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The threads candle computes with (process-wide).
    #[must_use]
    pub const fn threads(&self) -> usize {
        self.threads
    }

    /// The most tokens a prompt and its answer can span.
    #[must_use]
    pub fn context_length(&self) -> usize {
        self.shared.weights.context
    }

    /// The token ids of `text` as the model reads template text: special
    /// tokens spelled out (`<|im_start|>`) are one id each.
    ///
    /// # Errors
    /// [`LocalError::Invalid`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.shared.tokenizer.encode_templated(text)
    }

    /// The text of `ids`, special tokens included.
    ///
    /// # Errors
    /// [`LocalError::Invalid`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.shared.tokenizer.decode(ids)
    }

    /// The prompt the model is given for `turns`, as text (before any
    /// trimming to fit the context).
    #[must_use]
    pub fn chat_prompt(&self, turns: &[PromptTurn]) -> String {
        template::render(turns, &self.shared.settings.default_system_prompt)
    }
}

/// A model file whose header and tokenizer are read and checked: what is
/// left to load is the weights.
struct Opened {
    settings: LocalSettings,
    file: File,
    content: Content,
    tokenizer: GgufTokenizer,
    name: String,
    started: Instant,
}

impl Opened {
    fn open(settings: LocalSettings) -> Result<Self, LocalError> {
        check(&settings)?;
        let started = Instant::now();
        let path = &settings.model_path;
        let mut file = File::open(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => LocalError::Missing { path: path.clone() },
            _ => LocalError::Invalid(format!("{} can't be read: {e}", path.display())),
        })?;
        let content = Content::read(&mut file).map_err(|e| {
            LocalError::Invalid(format!("{} is not a GGUF file: {e}", path.display()))
        })?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map_or("none", String::as_str);
        if architecture != "llama" {
            return Err(LocalError::Invalid(format!(
                "the architecture is {architecture}, not llama"
            )));
        }
        let name = model_name(&content, path);
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        Ok(Self {
            settings,
            file,
            content,
            tokenizer,
            name,
            started,
        })
    }

    /// Reads the weights (most of the loading time).
    fn load(self) -> Result<LocalModel, LocalError> {
        let Self {
            settings,
            mut file,
            content,
            tokenizer,
            name,
            started,
        } = self;
        let weights = engine::load(content, &mut file, settings.requantize_q8)?;
        // Sizes candle's pool now if nothing has yet: the count is the
        // calling thread plus the pool's workers.
        let threads = candle_core::utils::barrier_pool().n_workers() + 1;
        if settings.threads != 0 && settings.threads != threads {
            tracing::warn!(
                wanted = settings.threads,
                actual = threads,
                "the local model runs on another number of threads than configured: \
                 candle sizes its pool once per process from CANDLE_NUM_THREADS"
            );
        }
        tracing::info!(
            model = %name,
            context = weights.context,
            threads,
            requantize_q8 = settings.requantize_q8,
            load_ms = started.elapsed().as_millis(),
            "the local model is loaded"
        );
        let slots = Slots::new(
            settings.max_concurrent,
            settings.max_waiting,
            settings.queue_timeout,
        );
        Ok(LocalModel {
            shared: Arc::new(Shared {
                weights,
                tokenizer,
                settings,
                primed: Primed::default(),
            }),
            slots,
            name,
            threads,
        })
    }
}

#[async_trait]
impl ChatModel for LocalModel {
    /// Starts a generation on a thread of its own once a slot is free. The
    /// request's model name is not looked at: there is one model.
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> Result<Box<dyn CompletionStream>, LlmError> {
        let slot = Held::new(self.slots.acquire().await?);
        let (events, reader) = mpsc::channel(EVENT_BUFFER);
        let job = Job {
            turns: request.turns,
            temperature: request.temperature,
            max_tokens: usize::try_from(request.max_tokens).unwrap_or(usize::MAX),
            events,
            slot: slot.clone(),
        };
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("confab-local-model".to_owned())
            .spawn(move || engine::run(&shared, job))
            .map_err(|e| {
                tracing::error!(error = %e, "no thread for a local generation");
                LlmError::Unavailable("the local model can't start a generation".to_owned())
            })?;
        Ok(Box::new(LocalStream::new(reader, slot)))
    }

    /// Every slot is taken and the queue is full: a completion now would
    /// be refused.
    fn saturated(&self) -> bool {
        self.slots.saturated()
    }

    fn status(&self) -> ModelStatus {
        ModelStatus {
            provider: ModelProvider::Local,
            state: ModelState::Ready,
            context_length: u64::try_from(self.context_length()).ok(),
        }
    }
}

/// The threads candle computes with when the process starts: those its
/// environment names (`RAYON_NUM_THREADS`), else the physical cores.
///
/// Start the process with both `CANDLE_NUM_THREADS` and
/// `RAYON_NUM_THREADS` set: without the latter candle 0.11 counts the
/// physical cores again, reading `/proc/cpuinfo`, at every f32 matrix
/// product (several per token; measured: ~7% of a generation's time).
#[must_use]
pub fn default_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Refuses settings that can't work.
fn check(settings: &LocalSettings) -> Result<(), LocalError> {
    if settings.max_concurrent == 0 {
        return Err(LocalError::Settings("max_concurrent must be at least 1"));
    }
    if settings.max_concurrent > Semaphore::MAX_PERMITS {
        return Err(LocalError::Settings("max_concurrent is too large"));
    }
    if !(settings.repeat_penalty.is_finite() && settings.repeat_penalty > 0.0) {
        return Err(LocalError::Settings("repeat_penalty must be more than 0"));
    }
    if settings
        .top_p
        .is_some_and(|p| !(p.is_finite() && p > 0.0 && p <= 1.0))
    {
        return Err(LocalError::Settings("top_p must be in (0, 1]"));
    }
    Ok(())
}

/// `general.name` when it is usable as a model slug (letters, digits and
/// `._:/-`), else the file stem without a trailing quantization tag
/// (`.Q4_1`, `.Q8_0`, `.F16` …). SmolLM2's GGUF names a training run
/// there ("Smollm2 135M 8k Lc100K Mix1 Ep2"), which isn't one.
fn model_name(content: &Content, path: &Path) -> String {
    let slug = |s: &str| {
        (1..=100).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
    };
    if let Some(name) = content
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .filter(|name| slug(name))
    {
        return name.clone();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let quantization = |tag: &str| {
        let tag = tag.to_ascii_uppercase();
        ["Q", "IQ", "F16", "F32", "BF16"]
            .iter()
            .any(|p| tag.starts_with(p))
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match stem.rsplit_once('.') {
        Some((base, tag)) if !base.is_empty() && quantization(tag) => base.to_owned(),
        _ => stem,
    }
}
