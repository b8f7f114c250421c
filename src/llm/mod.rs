//! The small interfaces every model backend implements, their error type, and
//! the OpenAI-compatible wire format they share.
//!
//! Nothing here knows about HTTP statuses of *our* API: `error.rs` maps an
//! [`UpstreamError`] to the caller's response.

pub mod azure;
pub mod genai;
pub mod offline;
pub mod openai;
pub mod pool;
pub mod transport;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use transport::{CallContext, UpstreamClient};

/// A chat completion request, as the routes phrase it.
#[derive(Debug, Clone)]
pub struct ChatPrompt {
    /// The system message.
    pub system: String,
    /// The user message.
    pub user: String,
    /// Sampling temperature.
    pub temperature: f64,
}

/// Structured input of a description, for the offline generator (which cannot read prose).
#[derive(Debug, Clone)]
pub struct ProductFacts {
    /// Product name.
    pub name: String,
    /// Product tags.
    pub tags: Vec<String>,
}

/// An image as the upstream returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratedImage {
    /// Base64-encoded PNG bytes (gpt-image models).
    Base64Png(String),
    /// A URL to the image (DALL-E).
    Url(String),
}

impl GeneratedImage {
    /// What the store-admin puts in `<img src>`.
    pub fn into_src(self) -> String {
        match self {
            GeneratedImage::Base64Png(b64) => format!("data:image/png;base64,{b64}"),
            GeneratedImage::Url(url) => url,
        }
    }
}

/// Writes product descriptions.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    /// Returns the assistant's text for the prompt.
    async fn complete(
        &self,
        prompt: &ChatPrompt,
        facts: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<String, UpstreamError>;
}

/// Draws product images.
#[async_trait::async_trait]
pub trait ImageModel: Send + Sync {
    /// Returns one 1024x1024 image for the prompt.
    async fn generate(
        &self,
        prompt: &str,
        facts: &ProductFacts,
        ctx: &CallContext,
    ) -> Result<GeneratedImage, UpstreamError>;
}

/// Why an upstream call failed. Messages are ours, never the upstream's body.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The content filter blocked the prompt or the completion.
    #[error("content filtered")]
    ContentFiltered,
    /// The model rejects the configured `TEMPERATURE` (reasoning models accept only 1).
    #[error("the model rejects the configured temperature")]
    UnsupportedTemperature,
    /// Any other 400: the request was wrong for this model; `message` is the upstream's
    /// one-line `error.message`, trimmed (the contract passes it through for images).
    #[error("upstream rejected the request ({code}): {message}")]
    BadRequest {
        /// `error.code`, or `unknown`.
        code: String,
        /// `error.message`, trimmed to one short line.
        message: String,
    },
    /// 401 or 403 from the model's API.
    #[error("upstream refused the credentials with status {status}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// Whether we sent an Entra token (else a key).
        entra: bool,
    },
    /// 404: the deployment or model does not exist.
    #[error("upstream answered 404 for deployment or model `{name}`")]
    NotFound {
        /// The deployment or model name.
        name: String,
    },
    /// 429 after every retry the budget allowed.
    #[error("upstream is throttling")]
    Throttled {
        /// The upstream's last `retry-after`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Every deployment's circuit is open after repeated failures; none is tried until then.
    #[error("every deployment is failing; their circuits are open")]
    CircuitOpen {
        /// When the first circuit lets a trial request through.
        retry_after: Duration,
    },
    /// 5xx or another unexpected status after retries.
    #[error("upstream answered status {status}")]
    Status {
        /// HTTP status.
        status: u16,
    },
    /// The budget ran out.
    #[error("upstream did not answer in time")]
    Timeout,
    /// Could not connect or the connection broke.
    #[error("could not reach the upstream: {0}")]
    Unreachable(String),
    /// 2xx with a body we cannot use.
    #[error("upstream answered with an unusable body: {0}")]
    InvalidResponse(String),
    /// No token could be obtained; the sentence says which credential and what to check.
    #[error("{0}")]
    Credential(String),
    /// A configured resource is missing (e.g. a local model not listed).
    #[error("{0}")]
    Misconfigured(String),
}

