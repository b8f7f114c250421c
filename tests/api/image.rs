//! `POST /generate/image` on Azure OpenAI and offline: what the caller gets and what the upstream received.

use crate::helpers::*;
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

const MARKER: &str = "SECRET-UPSTREAM-MARKER";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
/// A tiny base64 string standing in for a gpt-image PNG.
const B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

fn product() -> Value {
    json!({"name": "Catnip Carnival", "description": "A feather wand that turns any afternoon into a chase."})
}

fn contract_prompt(name: &str, description: &str) -> String {
    format!(
        "Create a clean studio product photo for an online pet supply store. Show the product named '{name}' using this description: '{description}'. Use a plain background and retail packaging. No people, animals, or text overlays."
    )
}

/// The key configuration of `azure_key_vars` plus an image deployment and `extra`.
/// Status, raw text and failure clause of an image request that must fail.
async fn draw_failing(app: &TestApp) -> (u16, String, String) {
    let response = app.post_image(&product()).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let clause = failure_clause(detail(&body)).to_owned();
    (status, text, clause)
}

fn image_vars(azure: &MockServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = azure_key_vars(azure);
    all.push((
        "AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME".to_owned(),
        "gpt-image-1".to_owned(),
    ));
    all.extend(vars(extra));
    all
}

/// A gpt-image answer: one `b64_json` image.
fn b64_answer() -> Value {
    json!({"created": 1_700_000_000, "data": [{"b64_json": B64}], "usage": {"total_tokens": 100}})
}

/// The official example of a DALL-E answer (one `url` per image).
fn dalle_example_answer() -> Value {
    fixture("image-url-answer.json")
}

async fn health(app: &TestApp) -> Value {
    let (status, body) = status_and_json(app.get("/health").await).await;
    assert_eq!(status, 200);
    body
}

/// An Azure OpenAI + Entra app with an image deployment, its token from [`FixedToken`].
async fn spawn_entra_image_app(azure: &MockServer) -> TestApp {
    let mut deps = test_dependencies();
    deps.token_provider = Some(Arc::new(FixedToken("fixed-entra-token")));
    spawn_app_with(
        azure_entra_vars(azure, &[("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME", "gpt-image-1")]),
        deps,
    )
    .await
}

#[test]
fn the_gpt_image_answer_of_the_mock_matches_the_official_response_schema() {
    OfficialSchema::load().assert_valid("generateImagesResponse", &b64_answer());
}

#[tokio::test]
async fn unknown_body_fields_are_ignored_and_the_image_upstream_gets_the_same_request_as_without_them() {
    // Arrange
    let azure = MockServer::start(|_, _| MockResponse::json(200, b64_answer())).await;
    let app = spawn_app(image_vars(&azure, &[])).await;
    let mut with_extras = product();
    with_extras["size"] = json!("256x256");
    with_extras["style"] = json!({"nested": [1, 2]});

    // Act
    let (status_plain, body_plain) = status_and_json(app.post_image(&product()).await).await;
    let (status_extra, body_extra) = status_and_json(app.post_image(&with_extras).await).await;

    // Assert: the extra "size" does not leak into the upstream request
    assert_eq!((status_plain, status_extra), (200, 200));
    assert_eq!(body_plain, body_extra);
    let requests = azure.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].json(), requests[1].json());
    assert_eq!(requests[1].json()["size"], "1024x1024");
}

