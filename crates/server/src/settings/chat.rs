//! `[llm]`, `[generation]` and `[cache]`: the chat model, how answers are
//! generated and streamed, and the read cache.

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, invalid};

/// `[llm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// `local` or `openai`.
    pub provider: String,
    /// OpenAI-compatible base URL.
    pub base_url: String,
    /// Its API key (environment only).
    pub api_key: SecretString,
    /// The default model to request.
    pub model: String,
    /// Other models a request may name.
    pub models: Vec<String>,
    /// Milliseconds to connect to the upstream.
    pub connect_timeout_ms: u64,
    /// Milliseconds from the request to the first token.
    pub first_token_timeout_ms: u64,
    /// Milliseconds allowed between two tokens.
    pub idle_timeout_ms: u64,
    /// Seconds one answer may take in all.
    pub total_timeout_secs: u64,
    /// Most tokens in one answer.
    pub max_tokens: u32,
    /// The system prompt before every conversation (empty: none).
    pub system_prompt: String,
    /// Most characters of history sent with a message.
    pub prompt_budget_chars: usize,
    /// Ask the model to title new conversations (else a heuristic).
    pub title_generation: bool,
    /// Milliseconds the title call may take.
    pub title_timeout_ms: u64,
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
    pub max_concurrent: usize,
    /// Generations that may wait for a slot.
    pub max_waiting: usize,
    /// Milliseconds a waiting generation waits.
    pub queue_timeout_ms: u64,
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
    pub max_concurrent_per_user: usize,
    /// Answers one user may start per minute.
    pub per_minute: u32,
    /// Milliseconds between saves of a partial answer.
    pub flush_interval_ms: u64,
    /// Seconds a finished stream stays resumable.
    pub stream_retention_secs: u64,
    /// Most streams kept in memory (running and retained).
    pub max_streams: usize,
    /// Seconds of silence before a keep-alive comment.
    pub keep_alive_secs: u64,
    /// Seconds a resume token is valid.
    pub resume_ttl_secs: u64,
    /// Milliseconds a stop waits for the answer to be saved.
    pub stop_wait_ms: u64,
    /// Seconds running answers get to save themselves at shutdown.
    pub shutdown_grace_secs: u64,
    /// Seconds between two sweeps for answers no generation holds any more
    /// (closed as `failed`; see `Conversations::close_orphans`).
    pub orphan_sweep_secs: u64,
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Seconds a cached list or history lives.
    pub ttl_secs: u64,
    /// Most entries kept.
    pub max_entries: usize,
}

/// `[idempotency]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// Seconds a completed request's outcome is kept for retries.
    pub ttl_secs: u64,
    /// Seconds a claimed key holds without an outcome (its instance died
    /// mid-request) before it is free again.
    pub in_flight_secs: u64,
    /// Most keys kept in process (without Redis); beyond, new keys are
    /// refused with 503 rather than forgetting one a retry relies on.
    pub max_entries: usize,
}

impl super::Settings {
    pub(super) fn validate_chat(&self) -> Result<(), ConfigError> {
        let llm = &self.llm;
        match llm.provider.as_str() {
            "none" => {}
            "local" => {
                let l = &llm.local;
                if l.max_concurrent == 0 || l.queue_timeout_ms == 0 {
                    return Err(invalid(
                        "llm.local.max_concurrent and llm.local.queue_timeout_ms must be greater than 0",
                    ));
                }
                let top_p_ok = l.top_p > 0.0 && l.top_p <= 1.0;
                if !top_p_ok || !(1.0..=2.0).contains(&l.repeat_penalty) {
                    return Err(invalid(
                        "llm.local.top_p must be in (0, 1] and llm.local.repeat_penalty in [1, 2]",
                    ));
                }
            }
            "openai" => {
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
            other => {
                return Err(invalid(format!(
                    "CONFAB_LLM_PROVIDER must be local, openai or none, not '{other}'"
                )));
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
        let positive = [
            ("llm.connect_timeout_ms", llm.connect_timeout_ms),
            ("llm.first_token_timeout_ms", llm.first_token_timeout_ms),
            ("llm.idle_timeout_ms", llm.idle_timeout_ms),
            ("llm.total_timeout_secs", llm.total_timeout_secs),
            ("llm.max_tokens", u64::from(llm.max_tokens)),
            ("llm.prompt_budget_chars", llm.prompt_budget_chars as u64),
            ("llm.title_timeout_ms", llm.title_timeout_ms),
            (
                "generation.max_concurrent_per_user",
                g.max_concurrent_per_user as u64,
            ),
            ("generation.per_minute", u64::from(g.per_minute)),
            ("generation.flush_interval_ms", g.flush_interval_ms),
            ("generation.max_streams", g.max_streams as u64),
            ("generation.keep_alive_secs", g.keep_alive_secs),
            ("generation.resume_ttl_secs", g.resume_ttl_secs),
            ("generation.stop_wait_ms", g.stop_wait_ms),
            ("generation.shutdown_grace_secs", g.shutdown_grace_secs),
            ("generation.orphan_sweep_secs", g.orphan_sweep_secs),
            ("cache.ttl_secs", self.cache.ttl_secs),
            ("cache.max_entries", self.cache.max_entries as u64),
            ("idempotency.ttl_secs", self.idempotency.ttl_secs),
            (
                "idempotency.in_flight_secs",
                self.idempotency.in_flight_secs,
            ),
            (
                "idempotency.max_entries",
                self.idempotency.max_entries as u64,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(format!("{key} must be greater than 0")));
        }
        if llm.max_tokens > 1_000_000 {
            return Err(invalid("llm.max_tokens must be at most 1000000"));
        }
        Ok(())
    }
}
