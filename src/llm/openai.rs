//! OpenAI-compatible chat completions: the public OpenAI API (key and
//! organisation) and a local server in the cluster (KAITO, vLLM, Ollama),
//! whose model is discovered with `GET {base}/models`.

use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::OnceCell;
use url::Url;

use super::{
    CallContext, ChatCompletionRequest, ChatModel, ChatPrompt, ProductFacts, Transport, UpstreamError,
    classify_bad_request, parse_chat_completion,
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

/// A chat client for any OpenAI-compatible API.
#[derive(Debug)]
pub struct OpenAiCompatible {
    backend: &'static str,
    transport: Transport,
    base: Url,
    api_key: Option<SecretString>,
    organization: Option<String>,
    model: ModelChoice,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    id: String,
}

impl OpenAiCompatible {
    /// The public OpenAI API.
    pub fn openai(
        transport: Transport,
        base: Url,
        api_key: SecretString,
        organization: Option<String>,
        model: &str,
    ) -> Self {
        Self {
            backend: "openai",
            transport,
            base,
            api_key: Some(api_key),
            organization,
            model: ModelChoice::Fixed(model.to_owned()),
        }
    }

    /// A local OpenAI-compatible server; `model` is picked from its `/models` list.
    pub fn local(transport: Transport, base: Url, model: Option<String>) -> Self {
        Self {
            backend: "local",
            transport,
            base,
            api_key: None,
            organization: None,
            model: ModelChoice::Discovered {
                preferred: model,
                resolved: OnceCell::new(),
            },
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path.split('/'));
        }
        url
    }

    fn authorize(&self, mut request: RequestBuilder) -> RequestBuilder {
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        if let Some(org) = &self.organization {
            request = request.header("OpenAI-Organization", org);
        }
        request
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
        let url = self.url("models");
        let response = self
            .transport
            .send(self.backend, ctx, || {
                self.authorize(self.transport.client().get(url.clone()))
            })
            .await?;
        if !response.status.is_success() {
            return Err(UpstreamError::Status {
                status: response.status.as_u16(),
            });
        }
        let list: ModelList = serde_json::from_slice(&response.body)
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
    #[tracing::instrument(name = "openai_chat", skip_all, fields(backend = self.backend))]
    async fn complete(
        &self,
        prompt: &ChatPrompt,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<String, UpstreamError> {
        let model = self.model(ctx).await?;
        let body = ChatCompletionRequest::new(prompt, Some(&model));
        let url = self.url("chat/completions");
        let response = self
            .transport
            .send(self.backend, ctx, || {
                self.authorize(self.transport.client().post(url.clone()).json(&body))
            })
            .await?;
        match response.status.as_u16() {
            200..=299 => parse_chat_completion(&response.body),
            400 => Err(classify_bad_request(&response.body)),
            status @ (401 | 403) => Err(UpstreamError::Unauthorized { status, entra: false }),
            404 => Err(UpstreamError::NotFound { name: model }),
            status => Err(UpstreamError::Status { status }),
        }
    }
}