/// A chat message on the OpenAI-compatible wire.
#[derive(Debug, Clone, Serialize)]
pub struct WireMessage<'a> {
    /// `system` or `user`.
    pub role: &'static str,
    /// The text.
    pub content: &'a str,
}

/// The body of `POST .../chat/completions`. `max_tokens` is never sent: reasoning models reject it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionRequest<'a> {
    /// Model id (OpenAI and local servers; Azure takes it from the deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// System then user message.
    pub messages: [WireMessage<'a>; 2],
    /// Sampling temperature.
    pub temperature: f64,
}

impl<'a> ChatCompletionRequest<'a> {
    /// The two-message request for a prompt.
    pub fn new(prompt: &'a ChatPrompt, model: Option<&'a str>) -> Self {
        Self {
            model,
            messages: [
                WireMessage {
                    role: "system",
                    content: &prompt.system,
                },
                WireMessage {
                    role: "user",
                    content: &prompt.user,
                },
            ],
            temperature: prompt.temperature,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatCompletionResponse {
    choices: Vec<ChatChoice>,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<ChatResponseMessage>,
}

#[derive(Debug, Deserialize)]
struct ChatResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// The body of one model call, as a pool sends it to each deployment it tries and as
/// the call's telemetry reads it.
pub trait ModelRequest: Sync {
    /// The `model` the caller put in the body, if any.
    fn model(&self) -> Option<&str>;
    /// The JSON bytes, with `model` in place of the caller's where the target wants one in
    /// the body (Azure's v1 API, OpenAI): serialised straight from the borrowed prompt.
    fn to_json(&self, model: Option<&str>) -> serde_json::Result<Vec<u8>>;
    /// The prompt as `gen_ai.input.messages` (only when message capture is on).
    fn input_messages(&self) -> String;
}

impl ModelRequest for ChatCompletionRequest<'_> {
    fn model(&self) -> Option<&str> {
        self.model
    }

    fn to_json(&self, model: Option<&str>) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ChatCompletionRequest {
            model: model.or(self.model),
            ..self.clone()
        })
    }

    fn input_messages(&self) -> String {
        genai::input_messages(self.messages.iter().map(|m| (m.role, m.content)))
    }
}

