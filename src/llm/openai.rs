//! OpenAI-compatible chat completions: the public OpenAI API (key and
//! organisation) and a local server in the cluster (KAITO, vLLM, Ollama),
//! whose model is discovered with `GET {base}/models`.

use serde::Deserialize;
use tokio::sync::OnceCell;
use url::Url;

use super::{
    CallContext, ChatCompletionRequest, ChatModel, ChatPrompt, ProductFacts, UpstreamError, parse_chat_completion,
    pool::{Auth, Pool, Target},
};

/// Which model to ask for.
#[derive(Debug)]
enum ModelChoice {
    /// A fixed model id (the public API).
    Fixed(String),
    /// The configured id, checked against `GET /models`, or the first listed; resolved once.
    Discovered {
        preferred: Option<String>,
        resolved: OnceCell<String>,
    },
}

/// A chat client for any OpenAI-compatible API: a pool of one, so it retries as Azure's do.
#[derive(Debug)]
pub struct OpenAiCompatible {
    pool: Pool,
    model: ModelChoice,
    /// `{base}/models`, where a local server lists its models.
    models_url: Url,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    id: String,
}

/// `{base}/{path}`, joined by segments.
pub fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(path.split('/'));
    }
    url
}

impl OpenAiCompatible {
    /// The pool member for the chat endpoint under `base`.
    pub fn target(base: &Url, model: Option<&str>, auth: Auth) -> Target {
        Target {
            name: model.unwrap_or("local").to_owned(),
            endpoint: crate::config::endpoint_label(base),
            url: join(base, "chat/completions"),
            model: model.map(str::to_owned),
            auth,
        }
    }

    /// The public OpenAI API at `base`, on a pool built with [`OpenAiCompatible::target`].
    pub fn openai(pool: Pool, base: &Url, model: &str) -> Self {
        Self {
            pool,
            model: ModelChoice::Fixed(model.to_owned()),
            models_url: join(base, "models"),
        }
    }

    /// A local OpenAI-compatible server at `base`; `model` is picked from its `/models` list.
    pub fn local(pool: Pool, base: &Url, model: Option<String>) -> Self {
        Self {
            pool,
            model: ModelChoice::Discovered {
                preferred: model,
                resolved: OnceCell::new(),
            },
            models_url: join(base, "models"),
        }
    }

    async fn model(&self, ctx: &CallContext) -> Result<String, UpstreamError> {
        match &self.model {
            ModelChoice::Fixed(model) => Ok(model.clone()),
            ModelChoice::Discovered { preferred, resolved } => resolved
                .get_or_try_init(|| self.discover(preferred.as_deref(), ctx))
                .await
                .cloned(),
        }
    }

    async fn discover(&self, preferred: Option<&str>, ctx: &CallContext) -> Result<String, UpstreamError> {
        let models = &self.models_url;
        let body = self
            .pool
            .send(ctx, |target, client| async move {
                target.auth.apply(client.get(models.clone())).await
            })
            .await?;
        let list: ModelList = serde_json::from_slice(&body)
            .map_err(|err| UpstreamError::InvalidResponse(format!("GET /models did not return a model list: {err}")))?;
        let ids: Vec<String> = list.data.into_iter().map(|m| m.id).collect();
        let chosen = match preferred {
            Some(wanted) if ids.iter().any(|id| id == wanted) => wanted.to_owned(),
            Some(wanted) => {
                return Err(UpstreamError::Misconfigured(format!(
                    "LOCAL_LLM_MODEL `{wanted}` is not served by LOCAL_LLM_ENDPOINT; it lists: {}",
                    if ids.is_empty() {
                        "no models".to_owned()
                    } else {
                        ids.join(", ")
                    }
                )));
            }
            None => ids.into_iter().next().ok_or_else(|| {
                UpstreamError::Misconfigured("LOCAL_LLM_ENDPOINT lists no models at GET /models".to_owned())
            })?,
        };
        tracing::info!(model = %chosen, "selected the local model");
        Ok(chosen)
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiCompatible {
    #[tracing::instrument(name = "openai_chat", skip_all)]
    async fn complete(
        &self,
        prompt: &ChatPrompt,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<String, UpstreamError> {
        let model = self.model(ctx).await?;
        let body = ChatCompletionRequest::new(prompt, Some(&model));
        let answer = self.pool.post(&body, ctx).await.map_err(|err| match err {
            // The pool names its target; a local server's target has no model name of its own.
            UpstreamError::NotFound { .. } => UpstreamError::NotFound { name: model.clone() },
            other => other,
        })?;
        parse_chat_completion(&answer)
    }
}
