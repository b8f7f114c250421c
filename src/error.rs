//! The one error type of the HTTP API and the only place that picks a status for a failure.
//!
//! Every error answers `{"detail": ...}`: a sentence for a person (the
//! store-admin shows it as is), or FastAPI's list form for a body that does not
//! validate. Upstream bodies, keys and tokens never reach the caller: the
//! sentences are ours, and the cause is logged once here.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::llm::UpstreamError;

/// One FastAPI/pydantic validation issue: `{"type","loc","msg","input"[,"ctx"]}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationIssue {
    /// pydantic's error type, e.g. `missing`, `string_type`, `json_invalid`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where: `["body", "name"]`, `["body", "tags", 0]`.
    pub loc: Vec<Value>,
    /// The human-readable message.
    pub msg: String,
    /// The offending input (long strings are shortened).
    pub input: Value,
    /// Extra context, e.g. `{"max_length": 200}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

/// Which route failed, for the contract's "Error generating …" prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /generate/description`.
    Description,
    /// `POST /generate/image`.
    Image,
}

/// Every way a request can fail, documented by the status it answers.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 422: the body does not validate (FastAPI's list form).
    #[error("request body does not validate")]
    Validation(Vec<ValidationIssue>),
    /// 413: the body is larger than `MAX_BODY_BYTES`.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// 400: the body could not be read (the client broke off while sending it).
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// 415: a body that is not JSON.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// 501: no image deployment is configured.
    #[error("image generation is not configured")]
    ImageNotConfigured,
    /// 503 with `Retry-After`: too many generations at once; shed rather than grow.
    #[error("too many requests in flight")]
    Overloaded,
    /// 504: the route's budget ran out.
    #[error("{operation:?} timed out")]
    Timeout {
        /// Which route.
        operation: Operation,
    },
    /// The model or the credential failed; status by cause.
    #[error("{operation:?} failed: {source}")]
    Upstream {
        /// Which route.
        operation: Operation,
        /// Why.
        #[source]
        source: UpstreamError,
    },
    /// 404: no such route.
    #[error("no such route")]
    NotFound,
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl AppError {
    fn status_and_detail(&self) -> (StatusCode, Value, Option<u64>) {
        let sentence = |status: StatusCode, text: String| (status, Value::String(text), None);
        match self {
            AppError::Validation(issues) => (StatusCode::UNPROCESSABLE_ENTITY, json!(issues), None),
            AppError::PayloadTooLarge { limit } => sentence(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body is larger than {limit} bytes."),
            ),
            AppError::BodyUnreadable => sentence(
                StatusCode::BAD_REQUEST,
                "The request body could not be read; send it again.".to_owned(),
            ),
            AppError::UnsupportedMediaType => sentence(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the request body as JSON with Content-Type: application/json.".to_owned(),
            ),
            AppError::ImageNotConfigured => sentence(
                StatusCode::NOT_IMPLEMENTED,
                "Error generating image: image generation is not configured on this service \
                 (set AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME)."
                    .to_owned(),
            ),
            AppError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                Value::String("The service is busy with other generations; try again in a moment.".to_owned()),
                Some(1),
            ),
            AppError::Timeout { operation } => sentence(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{}the model did not answer in time; try again.", prefix(*operation)),
            ),
            AppError::NotFound => sentence(StatusCode::NOT_FOUND, "Not Found".to_owned()),
            AppError::MethodNotAllowed => sentence(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".to_owned()),
            AppError::Upstream { operation, source } => upstream(*operation, source),
        }
    }
}

/// What to do when Azure OpenAI answers 401 or 403 to a Microsoft Entra token: the API's
/// answer and `ai-service check` both say it.
pub const ENTRA_REFUSED_ADVICE: &str = "Give the identity the role 'Cognitive Services OpenAI User' on the \
     Azure OpenAI resource (it can take a few minutes to apply), and check that AZURE_OPENAI_ENDPOINT is the \
     resource's custom subdomain.";

/// What `ai-service check` adds to [`ENTRA_REFUSED_ADVICE`] when it did not wait for a role assignment.
pub const ROLE_PROPAGATION_ADVICE: &str = "A new role assignment takes up to several minutes to reach Azure \
     OpenAI: `ai-service check --wait 600` retries until it does.";

fn prefix(operation: Operation) -> &'static str {
    match operation {
        Operation::Description => "Error generating description: ",
        Operation::Image => "Error generating image: ",
    }
}

