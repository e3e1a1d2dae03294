//! The conversation use cases: the chat model the configuration names,
//! the in-process stream log and cache.

use std::sync::Arc;
use std::time::Duration;

use confab_app::{ConversationPorts, ConversationRules, Conversations};
use confab_domain::ModelSlug;
use confab_llm::{LocalModel, LocalSettings, OpenAiCompatible, OpenAiSettings};
use confab_memory::{MemoryCache, MemoryStreamLog, StreamLogOptions};
use confab_ports::ChatModel;
use secrecy::{ExposeSecret, SecretString};

use super::{Wired, per_minute};
use crate::application::StartupError;
use crate::settings::Settings;

/// A configured chat model and the name of its default model.
type Model = Option<(Arc<dyn ChatModel>, Option<String>)>;

/// The chat model the configuration names: an OpenAI-compatible server,
/// the built-in model (loaded now, off the async workers), or none.
async fn chat_model(settings: &Settings) -> Result<Model, StartupError> {
    let llm = &settings.llm;
    match llm.provider.as_str() {
        "openai" => {
            let key = llm.api_key.expose_secret();
            let model = OpenAiCompatible::new(OpenAiSettings {
                base_url: llm.base_url.clone(),
                api_key: (!key.is_empty()).then(|| SecretString::from(key.to_owned())),
                connect_timeout: Duration::from_millis(llm.connect_timeout_ms),
                first_token_timeout: Duration::from_millis(llm.first_token_timeout_ms),
                idle_timeout: Duration::from_millis(llm.idle_timeout_ms),
                total_timeout: Duration::from_secs(llm.total_timeout_secs),
            })
            .map_err(|e| StartupError::Setup(format!("llm: {e}")))?;
            Ok(Some((Arc::new(model), None)))
        }
        "local" => {
            let l = &llm.local;
            let options = LocalSettings {
                model_path: l.model_path.clone(),
                threads: l.threads,
                max_concurrent: l.max_concurrent,
                max_waiting: l.max_waiting,
                queue_timeout: Duration::from_millis(l.queue_timeout_ms),
                requantize_q8: l.requantize_q8,
                seed: l.seed,
                top_p: Some(l.top_p),
                repeat_penalty: l.repeat_penalty,
                repeat_last_n: l.repeat_last_n,
                default_system_prompt: l.default_system_prompt.clone(),
            };
            let started = std::time::Instant::now();
            let model = tokio::task::spawn_blocking(move || LocalModel::load(options))
                .await
                .map_err(|e| StartupError::Setup(format!("llm: loading the model: {e}")))?
                .map_err(|e| StartupError::Setup(format!("llm: {e}")))?;
            let name = model.model_name().to_owned();
            tracing::info!(
                model = %name,
                path = %l.model_path.display(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "built-in model loaded"
            );
            Ok(Some((Arc::new(model), Some(name))))
        }
        _ => {
            tracing::warn!("CONFAB_LLM_PROVIDER=none: sending a message answers 503");
            Ok(None)
        }
    }
}

fn slug(name: &str) -> Result<ModelSlug, StartupError> {
    ModelSlug::parse(name).map_err(|e| StartupError::Setup(format!("llm model '{name}': {e}")))
}

/// The conversation use cases over the store, the in-process stream log
/// and cache, and the configured model.
pub(crate) async fn conversations(
    settings: &Settings,
    wired: &Wired,
) -> Result<Conversations, StartupError> {
    let llm = &settings.llm;
    let g = &settings.generation;
    let max_tokens = llm.max_tokens;
    let log = MemoryStreamLog::new(StreamLogOptions {
        retention: Duration::from_secs(g.stream_retention_secs),
        // Every event but the text deltas is one of a handful; the adapter
        // sends at most one delta per token.
        max_events_per_log: usize::try_from(max_tokens)
            .unwrap_or(usize::MAX)
            .saturating_add(64),
        max_logs: g.max_streams,
    });
    let model = chat_model(settings).await?;
    let default_model = match (&model, llm.model.is_empty()) {
        (_, false) => slug(&llm.model)?,
        (Some((_, Some(name))), true) => slug(name)?,
        _ => slug("default")?,
    };
    Ok(Conversations::new(
        ConversationPorts {
            conversations: wired.store.clone(),
            messages: wired.store.clone(),
            model: model.map(|(m, _)| m),
            log: Arc::new(log),
            cache: Arc::new(MemoryCache::new(settings.cache.max_entries)),
            resume_tokens: wired.codec.clone(),
            limiter: wired.limiter.clone(),
        },
        ConversationRules {
            default_model,
            allowed_models: llm
                .models
                .iter()
                .map(|m| slug(m))
                .collect::<Result<_, _>>()?,
            max_tokens,
            system_prompt: llm.system_prompt.clone(),
            prompt_budget_chars: llm.prompt_budget_chars,
            max_concurrent_per_user: g.max_concurrent_per_user,
            generation_policy: per_minute("generation", g.per_minute),
            flush_interval: Duration::from_millis(g.flush_interval_ms),
            title_generation: llm.title_generation,
            title_timeout: Duration::from_millis(llm.title_timeout_ms),
            cache_ttl: Duration::from_secs(settings.cache.ttl_secs),
            stop_wait: Duration::from_millis(g.stop_wait_ms),
        },
    ))
}
