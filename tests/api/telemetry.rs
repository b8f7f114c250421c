//! GenAI observability: token usage, call duration and quota headroom on `/metrics`, and
//! OpenTelemetry traces from the real binary to a local OTLP/HTTP collector.

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value as AnyKind},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use serde_json::{Value, json};

use crate::helpers::*;

/// The caller's trace: W3C's own example.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// A chat answer reporting `usage` and the model that answered.
fn answer(content: &str, input: u64, output: u64) -> Value {
    let mut answer = chat_completion(content);
    answer["model"] = json!("gpt-4o-mini-2024-07-18");
    answer["id"] = json!("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    answer["usage"] = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    answer
}

fn headroom(response: MockResponse, requests: &str, tokens: &str) -> MockResponse {
    response
        .header("x-ratelimit-remaining-requests", requests)
        .header("x-ratelimit-remaining-tokens", tokens)
}

const CHAT: &str =
    r#"gen_ai_operation_name="chat",gen_ai_provider_name="azure.ai.openai",gen_ai_request_model="gpt-5-mini""#;

#[tokio::test]
async fn token_usage_sums_exactly_what_the_upstream_reported_and_headroom_is_the_latest_answer() {
    // Arrange: three answers with different usage; a 429 (no usage) before the third.
    let usage = [(57, 123), (61, 98), (40, 211)];
    let azure = MockServer::start(move |_, index| match index {
        0 => headroom(MockResponse::json(200, answer("One.", 57, 123)), "119", "119800"),
        1 => headroom(MockResponse::json(200, answer("Two.", 61, 98)), "118", "119500"),
        2 => headroom(
            MockResponse::json(429, json!({"error": {"code": "429", "message": "Rate limit"}})),
            "0",
            "0",
        )
        .header("retry-after-ms", "10"),
        _ => headroom(MockResponse::json(200, answer("Three.", 40, 211)), "117", "119100"),
    })
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    for _ in 0..3 {
        let response = app.post_description(&json!({"name": "Ball", "tags": ["dog"]})).await;
        assert_eq!(response.status(), 200);
    }
    let text = app.get("/metrics").await.text().await.unwrap();

    // Assert: the sums are the mock's figures, to the token; one observation per answer.
    let ok = format!(r#"{CHAT},gen_ai_response_model="gpt-4o-mini-2024-07-18""#);
    let input: u64 = usage.iter().map(|u| u.0).sum();
    let output: u64 = usage.iter().map(|u| u.1).sum();
    let series =
        |kind: &str, part: &str| format!(r#"gen_ai_client_token_usage_{part}{{{ok},gen_ai_token_type="{kind}"}}"#);
    assert_eq!(sample(&text, &series("input", "sum")), input as f64);
    assert_eq!(sample(&text, &series("output", "sum")), output as f64);
    assert_eq!(sample(&text, &series("input", "count")), 3.0);
    assert_eq!(sample(&text, &series("output", "count")), 3.0);
    // 57, 61 and 40 input tokens all fall in the bucket up to 64.
    assert_eq!(
        sample(&text, &series("input", "bucket").replace("{", r#"{le="64.0","#)),
        3.0
    );
    // Durations: three successful calls, and the 429 under its error type.
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_client_operation_duration_seconds_count{{{ok}}}")
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"gen_ai_client_operation_duration_seconds_count{{{CHAT},gen_ai_response_model="",error_type="429"}}"#
            )
        ),
        1.0
    );
    // Headroom: the last answer's headers (the 429's zeros were replaced by the retry's answer).
    assert_eq!(
        sample(
            &text,
            r#"ai_service_upstream_ratelimit_remaining{deployment="gpt-5-mini",kind="requests"}"#
        ),
        117.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_upstream_ratelimit_remaining{deployment="gpt-5-mini",kind="tokens"}"#
        ),
        119100.0
    );
    assert_eq!(azure.count(), 4);
    // No exporter in this process: the upstream gets no traceparent.
    assert!(azure.requests().iter().all(|r| r.header("traceparent").is_none()));
}

#[tokio::test]
async fn image_token_usage_is_counted_under_generate_content() {
    let azure = MockServer::start(|_, _| {
        headroom(
            MockResponse::json(
                200,
                json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}], "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}}),
            ),
            "9",
            "95000",
        )
    })
    .await;
    let mut env = azure_key_vars(&azure);
    env.extend(vars(&[("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME", "gpt-image-1")]));
    let app = spawn_app(env).await;

    let response = app
        .post_image(&json!({"name": "Ball", "description": "A red ball."}))
        .await;
    assert_eq!(response.status(), 200);
    let text = app.get("/metrics").await.text().await.unwrap();

    // The image API names no model in its answer: the response model stays empty.
    let labels = r#"gen_ai_operation_name="generate_content",gen_ai_provider_name="azure.ai.openai",gen_ai_request_model="gpt-image-1",gen_ai_response_model="""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type="input"}}"#)
        ),
        50.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type="output"}}"#)
        ),
        4160.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_upstream_ratelimit_remaining{deployment="gpt-image-1",kind="tokens"}"#
        ),
        95000.0
    );
}

