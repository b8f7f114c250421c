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

/// Why a generation failed, documented by the status it answers.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// 501: no image deployment is configured.
    #[error("image generation is not configured")]
    ImageNotConfigured,
    /// 503 with `Retry-After`: too many generations at once; shed rather than grow.
    #[error("too many requests in flight")]
    Overloaded,
    /// 504: the route's budget ran out.
    #[error("the budget ran out")]
    Timeout,
    /// The model or the credential failed; status by cause.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl AppError {
    /// A failed generation of `operation` for the request `request_id`.
    pub fn generation(operation: Operation, request_id: Option<&str>, failure: impl Into<Failure>) -> Self {
        AppError::Generation {
            operation,
            request: request_id.map(|id| id.chars().take(8).collect()),
            failure: failure.into(),
        }
    }
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
    /// A generation failed; the status depends on the cause, and the sentence ends with the
    /// request's short id.
    #[error("{operation:?} failed: {failure}")]
    Generation {
        /// Which route.
        operation: Operation,
        /// The first 8 characters of the request's `x-request-id`.
        request: Option<String>,
        /// Why.
        #[source]
        failure: Failure,
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
            AppError::NotFound => sentence(StatusCode::NOT_FOUND, "Not Found".to_owned()),
            AppError::MethodNotAllowed => sentence(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".to_owned()),
            AppError::Generation {
                operation,
                request,
                failure,
            } => {
                let (status, text, retry_after) = generation(*operation, failure);
                (
                    status,
                    Value::String(with_request(text, request.as_deref())),
                    retry_after,
                )
            }
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

/// What happened and what to do when `error` ends a generation of `operation`: the same clause
/// the API answers with, for `ai-service check`.
pub fn upstream_clause(operation: Operation, error: UpstreamError) -> String {
    generation(operation, &Failure::Upstream(error)).1
}

/// `text` as the end of one sentence, with the request's short id: the store-admin shows
/// `Unable to generate description: ` followed by it, and the id finds the request's log lines.
fn with_request(text: String, request: Option<&str>) -> String {
    let text = text.trim_end_matches('.');
    match request {
        Some(id) => format!("{text} (request {id})."),
        None => format!("{text}."),
    }
}

/// A sentence written to stand alone, as a clause: lower-case start, no final period.
fn clause(sentence: &str) -> String {
    let sentence = sentence.trim().trim_end_matches('.');
    let mut chars = sentence.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "try again in about N seconds", rounded up, and the same N for `Retry-After`.
fn try_again_in(wait: std::time::Duration) -> (String, u64) {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let unit = if seconds == 1 { "second" } else { "seconds" };
    (format!("try again in about {seconds} {unit}"), seconds)
}

/// The status, the clause that completes "Unable to generate description: " (or image), and
/// the `Retry-After` seconds, for one failure.
fn generation(operation: Operation, failure: &Failure) -> (StatusCode, String, Option<u64>) {
    let error = match failure {
        Failure::ImageNotConfigured => {
            return (
                StatusCode::NOT_IMPLEMENTED,
                "image generation is not configured on this service (set AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME)"
                    .to_owned(),
                None,
            );
        }
        Failure::Overloaded => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is busy with other generations; try again in a moment".to_owned(),
                Some(1),
            );
        }
        Failure::Timeout => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "the model did not answer in time; try again".to_owned(),
                None,
            );
        }
        Failure::Upstream(error) => error,
    };
    match error {
        UpstreamError::ContentFiltered => (
            StatusCode::UNPROCESSABLE_ENTITY,
            match operation {
                Operation::Description => "the content filter blocked this product; try a different name or tags",
                Operation::Image => "the safety system blocked the image prompt; try a simpler product description",
            }
            .to_owned(),
            None,
        ),
        UpstreamError::UnsupportedTemperature => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model does not accept the configured TEMPERATURE; reasoning models such as gpt-5-mini \
             accept only 1, so unset TEMPERATURE or set TEMPERATURE=1"
                .to_owned(),
            None,
        ),
        // A 400 without a JSON error message (an HTML page, an empty body) still gets a sentence.
        UpstreamError::BadRequest { message, .. } if message.is_empty() => match operation {
            Operation::Image => (
                StatusCode::BAD_REQUEST,
                "the image model rejected the request".to_owned(),
                None,
            ),
            Operation::Description => (
                StatusCode::BAD_GATEWAY,
                "the model rejected the request".to_owned(),
                None,
            ),
        },
        UpstreamError::BadRequest { message, .. } => match operation {
            // The upstream's own words, as the original passes them on (first line only).
            Operation::Image => (StatusCode::BAD_REQUEST, message.clone(), None),
            Operation::Description => (
                StatusCode::BAD_GATEWAY,
                format!("the model rejected the request: {message}"),
                None,
            ),
        },
        UpstreamError::Unauthorized { status, entra: true } => (
            StatusCode::BAD_GATEWAY,
            format!(
                "Azure OpenAI refused the Microsoft Entra token ({status}); {}",
                clause(ENTRA_REFUSED_ADVICE)
            ),
            None,
        ),
        UpstreamError::Unauthorized { status, entra: false } => (
            StatusCode::BAD_GATEWAY,
            format!("the model API refused the API key ({status}); check the configured key"),
            None,
        ),
        UpstreamError::NotFound { name } => (
            StatusCode::BAD_GATEWAY,
            format!("the deployment or model `{name}` was not found; check the deployment name and endpoint"),
            None,
        ),
        UpstreamError::Throttled {
            retry_after: Some(wait),
        } => {
            let (again, seconds) = try_again_in(*wait);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the model is receiving too many requests right now; {again}"),
                Some(seconds),
            )
        }
        UpstreamError::Throttled { retry_after: None } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is receiving too many requests right now; try again shortly".to_owned(),
            Some(1),
        ),
        UpstreamError::CircuitOpen { retry_after } => {
            let (again, seconds) = try_again_in(*retry_after);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("every model deployment is failing and is being given a rest; {again}"),
                Some(seconds),
            )
        }
        UpstreamError::Status { status } => (
            StatusCode::BAD_GATEWAY,
            format!("the model API answered with status {status}; try again later"),
            None,
        ),
        UpstreamError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "the model did not answer in time; try again".to_owned(),
            None,
        ),
        UpstreamError::Unreachable(cause) => (
            StatusCode::BAD_GATEWAY,
            format!("could not reach the model API ({cause}); try again later"),
            None,
        ),
        UpstreamError::InvalidResponse(_) => (
            StatusCode::BAD_GATEWAY,
            "the model API returned an answer that could not be used; try again".to_owned(),
            None,
        ),
        UpstreamError::Credential(sentence) => (StatusCode::SERVICE_UNAVAILABLE, sentence.clone(), None),
        UpstreamError::Misconfigured(sentence) => (StatusCode::INTERNAL_SERVER_ERROR, sentence.clone(), None),
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, detail, retry_after) = self.status_and_detail();
        match &self {
            AppError::Generation { failure, .. } if status.is_server_error() => {
                tracing::warn!(status = status.as_u16(), cause = %failure, "generation failed");
            }
            AppError::Generation { failure, .. } => {
                tracing::info!(status = status.as_u16(), cause = %failure, "generation refused")
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
    fn throttling_answers_503_with_retry_after_and_the_wait_in_the_sentence_rounded_up() {
        let error = AppError::generation(
            Operation::Description,
            Some("6ed9b964-0000-4000-8000-000000000000"),
            UpstreamError::Throttled {
                retry_after: Some(Duration::from_millis(1500)),
            },
        );
        let (status, detail, retry_after) = error.status_and_detail();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after, Some(2));
        assert_eq!(
            detail,
            "the model is receiving too many requests right now; try again in about 2 seconds (request 6ed9b964)."
        );
        assert_eq!(error.into_response().headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn unsupported_temperature_names_the_variable() {
        let (status, text, _) = generation(
            Operation::Description,
            &Failure::Upstream(UpstreamError::UnsupportedTemperature),
        );
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(text.starts_with("the model does not accept") && text.contains("TEMPERATURE"));
    }

    #[test]
    fn a_sentence_becomes_a_clause_of_the_store_admin_s_sentence() {
        assert_eq!(clause("Give the role. "), "give the role");
        assert_eq!(with_request("busy.".to_owned(), None), "busy.");
        assert_eq!(
            try_again_in(Duration::from_millis(200)).0,
            "try again in about 1 second"
        );
    }
}