fn upstream(operation: Operation, error: &UpstreamError) -> (StatusCode, Value, Option<u64>) {
    let p = prefix(operation);
    let (status, text, retry_after) = match error {
        UpstreamError::ContentFiltered => (
            StatusCode::UNPROCESSABLE_ENTITY,
            match operation {
                Operation::Description => {
                    format!("{p}the content filter blocked this product; try a different name or tags.")
                }
                Operation::Image => {
                    format!("{p}the safety system blocked the image prompt; try a simpler product description.")
                }
            },
            None,
        ),
        UpstreamError::UnsupportedTemperature => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{p}the model does not accept the configured TEMPERATURE; reasoning models such as gpt-5-mini \
                 accept only 1, so unset TEMPERATURE or set TEMPERATURE=1."
            ),
            None,
        ),
        // A 400 without a JSON error message (an HTML page, an empty body) still gets a sentence.
        UpstreamError::BadRequest { message, .. } if message.is_empty() => match operation {
            Operation::Image => (
                StatusCode::BAD_REQUEST,
                format!("{p}the image model rejected the request."),
                None,
            ),
            Operation::Description => (
                StatusCode::BAD_GATEWAY,
                format!("{p}the model rejected the request."),
                None,
            ),
        },
        UpstreamError::BadRequest { message, .. } => match operation {
            Operation::Image => (StatusCode::BAD_REQUEST, format!("{p}{message}"), None),
            Operation::Description => (
                StatusCode::BAD_GATEWAY,
                format!("{p}the model rejected the request: {message}"),
                None,
            ),
        },
        UpstreamError::Unauthorized { status, entra: true } => (
            StatusCode::BAD_GATEWAY,
            format!("{p}Azure OpenAI refused the Microsoft Entra token ({status}). {ENTRA_REFUSED_ADVICE}"),
            None,
        ),
        UpstreamError::Unauthorized { status, entra: false } => (
            StatusCode::BAD_GATEWAY,
            format!("{p}the model API refused the API key ({status}); check the configured key."),
            None,
        ),
        UpstreamError::NotFound { name } => (
            StatusCode::BAD_GATEWAY,
            format!("{p}the deployment or model `{name}` was not found; check the deployment name and endpoint."),
            None,
        ),
        UpstreamError::Throttled { retry_after } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{p}the model is receiving too many requests right now; try again shortly."),
            Some(retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64)),
        ),
        UpstreamError::Status { status } => (
            StatusCode::BAD_GATEWAY,
            format!("{p}the model API answered with status {status}; try again later."),
            None,
        ),
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("{p}the model did not answer in time; try again."),
            None,
        ),
        UpstreamError::Unreachable(cause) => (
            StatusCode::BAD_GATEWAY,
            format!("{p}could not reach the model API ({cause})."),
            None,
        ),
        UpstreamError::InvalidResponse(_) => (
            StatusCode::BAD_GATEWAY,
            format!("{p}the model API returned an answer that could not be used; try again."),
            None,
        ),
        UpstreamError::Credential(sentence) => (StatusCode::SERVICE_UNAVAILABLE, format!("{p}{sentence}"), None),
        UpstreamError::Misconfigured(sentence) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{p}{sentence}"), None),
    };
    (status, Value::String(text), retry_after)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, detail, retry_after) = self.status_and_detail();
        match &self {
            AppError::Upstream { source, .. } if status.is_server_error() => {
                tracing::warn!(status = status.as_u16(), cause = %source, "generation failed");
            }
            AppError::Upstream { source, .. } => {
                tracing::info!(status = status.as_u16(), cause = %source, "generation refused")
            }
            AppError::Timeout { .. } | AppError::Overloaded => {
                tracing::warn!(status = status.as_u16(), "{self}")
            }
            _ => tracing::info!(status = status.as_u16(), "{self}"),
        }
        let mut response = (status, Json(json!({ "detail": detail }))).into_response();
        if matches!(self, AppError::PayloadTooLarge { .. }) {
            // The rest of the body is being discarded (see `extract::read_body`); the
            // connection ends with it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn throttling_answers_503_with_retry_after_rounded_up() {
        let error = AppError::Upstream {
            operation: Operation::Description,
            source: UpstreamError::Throttled {
                retry_after: Some(Duration::from_millis(1500)),
            },
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn unsupported_temperature_names_the_variable() {
        let (status, detail, _) = upstream(Operation::Description, &UpstreamError::UnsupportedTemperature);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = detail.as_str().unwrap();
        assert!(text.starts_with("Error generating description: ") && text.contains("TEMPERATURE"));
    }
}
