//! `[llm]`, `[generation]` and `[cache]`: the chat model, how answers are
//! generated and streamed, and the read cache.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, invalid, must_be_positive, units};

/// `llm.provider` (`CONFAB_LLM_PROVIDER`): where answers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProvider {
    /// The built-in model, in process.
    Local,
    /// An OpenAI-compatible server (`CONFAB_LLM_BASE_URL`).
    Openai,
    /// No model: sends answer 503.
    None,
}

impl units::Named for LlmProvider {
    const WHAT: &'static str = "CONFAB_LLM_PROVIDER";
    const NAMES: &'static [(Self, &'static str)] = &[
        (Self::Local, "local"),
        (Self::Openai, "openai"),
        (Self::None, "none"),
    ];
}

units::named!(LlmProvider);

/// `[llm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// `local`, `openai` or `none`.
    pub provider: LlmProvider,
    /// OpenAI-compatible base URL.
    pub base_url: String,
    /// Its API key (environment only).
    pub api_key: SecretString,
    /// The default model to request.
    pub model: String,
    /// Other models a request may name.
    pub models: Vec<String>,
    /// Milliseconds to connect to the upstream.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "units::millis")]
    pub connect_timeout: Duration,
    /// Milliseconds from the request to the first token.
    #[serde(rename = "first_token_timeout_ms", deserialize_with = "units::millis")]
    pub first_token_timeout: Duration,
    /// Milliseconds allowed between two tokens.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "units::millis")]
    pub idle_timeout: Duration,
    /// Seconds one answer may take in all.
    #[serde(rename = "total_timeout_secs", deserialize_with = "units::secs")]
    pub total_timeout: Duration,
    /// Most idle connections to the model's server kept for the next
    /// answers (0: a connection per answer).
    pub pool_max_idle: usize,
    /// Milliseconds an idle connection is kept.
    #[serde(rename = "pool_idle_timeout_ms", deserialize_with = "units::millis")]
    pub pool_idle_timeout: Duration,
    /// Most tokens in one answer.
    pub max_tokens: NonZeroU32,
    /// The system prompt before every conversation (empty: none).
    pub system_prompt: String,
    /// Most characters of history sent with a message.
    pub prompt_budget_chars: NonZeroUsize,
    /// Ask the model to title new conversations (else a heuristic).
    pub title_generation: bool,
    /// Milliseconds the title call may take.
    #[serde(rename = "title_timeout_ms", deserialize_with = "units::millis")]
    pub title_timeout: Duration,
    /// The built-in model.
    pub local: LocalModelSettings,
}

/// `[llm.local]`: the built-in model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalModelSettings {
    /// The GGUF file.
    pub model_path: std::path::PathBuf,
    /// Inference threads; 0 = one per physical core. `confab serve`
    /// applies it by restarting itself with `CANDLE_NUM_THREADS` and
    /// `RAYON_NUM_THREADS` set (candle reads the count from the
    /// environment).
    pub threads: usize,
    /// Generations at once.
    pub max_concurrent: NonZeroUsize,
    /// Generations that may wait for a slot.
    pub max_waiting: usize,
    /// Milliseconds a waiting generation waits.
    #[serde(rename = "queue_timeout_ms", deserialize_with = "units::millis")]
    pub queue_timeout: Duration,
    /// Re-quantize to Q8_0 at load.
    pub requantize_q8: bool,
    /// Sampling seed.
    pub seed: u64,
    /// Nucleus sampling threshold.
    pub top_p: f64,
    /// Repeat penalty (1.0 = off).
    pub repeat_penalty: f32,
    /// Tokens the repeat penalty looks back over.
    pub repeat_last_n: usize,
    /// The system prompt when there is none.
    pub default_system_prompt: String,
}

/// `[generation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSettings {
    /// Answers one user may have generating at once.
    pub max_concurrent_per_user: NonZeroUsize,
    /// Streams one user may read at once on one instance (resumes and
    /// re-attached retries; a send's own stream always opens).
    pub max_readers_per_user: NonZeroUsize,
    /// Streams of one answer read at once on one instance.
    pub max_readers_per_answer: NonZeroUsize,
    /// Answers one user may start per minute.
    pub per_minute: NonZeroU32,
    /// Milliseconds between saves of a partial answer.
    #[serde(rename = "flush_interval_ms", deserialize_with = "units::millis")]
    pub flush_interval: Duration,
    /// Seconds a finished stream stays resumable.
    #[serde(rename = "stream_retention_secs", deserialize_with = "units::secs")]
    pub stream_retention: Duration,
    /// Most streams kept in memory (running and retained).
    pub max_streams: NonZeroUsize,
    /// Seconds of silence before a keep-alive comment.
    #[serde(rename = "keep_alive_secs", deserialize_with = "units::secs")]
    pub keep_alive: Duration,
    /// Seconds a resume token is valid.
    #[serde(rename = "resume_ttl_secs", deserialize_with = "units::secs")]
    pub resume_ttl: Duration,
    /// Milliseconds a stop waits for the answer to be saved.
    #[serde(rename = "stop_wait_ms", deserialize_with = "units::millis")]
    pub stop_wait: Duration,
    /// Seconds running answers get to save themselves at shutdown.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "units::secs")]
    pub shutdown_grace: Duration,
    /// Seconds between two sweeps for answers no generation holds any more
    /// (closed as `failed`; see `Conversations::close_orphans`).
    #[serde(rename = "orphan_sweep_secs", deserialize_with = "units::secs")]
    pub orphan_sweep: Duration,
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Seconds a cached list or history lives.
    #[serde(rename = "ttl_secs", deserialize_with = "units::secs")]
    pub ttl: Duration,
    /// Most entries kept.
    pub max_entries: NonZeroUsize,
    /// Most bytes of values kept (by `CachedValue::weight`).
    pub max_bytes: NonZeroUsize,
}

