//! The conversation use cases: the chat model the configuration names,
//! over the stream log and cache [`wire`](super::wire) built.

use std::sync::Arc;

use confab_app::{ConversationPorts, ConversationRules, Conversations};
use confab_domain::ModelSlug;
use confab_llm::{LoadingModel, LocalModel, LocalSettings, OpenAiCompatible, OpenAiSettings};
use confab_ports::{ChatModel, SystemClock};
use secrecy::{ExposeSecret, SecretString};

use super::{Wired, per_minute};
use crate::application::StartupError;
use crate::settings::{LlmProvider, Settings};

/// A configured chat model.
struct ChatModelWiring {
    /// The model.
    model: Arc<dyn ChatModel>,
    /// The name of its default model, when it knows it.
    default_name: Option<String>,
    /// The built-in model while it loads.
    loading: Option<Arc<LoadingModel>>,
}

/// The conversation use cases and, with the built-in model, the model as
/// it loads (for readiness and for start-up to wait on).
pub(crate) struct ChatWiring {
    /// The use cases.
    pub(crate) conversations: Conversations,
    /// The built-in model, when it is the provider.
    pub(crate) loading: Option<Arc<LoadingModel>>,
    /// The models a send may name: the default one first.
    pub(crate) models: Vec<String>,
}

/// The chat model the configuration names: an OpenAI-compatible server,
/// the built-in model (its weights loading in the background), or none.
async fn chat_model(settings: &Settings) -> Result<Option<ChatModelWiring>, StartupError> {
    let llm = &settings.llm;
    match llm.provider {
        LlmProvider::Openai => {
            let key = llm.api_key.expose_secret();
            let model = OpenAiCompatible::new(OpenAiSettings {
                base_url: llm.base_url.clone(),
                api_key: (!key.is_empty()).then(|| SecretString::from(key.to_owned())),
                connect_timeout: llm.connect_timeout,
                first_token_timeout: llm.first_token_timeout,
                idle_timeout: llm.idle_timeout,
                total_timeout: llm.total_timeout,
                pool_max_idle: llm.pool_max_idle,
                pool_idle_timeout: llm.pool_idle_timeout,
            })
            .map_err(|e| StartupError::Setup(format!("llm: {e}")))?;
            Ok(Some(ChatModelWiring {
                model: Arc::new(model),
                default_name: None,
                loading: None,
            }))
        }
        LlmProvider::Local => {
            let l = &llm.local;
            let options = LocalSettings {
                model_path: l.model_path.clone(),
                threads: l.threads,
                max_concurrent: l.max_concurrent.get(),
                max_waiting: l.max_waiting,
                queue_timeout: l.queue_timeout,
                requantize_q8: l.requantize_q8,
                seed: l.seed,
                top_p: Some(l.top_p),
                repeat_penalty: l.repeat_penalty,
                repeat_last_n: l.repeat_last_n,
                default_system_prompt: l.default_system_prompt.clone(),
            };
            // The header and tokenizer are checked now (a bad path or file
            // stops start-up); the weights load while the server starts.
            let model =
                tokio::task::spawn_blocking(move || LocalModel::load_in_background(options))
                    .await
                    .map_err(|e| StartupError::Setup(format!("llm: opening the model: {e}")))?
                    .map_err(|e| StartupError::Setup(format!("llm: {e}")))?;
            let name = model.model_name().to_owned();
            tracing::info!(
                model = %name,
                path = %l.model_path.display(),
                "loading the built-in model"
            );
            let model = Arc::new(model);
            Ok(Some(ChatModelWiring {
                model: model.clone(),
                default_name: Some(name),
                loading: Some(model),
            }))
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
) -> Result<ChatWiring, StartupError> {
    let llm = &settings.llm;
    let g = &settings.generation;
    let max_tokens = llm.max_tokens.get();
    let model = chat_model(settings).await?;
    let default_model = match (
        model.as_ref().and_then(|m| m.default_name.as_deref()),
        llm.model.is_empty(),
    ) {
        (_, false) => slug(&llm.model)?,
        (Some(name), true) => slug(name)?,
        (None, true) => slug("default")?,
    };
    let loading = model.as_ref().and_then(|m| m.loading.clone());
    let allowed_models: Vec<ModelSlug> = llm
        .models
        .iter()
        .map(|m| slug(m))
        .collect::<Result<_, _>>()?;
    let models = std::iter::once(&default_model)
        .chain(&allowed_models)
        .map(|m| m.as_str().to_owned())
        .collect();
    let conversations = Conversations::new(
        ConversationPorts {
            conversations: wired.store.clone(),
            messages: wired.store.clone(),
            model: model.map(|m| m.model),
            log: wired.log.clone(),
            cache: wired.cache.clone(),
            resume_tokens: wired.codec.clone(),
            limiter: wired.limiter.clone(),
            clock: Arc::new(SystemClock),
            usage: wired.store.clone(),
            blocklist: wired.blocklist.clone(),
        },
        ConversationRules {
            default_model,
            allowed_models,
            max_tokens,
            system_prompt: llm.system_prompt.clone(),
            prompt_budget_chars: llm.prompt_budget_chars.get(),
            max_concurrent_per_user: g.max_concurrent_per_user.get(),
            max_readers_per_user: g.max_readers_per_user.get(),
            max_readers_per_answer: g.max_readers_per_answer.get(),
            generation_policy: per_minute("generation", g.per_minute),
            flush_interval: g.flush_interval,
            title_generation: llm.title_generation,
            title_timeout: llm.title_timeout,
            cache_ttl: settings.cache.ttl,
            stop_wait: g.stop_wait,
            allowance: settings.quota.allowance(),
        },
    );
    Ok(ChatWiring {
        conversations,
        loading,
        models,
    })
}