/// Extracts the first choice's text; a filtered or empty answer is an error, never an empty description.
pub fn parse_chat_completion(body: &[u8]) -> Result<String, UpstreamError> {
    let response: ChatCompletionResponse = serde_json::from_slice(body)
        .map_err(|err| UpstreamError::InvalidResponse(format!("not a chat completion: {err}")))?;
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| UpstreamError::InvalidResponse("no choices".to_owned()))?;
    if choice.finish_reason.as_deref() == Some("content_filter") {
        return Err(UpstreamError::ContentFiltered);
    }
    let message = choice
        .message
        .ok_or_else(|| UpstreamError::InvalidResponse("the choice has no message".to_owned()))?;
    match message.content.map(|c| c.trim().to_owned()) {
        Some(text) if !text.is_empty() => Ok(text),
        _ if message.refusal.is_some() => Err(UpstreamError::ContentFiltered),
        _ => Err(UpstreamError::InvalidResponse(
            "the message content is empty".to_owned(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct ImagesResponse {
    data: Vec<ImageDatum>,
}

#[derive(Debug, Deserialize)]
struct ImageDatum {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Extracts the first image: `b64_json` (gpt-image) or `url` (DALL-E).
pub fn parse_image_generation(body: &[u8]) -> Result<GeneratedImage, UpstreamError> {
    let response: ImagesResponse = serde_json::from_slice(body)
        .map_err(|err| UpstreamError::InvalidResponse(format!("not an image generation result: {err}")))?;
    let datum = response
        .data
        .into_iter()
        .next()
        .ok_or_else(|| UpstreamError::InvalidResponse("no image in `data`".to_owned()))?;
    match (datum.b64_json, datum.url) {
        (Some(b64), _) if !b64.is_empty() => Ok(GeneratedImage::Base64Png(b64)),
        (_, Some(url)) if !url.is_empty() => Ok(GeneratedImage::Url(url)),
        _ => Err(UpstreamError::InvalidResponse(
            "the image has neither b64_json nor url".to_owned(),
        )),
    }
}

/// The parts of an OpenAI/Azure error body we act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpstreamErrorBody {
    /// `error.code`.
    pub code: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
    /// `error.message`.
    pub message: Option<String>,
    /// `error.innererror.code` / `error.inner_error.code`.
    pub inner_code: Option<String>,
}

/// Reads `{"error": {...}}` leniently: an HTML page or garbage yields an empty [`UpstreamErrorBody`].
pub fn parse_error_body(body: &[u8]) -> UpstreamErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return UpstreamErrorBody::default();
    };
    let error = &value["error"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    UpstreamErrorBody {
        code: text(&error["code"]),
        param: text(&error["param"]),
        message: text(&error["message"]),
        inner_code: text(&error["innererror"]["code"]).or_else(|| text(&error["inner_error"]["code"])),
    }
}

/// Content-filter codes of Azure OpenAI chat and image errors.
const FILTER_CODES: [&str; 5] = [
    "content_filter",
    "contentFilter",
    "moderation_blocked",
    "content_policy_violation",
    "ResponsibleAIPolicyViolation",
];

/// Turns a 400 into the error the caller should see.
pub fn classify_bad_request(body: &[u8]) -> UpstreamError {
    let error = parse_error_body(body);
    let is_filter = [&error.code, &error.inner_code]
        .into_iter()
        .flatten()
        .any(|code| FILTER_CODES.contains(&code.as_str()));
    if is_filter {
        return UpstreamError::ContentFiltered;
    }
    let message = error.message.unwrap_or_default();
    let mentions_temperature =
        error.param.as_deref() == Some("temperature") || message.to_ascii_lowercase().contains("temperature");
    if mentions_temperature {
        return UpstreamError::UnsupportedTemperature;
    }
    UpstreamError::BadRequest {
        code: error.code.unwrap_or_else(|| "unknown".to_owned()),
        message: one_line(&message, 300),
    }
}

/// The first line of `text`, at most `max` characters, for a message shown to a person.
pub fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normal_completion_yields_its_text() {
        let body = br#"{"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":" Hi! "}}],"new_field":1}"#;
        assert_eq!(parse_chat_completion(body).unwrap(), "Hi!");
    }

    #[test]
    fn a_filtered_or_empty_completion_is_an_error() {
        let filtered =
            br#"{"choices":[{"finish_reason":"content_filter","message":{"role":"assistant","content":null}}]}"#;
        assert!(matches!(
            parse_chat_completion(filtered),
            Err(UpstreamError::ContentFiltered)
        ));
        let null = br#"{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":null}}]}"#;
        assert!(matches!(
            parse_chat_completion(null),
            Err(UpstreamError::InvalidResponse(_))
        ));
        assert!(matches!(
            parse_chat_completion(br#"{"choices":[]}"#),
            Err(UpstreamError::InvalidResponse(_))
        ));
        assert!(matches!(
            parse_chat_completion(b"<html>"),
            Err(UpstreamError::InvalidResponse(_))
        ));
    }

    #[test]
    fn bad_requests_are_classified() {
        let filter = br#"{"error":{"code":"content_filter","message":"m","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        assert!(matches!(classify_bad_request(filter), UpstreamError::ContentFiltered));
        let temp = br#"{"error":{"code":"unsupported_value","param":"temperature","message":"Unsupported value: 'temperature' does not support 0.2"}}"#;
        assert!(matches!(
            classify_bad_request(temp),
            UpstreamError::UnsupportedTemperature
        ));
        let other = br#"{"error":{"code":"invalid_size","message":"Bad size\nsecond line"}}"#;
        let UpstreamError::BadRequest { code, message } = classify_bad_request(other) else {
            panic!()
        };
        assert_eq!((code.as_str(), message.as_str()), ("invalid_size", "Bad size"));
    }

    #[test]
    fn one_line_cuts_on_a_character_boundary() {
        assert_eq!(one_line("ééé", 2), "éé…");
        assert_eq!(one_line("ab", 2), "ab");
    }
}
