//! What one upstream model call tells the operator, in the words of the OpenTelemetry
//! GenAI semantic conventions: a CLIENT span per attempt (`chat <deployment>`,
//! `generate_content <deployment>`) and the `gen_ai_client_*` metrics, from the
//! answer's `id`, `model`, `usage` and finish reasons, plus the quota headroom
//! headers of every answer.
//!
//! The span is at DEBUG level on purpose: the log output (INFO by default) never
//! formats it, so with no OpenTelemetry exporter it is disabled at its callsite and
//! costs nothing; the exporter's layer enables it (`telemetry`).

use serde::Deserialize;
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::transport::Attempt;
use crate::metrics::{GenAiCall, Metrics};

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
/// unread (an image answer's megabytes of base64 included).
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
    #[serde(default)]
    message: Option<MessageSummary>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageSummary {
    #[serde(default)]
    content: Option<String>,
}

/// The span of one attempt on `deployment` at `url`.
pub fn attempt_span(kind: &CallKind, request_model: &str, url: &url::Url) -> Span {
    tracing::debug_span!(
        "upstream call",
        otel.name = %format_args!("{} {request_model}", kind.operation),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = kind.operation,
        gen_ai.provider.name = %kind.provider,
        gen_ai.request.model = request_model,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        server.address = url.host_str().unwrap_or_default(),
        // i64, not u16/u64: tracing-opentelemetry records unsigned integers as strings.
        server.port = i64::from(url.port_or_known_default().unwrap_or_default()),
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// How one attempt ended, as far as telemetry cares.
#[derive(Debug)]
pub enum Ended<'a> {
    /// The request went out: answered (the body is parsed only on success), or not.
    Sent(&'a Attempt),
    /// It never went out, and why: `timeout`, `credential`, `request_error`.
    Failed(&'static str),
}

/// Records one attempt's end: its span's attributes, the duration and token histograms,
/// and the deployment's quota headroom.
pub fn record(
    metrics: &Metrics,
    span: &Span,
    kind: &CallKind,
    request_model: &str,
    input: Option<&serde_json::Value>,
    seconds: f64,
    ended: Ended<'_>,
) {
    let (error_type, summary) = match ended {
        Ended::Sent(
            answered @ Attempt::Answered {
                status, body, headroom, ..
            },
        ) => {
            for (kind, value) in [("requests", headroom.requests), ("tokens", headroom.tokens)] {
                if let Some(remaining) = value {
                    metrics.ratelimit_remaining(request_model, kind, remaining);
                }
            }
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_success() {
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
    if span.is_disabled() {
        return;
    }
    match error_type {
        Some(error) => {
            span.record("error.type", error);
            span.record("otel.status_code", "ERROR");
        }
        None => {
            span.record("otel.status_code", "OK");
        }
    }
    if let Some(model) = &summary.model {
        span.record("gen_ai.response.model", model.as_str());
    }
    if let Some(id) = &summary.id {
        span.record("gen_ai.response.id", id.as_str());
    }
    if let Some((input, output)) = tokens {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        span.record("gen_ai.usage.input_tokens", signed(input));
        span.record("gen_ai.usage.output_tokens", signed(output));
    }
    let reasons: Vec<opentelemetry::StringValue> = summary
        .choices
        .iter()
        .filter_map(|c| c.finish_reason.clone())
        .map(Into::into)
        .collect();
    if !reasons.is_empty() {
        span.set_attribute(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(reasons.into()),
        );
    }
    if kind.capture_content {
        if let Some(input) = input {
            span.set_attribute("gen_ai.input.messages", input_messages(input));
        }
        if let Some(output) = output_messages(&summary) {
            span.set_attribute("gen_ai.output.messages", output);
        }
    }
}

/// The request's messages (chat) or prompt (images) in the conventions' JSON shape:
/// `[{"role": ..., "parts": [{"type": "text", "content": ...}]}]`.
fn input_messages(body: &serde_json::Value) -> String {
    let text_part = |content: &serde_json::Value| serde_json::json!([{ "type": "text", "content": content }]);
    let messages: Vec<serde_json::Value> = match (body.get("messages"), body.get("prompt")) {
        (Some(serde_json::Value::Array(messages)), _) => messages
            .iter()
            .map(|m| serde_json::json!({ "role": m["role"], "parts": text_part(&m["content"]) }))
            .collect(),
        (_, Some(prompt)) => vec![serde_json::json!({ "role": "user", "parts": text_part(prompt) })],
        _ => Vec::new(),
    };
    serde_json::Value::Array(messages).to_string()
}

/// The answer's text in the same shape (chat only: an image is no text, and its
/// base64 would be megabytes on a span).
fn output_messages(summary: &AnswerSummary) -> Option<String> {
    let messages: Vec<serde_json::Value> = summary
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
        let body = serde_json::json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe a leash."}], "temperature": 0.2});
        let input: serde_json::Value = serde_json::from_str(&input_messages(&body)).unwrap();
        assert_eq!(
            input,
            serde_json::json!([
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Describe a leash."}]}
            ])
        );
        let image: serde_json::Value =
            serde_json::from_str(&input_messages(&serde_json::json!({"prompt": "A leash", "n": 1}))).unwrap();
        assert_eq!(image[0]["role"], "user");
        assert_eq!(image[0]["parts"][0]["content"], "A leash");
        let summary: AnswerSummary =
            serde_json::from_slice(br#"{"choices":[{"finish_reason":"stop","message":{"content":"A red leash."}}]}"#)
                .unwrap();
        let output: serde_json::Value = serde_json::from_str(&output_messages(&summary).unwrap()).unwrap();
        assert_eq!(output[0]["parts"][0]["content"], "A red leash.");
        assert_eq!(output[0]["finish_reason"], "stop");
    }
}
