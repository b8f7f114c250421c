//! Azure OpenAI: chat completions and image generations on a deployment,
//! authenticated with an `api-key` or a Microsoft Entra bearer token.

use std::sync::Arc;

use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    CallContext, ChatCompletionRequest, ChatModel, ChatPrompt, GeneratedImage, ImageModel, ProductFacts, Transport,
    UpstreamError, classify_bad_request, parse_chat_completion, parse_image_generation,
};
use crate::credential::TokenProvider;

const BACKEND: &str = "azure-openai";

/// How each request to Azure OpenAI is authenticated.
#[derive(Clone)]
pub enum AzureCredential {
    /// `api-key` header.
    ApiKey(SecretString),
    /// `Authorization: Bearer` from the shared token cache.
    Entra(Arc<dyn TokenProvider>),
}

impl std::fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AzureCredential::ApiKey(_) => "ApiKey(..)",
            AzureCredential::Entra(_) => "Entra(..)",
        })
    }
}

/// The auth header to put on one request, resolved before the retries start.
enum AuthHeader {
    ApiKey(SecretString),
    Bearer(SecretString),
}

impl AuthHeader {
    fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match self {
            AuthHeader::ApiKey(key) => request.header("api-key", key.expose_secret()),
            AuthHeader::Bearer(token) => request.bearer_auth(token.expose_secret()),
        }
    }
}

impl AzureCredential {
    async fn header(&self) -> Result<AuthHeader, UpstreamError> {
        match self {
            AzureCredential::ApiKey(key) => Ok(AuthHeader::ApiKey(key.clone())),
            AzureCredential::Entra(provider) => provider
                .token()
                .await
                .map(|token| AuthHeader::Bearer(token.secret))
                .map_err(|err| UpstreamError::Credential(err.message)),
        }
    }

    fn is_entra(&self) -> bool {
        matches!(self, AzureCredential::Entra(_))
    }
}

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

/// One deployment on an Azure OpenAI resource: where to POST and how to authenticate.
#[derive(Debug, Clone)]
struct Deployment {
    transport: Transport,
    url: Url,
    name: String,
    credential: AzureCredential,
}

impl Deployment {
    fn new(
        transport: Transport,
        endpoint: &Url,
        name: &str,
        operation: &str,
        api_version: &str,
        credential: AzureCredential,
    ) -> Self {
        Self {
            transport,
            url: deployment_url(endpoint, name, operation, api_version),
            name: name.to_owned(),
            credential,
        }
    }

    /// POSTs `body` (with retries) and returns a successful answer's body.
    async fn post(&self, body: &impl serde::Serialize, ctx: &CallContext) -> Result<Vec<u8>, UpstreamError> {
        let auth = self.credential.header().await?;
        let response = self
            .transport
            .send(BACKEND, ctx, || {
                auth.apply(self.transport.client().post(self.url.clone()).json(body))
            })
            .await?;
        if response.status.is_success() {
            return Ok(response.body);
        }
        Err(match response.status.as_u16() {
            400 => classify_bad_request(&response.body),
            status @ (401 | 403) => UpstreamError::Unauthorized {
                status,
                entra: self.credential.is_entra(),
            },
            404 => UpstreamError::NotFound {
                name: self.name.clone(),
            },
            status => UpstreamError::Status { status },
        })
    }
}

/// A chat deployment on Azure OpenAI.
#[derive(Debug, Clone)]
pub struct AzureChat(Deployment);

impl AzureChat {
    /// A client for `deployment` at `endpoint`.
    pub fn new(
        transport: Transport,
        endpoint: &Url,
        deployment: &str,
        api_version: &str,
        credential: AzureCredential,
    ) -> Self {
        Self(Deployment::new(
            transport,
            endpoint,
            deployment,
            "chat/completions",
            api_version,
            credential,
        ))
    }
}

#[async_trait::async_trait]
impl ChatModel for AzureChat {
    #[tracing::instrument(name = "azure_chat", skip_all, fields(deployment = %self.0.name))]
    async fn complete(
        &self,
        prompt: &ChatPrompt,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<String, UpstreamError> {
        let body = self.0.post(&ChatCompletionRequest::new(prompt, None), ctx).await?;
        parse_chat_completion(&body)
    }
}

/// The body of `POST .../images/generations`.
#[derive(Debug, serde::Serialize)]
struct ImageGenerationRequest<'a> {
    prompt: &'a str,
    n: u8,
    size: &'static str,
}

/// An image deployment on Azure OpenAI (gpt-image or DALL-E).
#[derive(Debug, Clone)]
pub struct AzureImage(Deployment);

impl AzureImage {
    /// A client for the image `deployment` at `endpoint`.
    pub fn new(
        transport: Transport,
        endpoint: &Url,
        deployment: &str,
        api_version: &str,
        credential: AzureCredential,
    ) -> Self {
        Self(Deployment::new(
            transport,
            endpoint,
            deployment,
            "images/generations",
            api_version,
            credential,
        ))
    }
}

#[async_trait::async_trait]
impl ImageModel for AzureImage {
    #[tracing::instrument(name = "azure_image", skip_all, fields(deployment = %self.0.name))]
    async fn generate(
        &self,
        prompt: &str,
        _: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<GeneratedImage, UpstreamError> {
        let request = ImageGenerationRequest {
            prompt,
            n: 1,
            size: "1024x1024",
        };
        let body = self.0.post(&request, ctx).await?;
        parse_image_generation(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
