//! What one upstream model call tells the operator, in the words of the OpenTelemetry
//! GenAI semantic conventions: a CLIENT span per attempt (`chat <deployment>`,
//! `generate_content <deployment>`) and the `gen_ai_client_*` metrics, from the
//! answer's `id`, `model`, `usage` and finish reasons, plus the quota headroom
//! headers of every answer.
//!
//! With no OpenTelemetry exporter there is no span at all: starting one is a check of
//! an empty static (`telemetry::tracer`).

use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, Status, Tracer as _},
};
use serde::Deserialize;

use super::{
    ModelRequest,
    transport::{Attempt, Headroom},
};
use crate::metrics::{GenAiCall, GenAiSeriesCache, Metrics};

/// The operation and provider of a pool's calls, fixed when the pool is built.
#[derive(Debug, Clone)]
pub struct CallKind {
    /// `chat` or `generate_content`.
    pub operation: &'static str,
    /// `azure.ai.openai`, `openai`, or the local server's name.
    pub provider: String,
    /// Whether prompts and completions go on the span
    /// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`).
    pub capture_content: bool,
}

/// The parts of a successful answer the conventions name; everything else is skipped
/// unread (an image answer's megabytes of base64, and the text, included).
#[derive(Debug, Default, Deserialize)]
struct AnswerSummary {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<ChoiceSummary>,
}

/// Chat answers say `prompt_tokens` / `completion_tokens`, image answers
/// `input_tokens` / `output_tokens`.
#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct ChoiceSummary {
    #[serde(default)]
    finish_reason: Option<String>,
}

/// The answer's text, read only when messages are captured.
#[derive(Debug, Default, Deserialize)]
struct AnswerText {
    #[serde(default)]
    choices: Vec<ChoiceText>,
}

#[derive(Debug, Default, Deserialize)]
struct ChoiceText {
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<MessageText>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageText {
    #[serde(default)]
    content: Option<String>,
}

/// One attempt of a model call, as its telemetry sees it: what was asked, and the CLIENT
/// span, started with the OpenTelemetry API directly when spans are exported (else none;
/// why not a `tracing` span: `telemetry::TRACER`).
pub struct ModelCall<'a> {
    kind: &'a CallKind,
    request_model: &'a str,
    input: &'a dyn ModelRequest,
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl<'a> ModelCall<'a> {
    /// Starts the span `{operation} {request_model}` for an attempt on `url`, a child of `parent`.
    pub fn start(
        kind: &'a CallKind,
        request_model: &'a str,
        input: &'a dyn ModelRequest,
        url: &url::Url,
        parent: &opentelemetry::Context,
    ) -> Self {
        let span = crate::telemetry::tracer().map(|tracer| {
            let mut attributes = Vec::with_capacity(16);
            attributes.extend([
                KeyValue::new("gen_ai.operation.name", kind.operation),
                KeyValue::new("gen_ai.provider.name", kind.provider.clone()),
                KeyValue::new("gen_ai.request.model", request_model.to_owned()),
                KeyValue::new("server.address", url.host_str().unwrap_or_default().to_owned()),
                KeyValue::new(
                    "server.port",
                    i64::from(url.port_or_known_default().unwrap_or_default()),
                ),
            ]);
            tracer
                .span_builder(format!("{} {request_model}", kind.operation))
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .start_with_context(tracer, parent)
        });
        Self {
            kind,
            request_model,
            input,
            span,
        }
    }

    /// The W3C `traceparent` naming this attempt's span as the parent of the upstream's work.
    pub fn traceparent(&self) -> Option<String> {
        let ids = self.span.as_ref()?.span_context();
        ids.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                ids.trace_id(),
                ids.span_id(),
                ids.trace_flags().to_u8()
            )
        })
    }
}

impl std::fmt::Debug for ModelCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCall")
            .field("request_model", &self.request_model)
            .field("traced", &self.span.is_some())
            .finish_non_exhaustive()
    }
}