#[tokio::test]
async fn a_gpt_image_answer_becomes_a_png_data_url_and_the_upstream_gets_the_contract_request() {
    // Arrange
    let azure = MockServer::start(|_, _| MockResponse::json(200, b64_answer())).await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    // Act
    let (status, body) = status_and_json(app.post_image(&product()).await).await;

    // Assert: the caller
    assert_eq!(
        (status, body),
        (200, json!({"image": format!("data:image/png;base64,{B64}")}))
    );
    // Assert: the upstream (the image endpoint defaults to AZURE_OPENAI_ENDPOINT)
    let requests = azure.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/openai/deployments/gpt-image-1/images/generations");
    assert_eq!(
        request.query.get("api-version").map(String::as_str),
        Some("2025-04-01-preview")
    );
    assert_eq!(request.header("api-key"), Some("test-azure-api-key-0123456789"));
    assert_eq!(request.header("authorization"), None);
    let body = request.json();
    OfficialSchema::load().assert_valid("imageGenerationsRequest", &body);
    assert_eq!(
        body,
        json!({
            "prompt": contract_prompt("Catnip Carnival", "A feather wand that turns any afternoon into a chase."),
            "n": 1,
            "size": "1024x1024"
        })
    );
}

#[tokio::test]
async fn a_dalle_url_answer_is_returned_as_is_from_the_separate_image_endpoint_and_version() {
    // Arrange
    let chat = azure_openai_answering("unused").await;
    let images = MockServer::start(|_, _| MockResponse::json(200, dalle_example_answer())).await;
    let app = spawn_app(image_vars(
        &chat,
        &[
            ("AZURE_OPENAI_IMAGE_ENDPOINT", &images.url),
            ("AZURE_OPENAI_IMAGE_API_VERSION", "2024-10-21"),
            ("AZURE_OPENAI_API_VERSION", "2024-06-01"),
        ],
    ))
    .await;

    // Act
    let (status, body) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    let first_url = dalle_example_answer()["data"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!((status, body), (200, json!({ "image": first_url })));
    assert_eq!(chat.count(), 0, "images go to AZURE_OPENAI_IMAGE_ENDPOINT only");
    let request = &images.requests()[0];
    assert_eq!(request.path, "/openai/deployments/gpt-image-1/images/generations");
    assert_eq!(request.query["api-version"], "2024-10-21");
    assert_eq!(request.header("api-key"), Some("test-azure-api-key-0123456789"));
    OfficialSchema::load().assert_valid("imageGenerationsRequest", &request.json());
}

#[tokio::test]
async fn the_image_api_version_falls_back_to_azure_openai_api_version() {
    // Arrange
    let azure = MockServer::start(|_, _| MockResponse::json(200, b64_answer())).await;
    let app = spawn_app(image_vars(&azure, &[("AZURE_OPENAI_API_VERSION", "2024-10-21")])).await;

    // Act
    let (status, _) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    assert_eq!(status, 200);
    assert_eq!(azure.requests()[0].query["api-version"], "2024-10-21");
}

#[tokio::test]
async fn the_deprecated_dalle_deployment_name_still_enables_images() {
    // Arrange
    let azure = MockServer::start(|_, _| MockResponse::json(200, dalle_example_answer())).await;
    let mut config = azure_key_vars(&azure);
    config.extend(vars(&[("AZURE_OPENAI_DALLE_DEPLOYMENT_NAME", "dall-e-3")]));
    let app = spawn_app(config).await;

    // Act
    let capabilities = health(&app).await["capabilities"].clone();
    let (status, body) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    assert_eq!(capabilities, json!(["description", "image"]));
    assert_eq!(status, 200, "{body}");
    assert!(body["image"].as_str().unwrap().starts_with("https://"), "{body}");
    assert_eq!(
        azure.requests()[0].path,
        "/openai/deployments/dall-e-3/images/generations"
    );
}

#[tokio::test]
async fn health_lists_image_when_an_image_deployment_is_configured() {
    let azure = azure_openai_answering("unused").await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    let body = health(&app).await;

    assert_eq!(body["capabilities"], json!(["description", "image"]));
    assert_eq!(body["backend"], "azure-openai");
}

#[tokio::test]
async fn azure_without_an_image_deployment_does_not_offer_images_and_answers_501() {
    // Arrange
    let azure = azure_openai_answering("unused").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let capabilities = health(&app).await["capabilities"].clone();
    let (status, body) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    assert_eq!(capabilities, json!(["description"]));
    assert_eq!(status, 501);
    let text = failure_clause(detail(&body));
    assert!(
        text.starts_with("image generation is not configured") && text.contains("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME"),
        "{text}"
    );
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn the_offline_default_draws_a_png_placeholder() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let capabilities = health(&app).await["capabilities"].clone();
    let (status, body) = status_and_json(app.post_image(&product()).await).await;
    let (_, again) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    assert_eq!(capabilities, json!(["description", "image"]));
    assert_eq!(status, 200);
    let src = body["image"].as_str().unwrap();
    let b64 = src
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {src:.60}"));
    let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert!(png.starts_with(PNG_SIGNATURE), "{:?}", &png[..8.min(png.len())]);
    // A real decoder reads the whole image: every chunk's CRC, the zlib stream, every row.
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(
        (frame.width, frame.height, frame.color_type, frame.bit_depth),
        (128, 128, png::ColorType::Rgb, png::BitDepth::Eight)
    );
    let pixel = |x: usize, y: usize| &pixels[(y * 128 + x) * 3..][..3];
    assert_ne!(pixel(0, 0), pixel(127, 127), "a gradient, corner to corner");
    assert_eq!(
        pixel(127, 0),
        pixel(0, 127),
        "diagonal: the same along each anti-diagonal"
    );
    assert_eq!(body, again, "deterministic");
}

#[tokio::test]
async fn image_content_filtering_in_every_shape_answers_422_asking_for_a_simpler_description() {
    // Arrange
    let shapes = [
        json!({"error": {"code": "moderation_blocked", "message": format!("Your request was rejected by the safety system. {MARKER}"), "type": "image_generation_user_error"}}),
        json!({"error": {"code": "content_policy_violation", "message": format!("Your request was rejected as a result of our safety system. {MARKER}"), "type": "invalid_request_error"}}),
        json!({"error": {"code": "contentFilter", "message": format!("Your task failed as a result of our safety system. {MARKER}")}}),
        json!({"error": {"code": "content_filter", "message": format!("The response was filtered. {MARKER}"), "inner_error": {"code": "ResponsibleAIPolicyViolation", "content_filter_results": {"violence": {"filtered": true, "severity": "high"}}, "revised_prompt": MARKER}}}),
    ];
    let azure = MockServer::start(|_, _| MockResponse::json(500, json!({}))).await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    for (i, shape) in shapes.into_iter().enumerate() {
        azure.respond_with(move |_, _| MockResponse::json(400, shape.clone()));

        // Act
        let (status, text, sentence) = draw_failing(&app).await;

        // Assert
        assert_eq!(status, 422, "shape {i}: {text}");
        assert!(
            sentence.starts_with("the safety system blocked") && sentence.contains("simpler"),
            "shape {i}: {sentence}"
        );
        assert!(!text.contains(MARKER), "shape {i} echoed the upstream: {text}");
        assert_eq!(azure.count(), i + 1, "a filtered prompt is not retried");
    }
}

#[tokio::test]
async fn another_400_answers_400_with_the_first_line_of_the_upstream_message() {
    // Arrange
    let azure = MockServer::start(|_, _| {
        MockResponse::json(
            400,
            json!({"error": {"code": "invalid_prompt", "message": format!("Prompt too long\n{MARKER}"), "param": "prompt", "internal": MARKER}}),
        )
    })
    .await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    // Act
    let (status, body) = status_and_json(app.post_image(&product()).await).await;

    // Assert
    assert_eq!(status, 400);
    assert_eq!(failure_clause(detail(&body)), "Prompt too long");
    assert_eq!(azure.count(), 1);
}

#[tokio::test]
async fn a_refused_key_answers_502_naming_the_key() {
    for status_code in [401u16, 403] {
        // Arrange
        let azure = MockServer::start(move |_, _| {
        MockResponse::json(
            status_code,
            json!({"error": {"code": "401", "message": format!("Access denied due to invalid subscription key. {MARKER}")}}),
        )
    })
    .await;
        let app = spawn_app(image_vars(&azure, &[])).await;

        // Act
        let (status, text, sentence) = draw_failing(&app).await;

        // Assert
        assert_eq!(status, 502, "{status_code}: {text}");
        assert!(
            sentence.contains("key")
                && sentence.contains(&status_code.to_string())
                && !sentence.contains("Cognitive Services OpenAI User"),
            "{sentence}"
        );
        assert!(!text.contains(MARKER), "{text}");
        assert!(!text.contains("test-azure-api-key-0123456789"), "{text}");
    }
}

#[tokio::test]
async fn a_refused_entra_token_answers_502_naming_the_role_to_assign() {
    for status_code in [401u16, 403] {
        // Arrange
        let azure = MockServer::start(move |_, _| {
            MockResponse::json(
                status_code,
                json!({"error": {"code": "PermissionDenied", "message": format!("The principal lacks the required data action. {MARKER}")}}),
            )
        })
        .await;
        let app = spawn_entra_image_app(&azure).await;

        // Act
        let (status, text, sentence) = draw_failing(&app).await;

        // Assert
        assert_eq!(status, 502, "{status_code}: {text}");
        assert!(
            sentence.contains("Cognitive Services OpenAI User") && sentence.contains(&status_code.to_string()),
            "{sentence}"
        );
        assert!(!text.contains(MARKER) && !text.contains("fixed-entra-token"), "{text}");
        assert_eq!(
            azure.requests()[0].header("authorization"),
            Some("Bearer fixed-entra-token")
        );
    }
}

#[tokio::test]
async fn an_unusable_image_answer_is_a_502_without_the_upstream_body() {
    // Arrange
    let answers = [
        MockResponse::raw(
            200,
            "text/html",
            format!("<html><body>{MARKER}</body></html>").as_bytes(),
        ),
        MockResponse::json(200, json!({"data": [], "note": MARKER})),
        MockResponse::json(200, json!({"data": [{"revised_prompt": MARKER}]})),
    ];
    let azure = MockServer::start(|_, _| MockResponse::json(500, json!({}))).await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    for (i, answer) in answers.into_iter().enumerate() {
        azure.respond_with(move |_, _| answer.clone());

        // Act
        let (status, text, sentence) = draw_failing(&app).await;

        // Assert
        assert_eq!(status, 502, "answer {i}: {text}");
        assert!(sentence.starts_with("the model API returned an answer"), "{text}");
        assert!(!text.contains(MARKER), "answer {i} echoed the upstream: {text}");
    }
}

#[tokio::test]
async fn an_image_body_that_does_not_validate_never_reaches_the_upstream() {
    // Arrange
    let azure = MockServer::start(|_, _| MockResponse::json(200, b64_answer())).await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    // Act
    let (status, body) = status_and_json(app.post_image(&json!({"name": "Catnip Carnival"})).await).await;
    let (status_empty, body_empty) = status_and_json(
        app.post_image(&json!({"name": "Catnip Carnival", "description": ""}))
            .await,
    )
    .await;

    // Assert
    assert_eq!(
        (status, body),
        (
            422,
            json!({"detail": [{"type": "missing", "loc": ["body", "description"], "msg": "Field required", "input": {"name": "Catnip Carnival"}}]})
        )
    );
    assert_eq!(status_empty, 422);
    assert_eq!(body_empty["detail"][0]["type"], "string_too_short");
    assert_eq!(body_empty["detail"][0]["loc"], json!(["body", "description"]));
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_400_without_a_json_error_answers_400_with_a_sentence_not_an_empty_message() {
    // Arrange
    let azure =
        MockServer::start(|_, _| MockResponse::raw(400, "text/html", format!("<html>{MARKER}</html>").as_bytes()))
            .await;
    let app = spawn_app(image_vars(&azure, &[])).await;

    // Act
    let (status, text, sentence) = draw_failing(&app).await;

    // Assert
    assert_eq!(status, 400, "{text}");
    assert!(sentence.len() > 10, "{sentence}");
    assert!(!text.contains(MARKER), "{text}");
}
