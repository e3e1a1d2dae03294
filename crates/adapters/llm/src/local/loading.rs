//! The built-in model while its weights load: refuses completions and
//! reports not ready until they are in, then is the model.

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{
    ChatModel, CompletionRequest, CompletionStream, HealthCheck, LlmError, ModelProvider,
    ModelState, ModelStatus,
};
use tokio::sync::watch;

use super::LocalModel;

/// Where the loading thread is.
#[derive(Clone)]
pub(super) enum LoadState {
    /// Reading the weights.
    Loading,
    /// Loaded: every completion goes to it.
    Ready(Arc<LocalModel>),
    /// The weights could not be loaded: why.
    Failed(String),
}

/// The built-in model as [`LocalModel::load_in_background`] returns it.
///
/// While the weights load it is [saturated](ChatModel::saturated) (a send
/// answers 503 before anything is stored), a completion fails with
/// [`LlmError::Unavailable`], and its [`HealthCheck`] (`llm`) fails, so
/// `/readyz` answers 503 naming it. Once they are in, it is the model.
pub struct LoadingModel {
    pub(super) name: String,
    pub(super) state: watch::Receiver<LoadState>,
}

impl std::fmt::Debug for LoadingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.borrow() {
            LoadState::Loading => "loading",
            LoadState::Ready(_) => "ready",
            LoadState::Failed(_) => "failed",
        };
        f.debug_struct("LoadingModel")
            .field("name", &self.name)
            .field("state", &state)
            .finish()
    }
}

impl LoadingModel {
    /// The model's name (known from the file's header, before the weights).
    #[must_use]
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The loaded model, once it is.
    #[must_use]
    pub fn ready(&self) -> Option<Arc<LocalModel>> {
        match &*self.state.borrow() {
            LoadState::Ready(model) => Some(Arc::clone(model)),
            LoadState::Loading | LoadState::Failed(_) => None,
        }
    }

    /// Waits for the weights.
    ///
    /// # Errors
    /// Why they could not be loaded (the file is truncated, a tensor is
    /// malformed, the loading thread died).
    pub async fn loaded(&self) -> Result<Arc<LocalModel>, String> {
        let mut state = self.state.clone();
        let outcome = state
            .wait_for(|s| !matches!(s, LoadState::Loading))
            .await
            .map(|s| s.clone());
        match outcome {
            Ok(LoadState::Ready(model)) => Ok(model),
            Ok(LoadState::Failed(why)) => Err(why),
            Ok(LoadState::Loading) | Err(_) => {
                Err("the thread loading the model stopped without a result".to_owned())
            }
        }
    }
}

#[async_trait]
impl ChatModel for LoadingModel {
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> Result<Box<dyn CompletionStream>, LlmError> {
        match self.ready() {
            Some(model) => model.complete(request).await,
            None => Err(LlmError::Unavailable(
                "the local model is still loading".to_owned(),
            )),
        }
    }

    fn saturated(&self) -> bool {
        self.ready().is_none_or(|model| model.saturated())
    }

    fn status(&self) -> ModelStatus {
        let (state, context_length) = match &*self.state.borrow() {
            LoadState::Loading => (ModelState::Loading, None),
            LoadState::Ready(model) => (ModelState::Ready, model.status().context_length),
            LoadState::Failed(_) => (ModelState::Failed, None),
        };
        ModelStatus {
            provider: ModelProvider::Local,
            state,
            context_length,
        }
    }
}

#[async_trait]
impl HealthCheck for LoadingModel {
    fn name(&self) -> &'static str {
        "llm"
    }

    async fn check(&self) -> Result<(), DomainError> {
        match &*self.state.borrow() {
            LoadState::Ready(_) => Ok(()),
            LoadState::Loading => Err(DomainError::Unavailable(
                "the local model is loading".into(),
            )),
            LoadState::Failed(why) => Err(DomainError::Unavailable(
                format!("the local model failed to load: {why}").into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use confab_ports::{PromptRole, PromptTurn};

    use super::*;

    fn request() -> CompletionRequest {
        CompletionRequest {
            model: confab_domain::ModelSlug::parse("m").unwrap(),
            turns: vec![PromptTurn {
                role: PromptRole::User,
                text: "hi".to_owned(),
            }],
            temperature: None,
            max_tokens: 1,
        }
    }

    #[tokio::test]
    async fn while_loading_it_refuses_and_is_not_ready_then_reports_a_failure() {
        let (state, watcher) = watch::channel(LoadState::Loading);
        let model = LoadingModel {
            name: "m".to_owned(),
            state: watcher,
        };
        assert!(model.ready().is_none());
        assert!(model.saturated());
        let refused = model.complete(request()).await.err().unwrap();
        assert!(
            matches!(&refused, LlmError::Unavailable(m) if m.contains("loading")),
            "{refused:?}"
        );
        let unready = model.check().await.unwrap_err();
        assert!(format!("{unready:?}").contains("loading"), "{unready:?}");
        let status = model.status();
        assert_eq!(status.provider, ModelProvider::Local);
        assert_eq!(status.state, ModelState::Loading);
        assert_eq!(status.context_length, None, "unknown before the weights");

        state
            .send(LoadState::Failed("tensor cut short".to_owned()))
            .unwrap();
        assert_eq!(model.loaded().await.err().unwrap(), "tensor cut short");
        let failed = format!("{:?}", model.check().await.unwrap_err());
        assert!(failed.contains("tensor cut short"), "{failed}");
        assert!(model.saturated());
        assert_eq!(model.status().state, ModelState::Failed);
    }

    #[tokio::test]
    async fn a_loading_thread_that_dies_is_a_failure_not_a_wait_forever() {
        let (state, watcher) = watch::channel(LoadState::Loading);
        let model = LoadingModel {
            name: "m".to_owned(),
            state: watcher,
        };
        drop(state);
        assert!(model.loaded().await.is_err());
    }
}
