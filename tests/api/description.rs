//! `POST /generate/description` against every backend: what the caller gets and what the upstream received.

use crate::helpers::*;
use serde_json::json;
use std::sync::Arc;

const SYSTEM_PROMPT: &str = "You are a helpful assistant that generates product descriptions using a witty and engaging tone, but make sure to not include any of the tags or the product name in the description.";

#[tokio::test]
async fn azure_with_an_api_key_returns_the_description_and_sends_the_contract_request() {
    // Arrange
    let azure = azure_openai_answering("A whisker-twitching delight.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let response = app
        .post_description(&json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]}))
        .await;

    // Assert: the caller
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, body),
        (200, json!({"description": "A whisker-twitching delight."}))
    );
    // Assert: the upstream
    let requests = azure.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/openai/deployments/gpt-5-mini/chat/completions");
    assert_eq!(
        request.query.get("api-version").map(String::as_str),
        Some("2024-12-01-preview")
    );
    assert_eq!(request.header("api-key"), Some("test-azure-api-key-0123456789"));
    assert_eq!(request.header("authorization"), None);
    let body = request.json();
    OfficialSchema::load().assert_valid("createChatCompletionRequest", &body);
    assert_eq!(
        body,
        json!({
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "Generate a product description for the product 'Catnip Carnival' with the following tags: 'cat, toy'."}
            ],
            "temperature": 1.0
        })
    );
    assert!(body.get("max_tokens").is_none());
}

#[tokio::test]
async fn unknown_body_fields_are_ignored_and_the_upstream_gets_the_same_request_as_without_them() {
    // Arrange: the original ignores fields it does not know, and the store-admin may send more one day.
    let azure = azure_openai_answering("Same as ever.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let plain = json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]});
    let with_extras = json!({"name": "Catnip Carnival", "tags": ["cat", "toy"], "price": 9.99, "id": 7, "tags2": null});

    // Act
    let (status_plain, body_plain) = status_and_json(app.post_description(&plain).await).await;
    let (status_extra, body_extra) = status_and_json(app.post_description(&with_extras).await).await;

    // Assert
    assert_eq!((status_plain, status_extra), (200, 200));
    assert_eq!(body_plain, body_extra);
    let requests = azure.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, requests[1].path);
    assert_eq!(requests[0].json(), requests[1].json());
    assert!(!String::from_utf8_lossy(&requests[1].body).contains("9.99"));
}

#[tokio::test]
async fn azure_with_entra_sends_the_bearer_token_from_the_token_provider() {
    // Arrange
    let azure = azure_openai_answering("Bearer-powered prose.").await;
    let mut deps = test_dependencies();
    deps.token_provider = Some(Arc::new(FixedToken("fixed-entra-token")));
    let app = spawn_app_with(
        azure_entra_vars(
            &azure,
            &[("AZURE_OPENAI_API_VERSION", "2024-10-21"), ("TEMPERATURE", "0.5")],
        ),
        deps,
    )
    .await;

    // Act
    let (status, body) = status_and_json(app.post_description(&json!({"name": "Bone", "tags": []})).await).await;

    // Assert
    assert_eq!((status, body), (200, json!({"description": "Bearer-powered prose."})));
    let request = &azure.requests()[0];
    assert_eq!(request.header("authorization"), Some("Bearer fixed-entra-token"));
    assert_eq!(request.header("api-key"), None);
    assert_eq!(request.query["api-version"], "2024-10-21");
    let body = request.json();
    OfficialSchema::load().assert_valid("createChatCompletionRequest", &body);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["messages"][1]["content"],
        "Generate a product description for the product 'Bone' with the following tags: ''."
    );
}

#[tokio::test]
async fn public_openai_sends_key_organisation_and_model() {
    // Arrange
    let openai = MockServer::start(|_, _| MockResponse::json(200, chat_completion("From the public API."))).await;
    let base = format!("{}v1", openai.url);
    let app = spawn_app(vars(&[
        ("OPENAI_API_KEY", "sk-test-public-key"),
        ("OPENAI_ORG_ID", "org-test"),
        ("OPENAI_BASE_URL", &base),
    ]))
    .await;

    // Act
    let (status, body) = status_and_json(app.post_description(&json!({"name": "Leash", "tags": ["dog"]})).await).await;

    // Assert
    assert_eq!((status, body), (200, json!({"description": "From the public API."})));
    let request = &openai.requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-public-key"));
    assert_eq!(request.header("openai-organization"), Some("org-test"));
    let body = request.json();
    assert_eq!(body["model"], "gpt-5-mini");
    assert_eq!(body["messages"][0]["content"], SYSTEM_PROMPT);
}