/// How one attempt ended, as far as telemetry cares.
#[derive(Debug)]
pub enum Ended<'a> {
    /// The request went out: answered (the body is parsed only on success), or not.
    Sent(&'a Attempt),
    /// It never went out, and why: `timeout`, `credential`, `request_error`.
    Failed(&'static str),
}

impl ModelCall<'_> {
    /// Records the attempt's end: the duration and token histograms and the deployment's
    /// quota headroom (through the deployment's `series`), and the span's last attributes.
    pub fn finish(self, metrics: &Metrics, series: &GenAiSeriesCache, seconds: f64, ended: Ended<'_>) {
        let Self {
            kind,
            request_model,
            input,
            span,
        } = self;
        let mut status_code = None;
        let mut answer: &[u8] = &[];
        let (error_type, summary) = match ended {
            Ended::Sent(
                answered @ Attempt::Answered {
                    status, body, headroom, ..
                },
            ) => {
                if *headroom != Headroom::default() {
                    metrics.ratelimit_remaining(series, request_model, *headroom);
                }
                status_code = Some(i64::from(status.as_u16()));
                if status.is_success() {
                    answer = body;
                    // Unreadable here means unreadable for the caller too: that error is theirs to report.
                    (None, serde_json::from_slice::<AnswerSummary>(body).unwrap_or_default())
                } else {
                    (Some(answered.label()), AnswerSummary::default())
                }
            }
            Ended::Sent(other) => (Some(other.label()), AnswerSummary::default()),
            Ended::Failed(label) => (Some(label), AnswerSummary::default()),
        };
        let response_model = summary.model.as_deref().unwrap_or_default();
        let tokens = summary
            .usage
            .as_ref()
            .and_then(|u| Some((u.prompt_tokens?, u.completion_tokens?)));
        metrics.gen_ai_call(
            series,
            &GenAiCall {
                operation: kind.operation,
                provider: &kind.provider,
                request_model,
                response_model,
                error_type,
            },
            seconds,
            tokens,
        );
        let Some(mut span) = span else {
            return;
        };
        let mut attributes = Vec::with_capacity(8);
        if let Some(code) = status_code {
            attributes.push(KeyValue::new("http.response.status_code", code));
        }
        match error_type {
            Some(error) => {
                attributes.push(KeyValue::new("error.type", error.to_owned()));
                span.set_status(Status::error(error.to_owned()));
            }
            None => span.set_status(Status::Ok),
        }
        if let Some(model) = &summary.model {
            attributes.push(KeyValue::new("gen_ai.response.model", model.clone()));
        }
        if let Some(id) = &summary.id {
            attributes.push(KeyValue::new("gen_ai.response.id", id.clone()));
        }
        if let Some((input, output)) = tokens {
            let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            attributes.push(KeyValue::new("gen_ai.usage.input_tokens", signed(input)));
            attributes.push(KeyValue::new("gen_ai.usage.output_tokens", signed(output)));
        }
        let reasons: Vec<opentelemetry::StringValue> = summary
            .choices
            .iter()
            .filter_map(|c| c.finish_reason.clone())
            .map(Into::into)
            .collect();
        if !reasons.is_empty() {
            attributes.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(reasons.into()),
            ));
        }
        if kind.capture_content {
            attributes.push(KeyValue::new("gen_ai.input.messages", input.input_messages()));
            if let Some(output) = output_messages(answer) {
                attributes.push(KeyValue::new("gen_ai.output.messages", output));
            }
        }
        span.set_attributes(attributes);
        span.end();
    }
}

/// `(role, text)` messages in the conventions' JSON shape:
/// `[{"role": ..., "parts": [{"type": "text", "content": ...}]}]`.
pub fn input_messages<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let messages: Vec<serde_json::Value> = messages
        .into_iter()
        .map(|(role, content)| serde_json::json!({ "role": role, "parts": [{ "type": "text", "content": content }] }))
        .collect();
    serde_json::Value::Array(messages).to_string()
}

/// The text of the answer `body` in the same shape (chat only: an image is no text, and
/// its base64 would be megabytes on a span).
fn output_messages(body: &[u8]) -> Option<String> {
    let answer: AnswerText = serde_json::from_slice(body).ok()?;
    let messages: Vec<serde_json::Value> = answer
        .choices
        .iter()
        .filter_map(|choice| {
            let content = choice.message.as_ref()?.content.as_ref()?;
            Some(serde_json::json!({
                "role": "assistant",
                "parts": [{ "type": "text", "content": content }],
                "finish_reason": choice.finish_reason,
            }))
        })
        .collect();
    (!messages.is_empty()).then(|| serde_json::Value::Array(messages).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_image_usage_are_both_read() {
        let chat: AnswerSummary = serde_json::from_slice(
            br#"{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46},"choices":[{"finish_reason":"stop","message":{"content":"Hi"}}]}"#,
        )
        .unwrap();
        let usage = chat.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (Some(12), Some(34)));
        let image: AnswerSummary = serde_json::from_slice(
            br#"{"created":1,"data":[{"b64_json":"AAAA"}],"usage":{"input_tokens":50,"output_tokens":4160,"total_tokens":4210}}"#,
        )
        .unwrap();
        let usage = image.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (Some(50), Some(4160)));
    }

    #[test]
    fn messages_take_the_conventions_shape() {
        let prompt = crate::llm::ChatPrompt {
            system: "Be brief.".to_owned(),
            user: "Describe a leash.".to_owned(),
            temperature: 0.2,
        };
        let body = crate::llm::ChatCompletionRequest::new(&prompt, None);
        let input: serde_json::Value = serde_json::from_str(&body.input_messages()).unwrap();
        assert_eq!(
            input,
            serde_json::json!([
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Describe a leash."}]}
            ])
        );
        let image: serde_json::Value = serde_json::from_str(&input_messages([("user", "A leash")])).unwrap();
        assert_eq!(image[0]["role"], "user");
        assert_eq!(image[0]["parts"][0]["content"], "A leash");
        let answer = br#"{"choices":[{"finish_reason":"stop","message":{"content":"A red leash."}}]}"#;
        let output: serde_json::Value = serde_json::from_str(&output_messages(answer).unwrap()).unwrap();
        assert_eq!(output[0]["parts"][0]["content"], "A red leash.");
        assert_eq!(output[0]["finish_reason"], "stop");
    }
}