/// `[quota]`: the token allowance of every user an admin set none for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Tokens (prompt and completion) one user's answers may use per day
    /// (UTC); 0: no limit.
    pub daily_tokens: u64,
    /// The same per calendar month; 0: no limit.
    pub monthly_tokens: u64,
}

impl QuotaSettings {
    /// The allowance these set.
    #[must_use]
    pub fn allowance(&self) -> confab_domain::Allowance {
        let limit = |n: u64| (n > 0).then_some(n);
        confab_domain::Allowance {
            daily: limit(self.daily_tokens),
            monthly: limit(self.monthly_tokens),
        }
    }
}

/// `[idempotency]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// Seconds a completed request's outcome is kept for retries.
    #[serde(rename = "ttl_secs", deserialize_with = "units::secs")]
    pub ttl: Duration,
    /// Seconds a claimed key holds without an outcome (its instance died
    /// mid-request) before it is free again.
    #[serde(rename = "in_flight_secs", deserialize_with = "units::secs")]
    pub in_flight: Duration,
    /// Most keys kept in process (without Redis); beyond, new keys are
    /// refused with 503 rather than forgetting one a retry relies on.
    pub max_entries: NonZeroUsize,
    /// Most bytes of keys and outcomes kept in process (without Redis);
    /// beyond, new keys are refused with 503 as for `max_entries`.
    pub max_bytes: NonZeroUsize,
    /// Live keys one user may hold (in process and in Redis); beyond, that
    /// user's new keys are refused with 429.
    pub max_per_user: NonZeroUsize,
}

impl super::Settings {
    pub(super) fn validate_chat(&self) -> Result<(), ConfigError> {
        let llm = &self.llm;
        match llm.provider {
            LlmProvider::None => {}
            LlmProvider::Local => {
                let l = &llm.local;
                if l.queue_timeout.is_zero() {
                    return Err(invalid("llm.local.queue_timeout_ms must be greater than 0"));
                }
                let top_p_ok = l.top_p > 0.0 && l.top_p <= 1.0;
                if !top_p_ok || !(1.0..=2.0).contains(&l.repeat_penalty) {
                    return Err(invalid(
                        "llm.local.top_p must be in (0, 1] and llm.local.repeat_penalty in [1, 2]",
                    ));
                }
            }
            LlmProvider::Openai => {
                let url = &llm.base_url;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "CONFAB_LLM_BASE_URL must be an http(s) URL when CONFAB_LLM_PROVIDER=openai",
                    ));
                }
                if llm.model.is_empty() {
                    return Err(invalid(
                        "CONFAB_LLM_MODEL is required when CONFAB_LLM_PROVIDER=openai",
                    ));
                }
            }
        }
        for model in std::iter::once(&llm.model)
            .filter(|m| !m.is_empty())
            .chain(&llm.models)
        {
            confab_domain::ModelSlug::parse(model)
                .map_err(|_| invalid(format!("llm model '{model}' is not a valid model name")))?;
        }
        let g = &self.generation;
        must_be_positive(&[
            ("llm.connect_timeout_ms", llm.connect_timeout),
            ("llm.first_token_timeout_ms", llm.first_token_timeout),
            ("llm.idle_timeout_ms", llm.idle_timeout),
            ("llm.total_timeout_secs", llm.total_timeout),
            ("llm.pool_idle_timeout_ms", llm.pool_idle_timeout),
            ("llm.title_timeout_ms", llm.title_timeout),
            ("generation.flush_interval_ms", g.flush_interval),
            ("generation.keep_alive_secs", g.keep_alive),
            ("generation.resume_ttl_secs", g.resume_ttl),
            ("generation.stop_wait_ms", g.stop_wait),
            ("generation.shutdown_grace_secs", g.shutdown_grace),
            ("generation.orphan_sweep_secs", g.orphan_sweep),
            ("cache.ttl_secs", self.cache.ttl),
            ("idempotency.ttl_secs", self.idempotency.ttl),
            ("idempotency.in_flight_secs", self.idempotency.in_flight),
        ])?;
        if llm.max_tokens.get() > MAX_TOKENS {
            return Err(invalid(format!(
                "llm.max_tokens must be at most {MAX_TOKENS}"
            )));
        }
        Ok(())
    }
}

/// The most tokens one answer may be asked for.
const MAX_TOKENS: u32 = 1_000_000;
