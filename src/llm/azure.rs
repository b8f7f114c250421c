//! Azure OpenAI: chat completions and image generations on a pool of deployments,
//! authenticated with an `api-key` or a Microsoft Entra bearer token.

use url::Url;

use super::{
    CallContext, ChatCompletionRequest, ChatModel, ChatPrompt, GeneratedImage, ImageModel, ModelRequest, ProductFacts,
    UpstreamError, genai, parse_chat_completion, parse_image_generation,
    pool::{Auth, Pool, Target},
};
use crate::config::{ApiVersion, DeploymentSettings};

/// `{endpoint}/openai/deployments/{deployment}/{operation}?api-version={version}`.
pub fn deployment_url(endpoint: &Url, deployment: &str, operation: &str, api_version: &str) -> Url {
    let mut url = endpoint.clone();
    // Build from path segments so a deployment name cannot inject a path or query.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["openai", "deployments", deployment])
            .extend(operation.split('/'));
    }
    url.query_pairs_mut().clear().append_pair("api-version", api_version);
    url
}

/// `{endpoint}/openai/v1/{operation}`: the v1 API, which takes the deployment in the body.
pub fn v1_url(endpoint: &Url, operation: &str) -> Url {
    let mut url = endpoint.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["openai", "v1"])
            .extend(operation.split('/'));
    }
    url.set_query(None);
    url
}

/// The pool member for one configured deployment and `operation` (`chat/completions`,
/// `images/generations`), authenticated with its own key when it has one, else with `shared`
/// (the one Entra token, or `AZURE_OPENAI_API_KEY`).
pub fn target(deployment: &DeploymentSettings, operation: &str, shared: &Auth) -> Target {
    let (url, model) = match &deployment.api_version {
        ApiVersion::V1 => (
            v1_url(&deployment.endpoint, operation),
            Some(deployment.deployment.clone()),
        ),
        ApiVersion::Dated(version) => (
            deployment_url(&deployment.endpoint, &deployment.deployment, operation, version),
            None,
        ),
    };
    let auth = match &deployment.api_key {
        Some(own) => Auth::ApiKey(own.clone()),
        None => shared.clone(),
    };
    Target {
        name: deployment.deployment.clone(),
        endpoint: deployment.endpoint_label(),
        url,
        model,
        auth,
    }
}

/// The chat pool on Azure OpenAI.
#[derive(Debug)]
pub struct AzureChat(pub Pool);

#[async_trait::async_trait]
impl ChatModel for AzureChat {
    #[tracing::instrument(name = "azure_chat", skip_all)]
    async fn complete(
        &self,
        prompt: &ChatPrompt,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<String, UpstreamError> {
        parse_chat_completion(&self.0.post(&ChatCompletionRequest::new(prompt, None), ctx).await?)
    }
}

/// The body of `POST .../images/generations`.
#[derive(Debug, Clone, serde::Serialize)]
struct ImageGenerationRequest<'a> {
    /// Only on Azure's v1 API, which takes the deployment in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    prompt: &'a str,
    n: u8,
    size: &'static str,
}

impl ModelRequest for ImageGenerationRequest<'_> {
    fn model(&self) -> Option<&str> {
        self.model
    }

    fn to_json(&self, model: Option<&str>) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ImageGenerationRequest {
            model: model.or(self.model),
            ..self.clone()
        })
    }

    fn input_messages(&self) -> String {
        genai::input_messages([("user", self.prompt)])
    }
}

/// The image pool on Azure OpenAI (gpt-image or DALL-E).
#[derive(Debug)]
pub struct AzureImage(pub Pool);

#[async_trait::async_trait]
impl ImageModel for AzureImage {
    #[tracing::instrument(name = "azure_image", skip_all)]
    async fn generate(
        &self,
        prompt: &str,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<GeneratedImage, UpstreamError> {
        let request = ImageGenerationRequest {
            model: None,
            prompt,
            n: 1,
            size: "1024x1024",
        };
        parse_image_generation(&self.0.post(&request, ctx).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_urls_carry_no_deployment_and_no_api_version() {
        for endpoint in ["https://myaoai.openai.azure.com/", "https://myaoai.openai.azure.com"] {
            let endpoint = Url::parse(endpoint).unwrap();
            assert_eq!(
                v1_url(&endpoint, "chat/completions").as_str(),
                "https://myaoai.openai.azure.com/openai/v1/chat/completions"
            );
        }
    }

    #[test]
    fn deployment_urls_are_joined_not_concatenated() {
        let with_slash = Url::parse("https://myaoai.openai.azure.com/").unwrap();
        let without = Url::parse("https://myaoai.openai.azure.com").unwrap();
        for endpoint in [with_slash, without] {
            assert_eq!(
                deployment_url(&endpoint, "gpt-5-mini", "chat/completions", "2024-12-01-preview").as_str(),
                "https://myaoai.openai.azure.com/openai/deployments/gpt-5-mini/chat/completions?api-version=2024-12-01-preview"
            );
        }
        let odd = deployment_url(&Url::parse("https://x/").unwrap(), "a/b?c", "images/generations", "v");
        assert_eq!(
            odd.as_str(),
            "https://x/openai/deployments/a%2Fb%3Fc/images/generations?api-version=v"
        );
    }
}