// ---------------------------------------------------------------------------------------------
// Traces: the real binary exporting to a local OTLP/HTTP collector
// ---------------------------------------------------------------------------------------------

/// A local OTLP/HTTP collector: `answer` says how it answers each export.
async fn collector(answer: MockResponse) -> MockServer {
    MockServer::start_http(move |_, _| answer.clone()).await
}

fn accepting() -> MockResponse {
    MockResponse::raw(200, "application/x-protobuf", &[])
}

/// Every span the collector received, with its service name.
fn received(collector: &MockServer) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for request in collector.requests() {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.header("content-type"), Some("application/x-protobuf"));
        let export = ExportTraceServiceRequest::decode(request.body.as_ref()).expect("an OTLP protobuf export");
        for resource in export.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = text(&attributes, "service.name").unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
    }
    spans
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyKind> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        AnyKind::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        AnyKind::IntValue(i) => Some(*i),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary against `azure` (key auth), exporting to `endpoint`, plus `extra`.
async fn traced_binary(
    azure: &MockServer,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> (Running, String, tempfile::TempDir) {
    traced_binary_with(azure_key_vars(azure), endpoint, extra).await
}

/// The binary configured by `env`, exporting to `endpoint`, plus `extra`.
async fn traced_binary_with(
    env: Vec<(String, String)>,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> (Running, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = Binary::new(dir.path())
        .trusting_test_ca()
        .vars(&env)
        .vars(&[
            ("PORT", port.to_string().as_str()),
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            // Export at once rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ])
        .vars(extra)
        .spawn();
    service.wait_for_health(port).await;
    (service, format!("http://127.0.0.1:{port}"), dir)
}

async fn describe(base: &str, traceparent: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/generate/description"))
        .json(&json!({"name": "Seafarer's Tug Rope", "tags": ["toy", "dog"]}));
    if let Some(parent) = traceparent {
        request = request.header("traceparent", parent);
    }
    status_and_json(request.send().await.unwrap()).await
}

/// The tree under the caller's span, one line per span: `name [kind]`, indented by depth.
fn tree(spans: &[&Span]) -> String {
    fn walk(spans: &[&Span], parent: &str, depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| hex(&s.parent_span_id) == parent) {
            out.push_str(&format!(
                "{}{} [{:?}]\n",
                "  ".repeat(depth),
                span.name,
                SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
            ));
            walk(spans, &hex(&span.span_id), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(spans, CALLER_SPAN_ID, 0, &mut out);
    out
}

#[tokio::test]
async fn a_description_continues_the_callers_trace_through_a_client_span_to_azure_openai() {
    // Arrange
    let collector = collector(accepting()).await;
    let azure = MockServer::start(|_, _| MockResponse::json(200, answer("A sturdy rope.", 57, 123))).await;
    let (service, base, _dir) = traced_binary(&azure, &collector.url, &[]).await;

    // Act: the store's request, as part of the caller's trace.
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let (status, body) = describe(&base, Some(&traceparent)).await;
    assert_eq!(status, 200, "{body}");
    wait_until(PATIENCE, "the collector to receive the request's spans", || {
        received(&collector)
            .iter()
            .any(|(_, s)| s.name == "POST /generate/description")
    })
    .await;

    // Assert: every span of the request is in the caller's trace, from service ai-service.
    let all = received(&collector);
    let spans: Vec<&Span> = all
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == TRACE_ID)
        .map(|(_, s)| s)
        .collect();
    assert!(all.iter().all(|(service, _)| service == "ai-service"), "{all:#?}");
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), *s)).collect();
    let server = by_name
        .get("POST /generate/description")
        .unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN_ID);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(text(&server.attributes, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        text(&server.attributes, "http.route").as_deref(),
        Some("/generate/description")
    );
    assert_eq!(int(&server.attributes, "http.response.status_code"), Some(200));

    let client = by_name
        .get("chat gpt-5-mini")
        .unwrap_or_else(|| panic!("no client span in {spans:#?}"));
    assert_eq!(client.kind, SpanKind::Client as i32);
    // The client span is the server span's child: the spans in between (the chat model's
    // own) are for the logs, not exported.
    assert_eq!(client.parent_span_id, server.span_id, "{}", tree(&spans));
    assert_eq!(spans.len(), 2, "{}", tree(&spans));
    let a = &client.attributes;
    assert_eq!(text(a, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(text(a, "gen_ai.provider.name").as_deref(), Some("azure.ai.openai"));
    assert_eq!(text(a, "gen_ai.request.model").as_deref(), Some("gpt-5-mini"));
    assert_eq!(
        text(a, "gen_ai.response.model").as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(
        text(a, "gen_ai.response.id").as_deref(),
        Some("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT")
    );
    match attribute(a, "gen_ai.response.finish_reasons") {
        Some(AnyKind::ArrayValue(array)) => assert_eq!(
            array.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
            vec![Some(AnyKind::StringValue("stop".to_owned()))]
        ),
        other => panic!("finish reasons: {other:?}"),
    }
    assert_eq!(int(a, "gen_ai.usage.input_tokens"), Some(57));
    assert_eq!(int(a, "gen_ai.usage.output_tokens"), Some(123));
    let endpoint = url::Url::parse(&azure.url).unwrap();
    assert_eq!(text(a, "server.address").as_deref(), endpoint.host_str());
    assert_eq!(int(a, "server.port"), Some(i64::from(azure.address.port())));
    assert_eq!(int(a, "http.response.status_code"), Some(200));
    assert_eq!(text(a, "error.type"), None);
    // Prompts and completions stay off the span unless asked for.
    assert_eq!(text(a, "gen_ai.input.messages"), None);
    assert_eq!(text(a, "gen_ai.output.messages"), None);

    // The call to Azure OpenAI carries the trace, with the client span as its parent.
    let upstream = &azure.requests()[0];
    assert_eq!(
        upstream.header("traceparent"),
        Some(format!("00-{TRACE_ID}-{}-01", hex(&client.span_id)).as_str())
    );
    // The request's JSON log lines carry the trace and the server span's ids.
    let logged = service
        .stdout
        .get()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["span"]["trace_id"] == TRACE_ID)
        .collect::<Vec<_>>();
    assert!(!logged.is_empty(), "{}", service.logs());
    assert!(
        logged
            .iter()
            .all(|line| line["span"]["span_id"] == hex(&server.span_id).as_str()),
        "{logged:#?}"
    );
    // The tree as the collector received it (shown with --nocapture).
    println!("{}", tree(&spans));
}

#[tokio::test]
async fn a_failed_generation_marks_both_spans_and_its_warning_is_an_event_of_the_server_span() {
    // Arrange: a deployment that fails every time, and no retries.
    let collector = collector(accepting()).await;
    let azure = MockServer::start(|_, _| {
        MockResponse::json(
            500,
            json!({"error": {"code": "InternalServerError", "message": "boom"}}),
        )
    })
    .await;
    let (_service, base, _dir) = traced_binary(&azure, &collector.url, &[("UPSTREAM_MAX_RETRIES", "0")]).await;

    // Act
    let (status, body) = describe(&base, None).await;
    assert_eq!(status, 502, "{body}");
    wait_until(PATIENCE, "the request's spans", || {
        received(&collector)
            .iter()
            .any(|(_, s)| s.name == "POST /generate/description")
    })
    .await;

    // Assert: the client span says why, the server span failed with the log's warning on it.
    let all = received(&collector);
    let span = |name: &str| {
        all.iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {all:#?}"))
    };
    let (server, client) = (span("POST /generate/description"), span("chat gpt-5-mini"));
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(int(&client.attributes, "http.response.status_code"), Some(500));
    assert_eq!(text(&client.attributes, "error.type").as_deref(), Some("500"));
    assert_eq!(client.status.as_ref().map(|s| s.code), Some(2), "{client:#?}");
    assert_eq!(int(&server.attributes, "http.response.status_code"), Some(502));
    assert_eq!(server.status.as_ref().map(|s| s.code), Some(2), "{server:#?}");
    let warning = server
        .events
        .iter()
        .find(|e| e.name == "generation failed")
        .unwrap_or_else(|| panic!("no warning event in {server:#?}"));
    assert_eq!(text(&warning.attributes, "level").as_deref(), Some("WARN"));
    assert_eq!(int(&warning.attributes, "status"), Some(502));
}

#[tokio::test]
async fn prompts_and_completions_are_recorded_only_when_asked_for() {
    let collector = collector(accepting()).await;
    let azure = MockServer::start(|_, _| MockResponse::json(200, answer("A sturdy rope.", 57, 123))).await;
    let (_service, base, _dir) = traced_binary(
        &azure,
        &collector.url,
        &[("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")],
    )
    .await;

    let (status, _) = describe(&base, None).await;
    assert_eq!(status, 200);
    wait_until(PATIENCE, "the client span", || {
        received(&collector).iter().any(|(_, s)| s.name == "chat gpt-5-mini")
    })
    .await;

    let all = received(&collector);
    let client = &all.iter().find(|(_, s)| s.name == "chat gpt-5-mini").unwrap().1;
    let input: Value = serde_json::from_str(&text(&client.attributes, "gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(input[0]["role"], "system");
    assert_eq!(input[1]["role"], "user");
    assert!(
        input[1]["parts"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Seafarer's Tug Rope"),
        "{input}"
    );
    let output: Value = serde_json::from_str(&text(&client.attributes, "gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(
        output,
        json!([{"role": "assistant", "parts": [{"type": "text", "content": "A sturdy rope."}], "finish_reason": "stop"}])
    );
    // Without a caller's traceparent the request starts its own trace, and the upstream continues it.
    let server = &all
        .iter()
        .find(|(_, s)| s.name == "POST /generate/description")
        .unwrap()
        .1;
    assert!(server.parent_span_id.is_empty());
    let upstream = azure.requests()[0].header("traceparent").unwrap().to_owned();
    assert!(
        upstream.starts_with(&format!("00-{}-", hex(&server.trace_id))),
        "{upstream}"
    );
}

#[tokio::test]
async fn a_token_fetched_from_entra_is_a_span_naming_the_credential_and_a_cached_one_is_not() {
    // Arrange: workload identity against the mock Entra.
    let (tenant, client) = (
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b",
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl").unwrap();
    let mock = MockEntra::new(tenant, client, &token_file);
    let entra = mock.start().await;
    let azure = MockServer::start(azure_openai_accepting(mock.ledger.clone(), "Described.")).await;
    let collector = collector(accepting()).await;
    let mut env = azure_entra_vars(&azure, &[]);
    env.extend(workload_identity_vars(&entra.url, tenant, client, &token_file));
    let (_service, base, _dir) = traced_binary_with(env, &collector.url, &[]).await;

    // Act: two descriptions; the token of the first (or of startup) serves the second.
    for _ in 0..2 {
        let (status, body) = describe(&base, None).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_until(PATIENCE, "both client spans", || {
        received(&collector)
            .iter()
            .filter(|(_, s)| s.name == "chat gpt-5-mini")
            .count()
            == 2
    })
    .await;

    // Assert: one fetch, one span, naming the credential.
    assert_eq!(entra.count(), 1);
    let all = received(&collector);
    let fetches: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name.starts_with("acquire_token"))
        .collect();
    assert_eq!(fetches.len(), 1, "{all:#?}");
    assert_eq!(fetches[0].name, "acquire_token WorkloadIdentityCredential");
    assert_eq!(
        text(&fetches[0].attributes, "azure.credential").as_deref(),
        Some("WorkloadIdentityCredential")
    );
    assert_eq!(text(&fetches[0].attributes, "error.type"), None);
}

#[tokio::test]
async fn the_spans_still_queued_at_sigterm_are_sent_before_the_exit() {
    // Arrange: a batch delay longer than the test, so only the shutdown can send them.
    let collector = collector(accepting()).await;
    let azure = MockServer::start(|_, _| MockResponse::json(200, answer("Flushed.", 3, 4))).await;
    let (service, base, _dir) = traced_binary(&azure, &collector.url, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    let (status, _) = describe(&base, None).await;
    assert_eq!(status, 200);
    assert_eq!(collector.count(), 0, "exported before the shutdown");

    // Act
    let finished = service.terminate().await;

    // Assert: a clean exit, and both spans of the request reached the collector.
    assert!(finished.status.success(), "{:#?}", finished.output());
    let names: Vec<String> = received(&collector).into_iter().map(|(_, s)| s.name).collect();
    assert!(names.contains(&"POST /generate/description".to_owned()), "{names:?}");
    assert!(names.contains(&"chat gpt-5-mini".to_owned()), "{names:?}");
}

/// Answers stay 200 while the collector is down, hangs or refuses, and the log has one warning.
async fn answers_survive(collector_url: &str, extra: &[(&str, &str)]) {
    let azure = MockServer::start(|_, _| MockResponse::json(200, answer("Still here.", 5, 7))).await;
    let (service, base, _dir) = traced_binary(&azure, collector_url, extra).await;
    let warned = |service: &Running| {
        service
            .output()
            .iter()
            .filter(|line| line.contains("could not send spans to the OpenTelemetry collector"))
            .count()
    };
    for round in 0..2 {
        for _ in 0..10 {
            let (status, body) = describe(&base, None).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["description"], "Still here.");
        }
        if round == 0 {
            wait_until(PATIENCE, "the warning about the collector", || warned(&service) >= 1).await;
        }
    }
    // More failed exports after the first warning, and still only the one line.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(warned(&service), 1, "{}", service.logs());
    assert_eq!(azure.count(), 20);
}

#[tokio::test]
async fn a_dead_collector_changes_no_answer_and_warns_once() {
    answers_survive(&format!("http://127.0.0.1:{}", free_port()), &[]).await;
}

#[tokio::test]
async fn a_refusing_collector_changes_no_answer_and_warns_once() {
    let collector = collector(MockResponse::raw(400, "text/plain", b"bad export")).await;
    answers_survive(&collector.url, &[]).await;
    assert!(collector.count() >= 1);
}

#[tokio::test]
async fn a_hanging_collector_changes_no_answer_and_warns_once() {
    let collector = collector(accepting().delayed(Duration::from_secs(30))).await;
    answers_survive(
        &collector.url,
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "300"), ("OTEL_BSP_MAX_QUEUE_SIZE", "16")],
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_metrics_the_service_exports() {
    // Arrange: traffic that makes every family appear (a family shows once it has a series):
    // Entra through the CLI, a throttled primary, a failover to a second deployment.
    let primary = MockServer::start(|_, _| {
        headroom(
            MockResponse::json(429, json!({"error": {"code": "429", "message": "Rate limit"}})),
            "0",
            "0",
        )
        .header("retry-after-ms", "60000")
    })
    .await;
    let secondary = MockServer::start(|_, _| MockResponse::json(200, answer("Routed.", 5, 7))).await;
    let file = config_file(&format!(
        "[[chat]]\nendpoint = \"{}\"\ndeployment = \"gpt-5-mini-2\"\n",
        secondary.url
    ));
    let az = FakeAz::logged_in("token-from-fake-az");
    let mut deps = test_dependencies();
    deps.executor = Some(az.executor());
    let mut env = azure_entra_vars(&primary, &[]);
    env.extend(vars(&[("AI_SERVICE_CONFIG", file.path.as_str())]));
    let app = spawn_app_with(env, deps).await;
    let response = app.post_description(&json!({"name": "Ball", "tags": []})).await;
    assert_eq!(response.status(), 200);
    let text = app.get("/metrics").await.text().await.unwrap();
    // The families `/metrics` declares (`# TYPE name kind`).
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/extras/monitoring");
    for file in ["dashboard.json", "alerts.yaml"] {
        let content = std::fs::read_to_string(root.join(file)).unwrap();
        let mut used: Vec<&str> = content
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("ai_service_") || word.starts_with("gen_ai_client_"))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(!used.is_empty(), "{file} queries no metric");
        for metric in used {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .unwrap_or(metric);
            assert!(
                declared.contains(&family),
                "{file} queries {metric}, which /metrics does not export (it declares {declared:?})"
            );
        }
    }
}