#[tokio::test]
async fn a_local_llm_uses_the_configured_model_from_its_list_and_asks_for_the_list_once() {
    // Arrange
    let local = MockServer::start_http(|request, _| match request.path.as_str() {
        "/v1/models" => MockResponse::json(
            200,
            json!({"object": "list", "data": [{"id": "phi-3.5-mini"}, {"id": "mistral-7b"}]}),
        ),
        _ => MockResponse::json(200, chat_completion("Locally grown words.")),
    })
    .await;
    let base = format!("{}v1", local.url);
    let app = spawn_app(vars(&[
        ("USE_LOCAL_LLM", "true"),
        ("LOCAL_LLM_ENDPOINT", &base),
        ("LOCAL_LLM_MODEL", "mistral-7b"),
    ]))
    .await;

    // Act
    for _ in 0..2 {
        let (status, body) =
            status_and_json(app.post_description(&json!({"name": "Ball", "tags": ["dog"]})).await).await;
        assert_eq!((status, body), (200, json!({"description": "Locally grown words."})));
    }

    // Assert
    let requests = local.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/models", "/v1/chat/completions", "/v1/chat/completions"]);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[1].json()["model"], "mistral-7b");
    assert_eq!(requests[1].header("authorization"), None);
}

#[tokio::test]
async fn a_local_llm_without_a_model_picks_the_first_listed() {
    let local = MockServer::start_http(|request, _| match request.path.as_str() {
        "/models" => MockResponse::json(200, json!({"data": [{"id": "first"}, {"id": "second"}]})),
        _ => MockResponse::json(200, chat_completion("ok")),
    })
    .await;
    let app = spawn_app(vars(&[("USE_LOCAL_LLM", "True"), ("LOCAL_LLM_ENDPOINT", &local.url)])).await;

    let (status, _) = status_and_json(app.post_description(&json!({"name": "Ball", "tags": []})).await).await;

    assert_eq!(status, 200);
    assert_eq!(local.requests()[1].json()["model"], "first");
}

#[tokio::test]
async fn a_local_model_that_is_not_listed_is_a_clear_error() {
    let local = MockServer::start_http(|_, _| MockResponse::json(200, json!({"data": [{"id": "only-this"}]}))).await;
    let app = spawn_app(vars(&[
        ("USE_LOCAL_LLM", "True"),
        ("LOCAL_LLM_ENDPOINT", &local.url),
        ("LOCAL_LLM_MODEL", "missing"),
    ]))
    .await;

    let (status, body) = status_and_json(app.post_description(&json!({"name": "Ball", "tags": []})).await).await;

    assert_eq!(status, 500);
    let text = failure_clause(detail(&body));
    assert!(text.contains("LOCAL_LLM_MODEL") && text.contains("only-this"), "{text}");
    assert_eq!(local.count(), 1, "no chat call when the model is missing");
}

#[tokio::test]
async fn with_nothing_configured_the_offline_generator_answers() {
    // Arrange
    let app = spawn_app(vec![]).await;

    // Act
    let (status, body) = status_and_json(
        app.post_description(&json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]}))
            .await,
    )
    .await;
    let (status2, body2) = status_and_json(
        app.post_description(&json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]}))
            .await,
    )
    .await;

    // Assert
    assert_eq!((status, status2), (200, 200));
    let text = body["description"].as_str().unwrap();
    assert!(
        text.contains("Catnip Carnival") && text.contains("cat and toy"),
        "{text}"
    );
    assert_eq!(body, body2, "deterministic");
}

#[test]
fn the_schema_check_itself_rejects_a_request_the_official_description_forbids() {
    // Guards the guard: a validator that accepts everything would make the tests above pass vacuously.
    let schema = OfficialSchema::load();
    let without_messages = json!({"temperature": 1.0});
    let result = std::panic::catch_unwind(|| schema.assert_valid("createChatCompletionRequest", &without_messages));
    assert!(result.is_err());
    let two_images = json!({"prompt": "x", "n": 2});
    let result = std::panic::catch_unwind(|| schema.assert_valid("imageGenerationsRequest", &two_images));
    assert!(result.is_err());
    let unknown_role = json!({"messages": [{"role": "narrator", "content": "x"}]});
    let result = std::panic::catch_unwind(|| schema.assert_valid("createChatCompletionRequest", &unknown_role));
    assert!(result.is_err());
    let odd_size = json!({"prompt": "x", "n": 1, "size": "1000x1000"});
    let result = std::panic::catch_unwind(|| schema.assert_valid("imageGenerationsRequest", &odd_size));
    assert!(result.is_err());
    let answer_without_choices = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m"});
    let result =
        std::panic::catch_unwind(|| schema.assert_valid("createChatCompletionResponse", &answer_without_choices));
    assert!(result.is_err());
}

#[tokio::test]
#[should_panic(
    expected = "the mock's responder failed on request 0 (POST /openai/deployments/gpt-5-mini/chat/completions): the request has no field `missing`"
)]
async fn a_failed_assertion_in_a_mock_s_responder_is_reported_with_its_cause() {
    let azure = MockServer::start(|request, _| {
        assert!(
            request.json().get("missing").is_some(),
            "the request has no field `missing`"
        );
        MockResponse::json(200, chat_completion("never"))
    })
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let _ = app.post_description(&json!({"name": "Bone", "tags": []})).await;
    azure.count();
}

#[test]
fn the_answers_the_mocks_give_match_the_official_response_schemas() {
    // The mocks must answer what Azure OpenAI answers, or the tests prove nothing about production.
    let schema = OfficialSchema::load();
    schema.assert_valid("createChatCompletionResponse", &chat_completion("A witty description."));
    schema.assert_valid("generateImagesResponse", &fixture("image-url-answer.json"));
}
