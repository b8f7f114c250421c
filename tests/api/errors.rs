//! How `POST /generate/description` fails: upstream refusals and garbage become sentences,
//! bad bodies become FastAPI's list form, and nothing bad ever reaches the upstream.

use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::Arc;

const MARKER: &str = "SECRET-UPSTREAM-MARKER";

fn product() -> Value {
    json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]})
}

/// A mock Azure OpenAI answering every call with `answer`.
async fn azure_answering(answer: MockResponse) -> MockServer {
    MockServer::start(move |_, _| answer.clone()).await
}

/// Posts a description request and returns status, the raw text and the `detail` sentence.
async fn describe_failing(app: &TestApp) -> (u16, String, String) {
    let response = app.post_description(&product()).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let sentence = failure_clause(detail(&body)).to_owned();
    assert!(!text.contains(MARKER), "the upstream body was echoed: {text}");
    (status, text, sentence)
}

/// Posts raw bytes to the description route with an optional Content-Type.
async fn post_raw(app: &TestApp, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = app.client.post(app.url("/generate/description")).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.expect("request sent")
}

// ---------------------------------------------------------------- upstream failures

#[tokio::test]
async fn a_content_filter_400_answers_422_with_a_sentence() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        400,
        json!({"error": {
            "message": format!("The response was filtered due to the prompt triggering Azure OpenAI's content management policy. {MARKER}"),
            "type": null,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": false, "severity": "safe"},
                    "self_harm": {"filtered": false, "severity": "safe"},
                    "sexual": {"filtered": false, "severity": "safe"},
                    "violence": {"filtered": true, "severity": "medium"}
                }
            }
        }}),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 422, "{sentence}");
    assert!(sentence.contains("content filter"), "{sentence}");
    assert_eq!(azure.count(), 1, "a filtered prompt is not retried");
}

#[tokio::test]
async fn a_200_finished_by_the_content_filter_with_null_content_answers_422() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        200,
        json!({
            "id": "chatcmpl-x", "object": "chat.completion", "model": "gpt-5-mini",
            "choices": [{
                "index": 0,
                "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": null},
                "content_filter_results": {"violence": {"filtered": true, "severity": "high", "note": MARKER}}
            }]
        }),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 422, "{sentence}");
    assert!(sentence.contains("content filter"), "{sentence}");
}

#[tokio::test]
async fn a_200_with_null_content_is_a_502_never_a_null_description() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        200,
        json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": null}}], "id": MARKER}),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, text, _) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{text}");
    assert!(!text.contains("\"description\""), "{text}");
}

#[tokio::test]
async fn a_reasoning_model_rejecting_the_temperature_answers_500_naming_temperature() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        400,
        json!({"error": {
            "message": "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value"
        }}),
    ))
    .await;
    let mut config = azure_key_vars(&azure);
    config.extend(vars(&[("TEMPERATURE", "0.7")]));
    let app = spawn_app(config).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 500, "{sentence}");
    assert!(sentence.contains("TEMPERATURE"), "{sentence}");
    assert_eq!(azure.requests()[0].json()["temperature"], 0.7);
}

#[tokio::test]
async fn a_refused_key_answers_502_naming_the_key() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        401,
        json!({"error": {"code": "401", "message": format!("Access denied due to invalid subscription key or wrong API endpoint. {MARKER}")}}),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, text, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{sentence}");
    assert!(sentence.contains("key") && sentence.contains("401"), "{sentence}");
    assert!(!text.contains("test-azure-api-key-0123456789"), "{text}");
    assert_eq!(azure.count(), 1, "a refused key is not retried");
}

#[tokio::test]
async fn a_refused_entra_token_answers_502_naming_the_role() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        403,
        json!({"error": {"code": "PermissionDenied", "message": format!("The principal `00000000` lacks the required data action `Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action`. {MARKER}")}}),
    ))
    .await;
    let mut deps = test_dependencies();
    deps.token_provider = Some(Arc::new(FixedToken("fixed-entra-token")));
    let app = spawn_app_with(azure_entra_vars(&azure, &[]), deps).await;

    // Act
    let (status, text, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{sentence}");
    assert!(
        sentence.contains("Cognitive Services OpenAI User") && sentence.contains("403"),
        "{sentence}"
    );
    assert!(!text.contains("fixed-entra-token"), "{text}");
}

#[tokio::test]
async fn a_missing_deployment_answers_502_naming_the_deployment() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        404,
        json!({"error": {"code": "DeploymentNotFound", "message": format!("The API deployment for this resource does not exist. {MARKER}")}}),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{sentence}");
    assert!(sentence.contains("gpt-5-mini"), "{sentence}");
}

#[tokio::test]
async fn upstream_garbage_answers_502_without_echoing_it() {
    // Arrange
    let answers = [
        (
            "an HTML page with 200",
            MockResponse::raw(
                200,
                "text/html",
                format!("<html><head><title>Gateway</title></head><body>{MARKER}</body></html>").as_bytes(),
            ),
        ),
        (
            "malformed JSON",
            MockResponse::raw(
                200,
                "application/json",
                format!("{{\"choices\": [{{\"message\": \"{MARKER}").as_bytes(),
            ),
        ),
        (
            "no choices",
            MockResponse::json(200, json!({"id": MARKER, "object": "chat.completion"})),
        ),
        (
            "empty choices",
            MockResponse::json(200, json!({"id": MARKER, "choices": []})),
        ),
    ];
    let azure = azure_answering(MockResponse::json(200, json!({}))).await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    for (what, answer) in answers {
        azure.respond_with(move |_, _| answer.clone());

        // Act
        let (status, text, _) = describe_failing(&app).await;

        // Assert
        assert_eq!(status, 502, "{what}: {text}");
    }
    assert_eq!(azure.count(), 4, "a 200 is not retried");
}

#[tokio::test]
async fn another_400_answers_502_with_the_first_line_of_the_upstream_message_only() {
    // Arrange
    let azure = azure_answering(MockResponse::json(
        400,
        json!({"error": {"code": "context_length_exceeded", "message": format!("This model's maximum context length is 128000 tokens.\n{MARKER}"), "detail": MARKER}}),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{sentence}");
    assert!(
        sentence.ends_with("the model rejected the request: This model's maximum context length is 128000 tokens"),
        "{sentence}"
    );
}

#[tokio::test]
async fn a_400_without_a_json_error_still_answers_a_sentence() {
    // Arrange
    let azure = azure_answering(MockResponse::raw(
        400,
        "text/html",
        format!("<html>Bad Request {MARKER}</html>").as_bytes(),
    ))
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, _, sentence) = describe_failing(&app).await;

    // Assert
    assert_eq!(status, 502, "{sentence}");
    assert!(
        !sentence.trim_end().ends_with(':'),
        "the sentence ends with an empty upstream message: {sentence}"
    );
}

// ---------------------------------------------------------------- bodies that do not validate

/// Sends `body` as JSON, expects 422 with exactly `expected` as the list of issues, and no upstream call.
async fn assert_rejected(body: Value, expected: Value) {
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    let (status, answer) = status_and_json(app.post_description(&body).await).await;

    assert_eq!((status, answer), (422, json!({ "detail": expected })), "for {body}");
    assert_eq!(azure.count(), 0, "the upstream received a bad request: {body}");
}

#[tokio::test]
async fn a_missing_field_answers_fastapis_missing_issue() {
    assert_rejected(
        json!({"name": "Bone"}),
        json!([{"type": "missing", "loc": ["body", "tags"], "msg": "Field required", "input": {"name": "Bone"}}]),
    )
    .await;
}

#[tokio::test]
async fn both_fields_missing_are_both_listed() {
    assert_rejected(
        json!({}),
        json!([
            {"type": "missing", "loc": ["body", "name"], "msg": "Field required", "input": {}},
            {"type": "missing", "loc": ["body", "tags"], "msg": "Field required", "input": {}}
        ]),
    )
    .await;
}

#[tokio::test]
async fn wrong_types_answer_string_type_and_list_type() {
    assert_rejected(
        json!({"name": 5, "tags": "cat"}),
        json!([
            {"type": "string_type", "loc": ["body", "name"], "msg": "Input should be a valid string", "input": 5},
            {"type": "list_type", "loc": ["body", "tags"], "msg": "Input should be a valid list", "input": "cat"}
        ]),
    )
    .await;
}

#[tokio::test]
async fn a_wrong_tag_type_is_located_by_its_index() {
    assert_rejected(
        json!({"name": "Bone", "tags": ["cat", 3]}),
        json!([{"type": "string_type", "loc": ["body", "tags", 1], "msg": "Input should be a valid string", "input": 3}]),
    )
    .await;
}

#[tokio::test]
async fn a_non_object_body_answers_model_attributes_type() {
    assert_rejected(
        json!([1, 2]),
        json!([{
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": [1, 2]
        }]),
    )
    .await;
}

#[tokio::test]
async fn an_unknown_field_does_not_excuse_a_missing_one() {
    assert_rejected(
        json!({"name": "Bone", "price": 3}),
        json!([{"type": "missing", "loc": ["body", "tags"], "msg": "Field required", "input": {"name": "Bone", "price": 3}}]),
    )
    .await;
}

#[tokio::test]
async fn an_empty_name_answers_string_too_short() {
    assert_rejected(
        json!({"name": "", "tags": []}),
        json!([{
            "type": "string_too_short",
            "loc": ["body", "name"],
            "msg": "String should have at least 1 character",
            "input": "",
            "ctx": {"min_length": 1}
        }]),
    )
    .await;
}

#[tokio::test]
async fn a_name_over_200_characters_answers_string_too_long() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let long_name = "é".repeat(201);

    // Act
    let (status, body) = status_and_json(app.post_description(&json!({"name": long_name, "tags": []})).await).await;

    // Assert
    assert_eq!(status, 422, "{body}");
    let issues = body["detail"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{body}");
    let issue = &issues[0];
    assert_eq!(issue["type"], "string_too_long");
    assert_eq!(issue["loc"], json!(["body", "name"]));
    assert_eq!(issue["msg"], "String should have at most 200 characters");
    assert_eq!(issue["ctx"], json!({"max_length": 200}));
    assert!(issue["input"].as_str().unwrap().starts_with("éé"), "{issue}");
    assert_eq!(azure.count(), 0);

    // Exactly 200 characters (400 bytes of UTF-8) is accepted: the limit counts characters.
    let (status, _) = status_and_json(
        app.post_description(&json!({"name": "é".repeat(200), "tags": []}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn more_than_50_tags_answer_too_long() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let tags: Vec<String> = (0..51).map(|i| format!("tag{i}")).collect();

    // Act
    let (status, body) = status_and_json(app.post_description(&json!({"name": "Bone", "tags": tags})).await).await;

    // Assert
    assert_eq!(status, 422, "{body}");
    let issue = &body["detail"][0];
    assert_eq!(issue["type"], "too_long");
    assert_eq!(issue["loc"], json!(["body", "tags"]));
    assert_eq!(issue["ctx"]["max_length"], 50);
    assert_eq!(body["detail"].as_array().unwrap().len(), 1);
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn malformed_json_answers_json_invalid_at_the_byte_offset() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    // Python: json.loads('{"name": "Bone", "tags": [}') -> "Expecting value: line 1 column 27 (char 26)".
    let body = br#"{"name": "Bone", "tags": [}"#.to_vec();

    // Act
    let (status, answer) = status_and_json(post_raw(&app, Some("application/json"), body).await).await;

    // Assert
    assert_eq!(
        (status, answer),
        (
            422,
            json!({"detail": [{"type": "json_invalid", "loc": ["body", 26], "msg": "JSON decode error", "input": {}, "ctx": {"error": "Expecting value"}}]})
        )
    );
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_malformed_second_line_is_located_by_bytes_not_columns() {
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    // Python: json.loads('{"name": "Bone",\n "tags": ]}') -> "Expecting value: line 2 column 10 (char 26)".
    let body = b"{\"name\": \"Bone\",\n \"tags\": ]}".to_vec();

    let (status, answer) = status_and_json(post_raw(&app, Some("application/json"), body).await).await;

    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["detail"][0]["type"], "json_invalid");
    assert_eq!(answer["detail"][0]["loc"], json!(["body", 26]));
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn an_empty_body_answers_json_invalid() {
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    let (status, answer) = status_and_json(post_raw(&app, Some("application/json"), Vec::new()).await).await;

    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["detail"][0]["type"], "json_invalid");
    assert_eq!(answer["detail"][0]["loc"], json!(["body", 0]));
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn invalid_utf8_answers_422_json_invalid() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let mut body = b"{\"name\": \"Bo".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"ne\", \"tags\": []}");

    // Act
    let (status, answer) = status_and_json(post_raw(&app, Some("application/json"), body).await).await;

    // Assert
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["detail"][0]["type"], "json_invalid", "{answer}");
    assert_eq!(answer["detail"][0]["loc"][0], "body", "{answer}");
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_body_over_64_kib_answers_413_with_a_sentence() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let body = json!({"name": "Bone", "tags": ["x".repeat(70 * 1024)]})
        .to_string()
        .into_bytes();

    // Act
    let (status, answer) = status_and_json(post_raw(&app, Some("application/json"), body).await).await;

    // Assert
    assert_eq!(status, 413, "{answer}");
    let sentence = detail(&answer);
    assert!(sentence.contains("65536"), "{sentence}");
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn an_xml_content_type_answers_415_with_a_sentence() {
    // Arrange
    let azure = azure_openai_answering("never").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, answer) =
        status_and_json(post_raw(&app, Some("text/xml"), b"<product><name>Bone</name></product>".to_vec()).await).await;

    // Assert
    assert_eq!(status, 415, "{answer}");
    assert!(detail(&answer).contains("application/json"), "{answer}");
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_json_body_without_a_content_type_is_accepted_as_the_product_service_proxy_sends_it() {
    // Arrange
    let azure = azure_openai_answering("Proxied prose.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let (status, answer) = status_and_json(post_raw(&app, None, product().to_string().into_bytes()).await).await;

    // Assert
    assert_eq!((status, answer), (200, json!({"description": "Proxied prose."})));
    assert_eq!(azure.count(), 1);
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let azure = azure_openai_answering("Charset prose.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    let (status, answer) = status_and_json(
        post_raw(
            &app,
            Some("Application/JSON; charset=utf-8"),
            product().to_string().into_bytes(),
        )
        .await,
    )
    .await;

    assert_eq!((status, answer), (200, json!({"description": "Charset prose."})));
}
