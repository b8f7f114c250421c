//! `GET /metrics` counts what happened, in the Prometheus text format.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn metrics_count_requests_upstream_attempts_retries_and_token_acquisitions() {
    // Arrange: Azure OpenAI with Entra through the (fake) Azure CLI; the third chat call is throttled once.
    let azure = MockServer::start(|_, index| {
        if index == 2 {
            MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after-ms", "10")
        } else {
            MockResponse::json(200, chat_completion("Counted."))
        }
    })
    .await;
    let az = FakeAz::logged_in("token-from-fake-az");
    let mut deps = test_dependencies();
    deps.executor = Some(az.executor());
    let app = spawn_app_with(azure_entra_vars(&azure, &[("APP_VERSION", "9.9.9")]), deps).await;

    // Act: three good descriptions (one retried), one invalid body, one health check.
    for _ in 0..3 {
        assert_eq!(
            app.post_description(&json!({"name": "Ball", "tags": []}))
                .await
                .status(),
            200
        );
    }
    assert_eq!(app.post_description(&json!({"name": 1})).await.status(), 422);
    assert_eq!(app.get("/health").await.status(), 200);
    let response = app.get("/metrics").await;

    // Assert
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert_eq!(
        sample(
            &text,
            r#"ai_service_http_requests_total{route="/generate/description",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_http_requests_total{route="/generate/description",status="422"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"ai_service_http_requests_total{route="/health",status="200"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_http_request_duration_seconds_count{route="/generate/description"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_upstream_requests_total{backend="azure-openai",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_upstream_requests_total{backend="azure-openai",status="429"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"ai_service_upstream_retries_total{backend="azure-openai"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"ai_service_token_acquisitions_total{credential="AzureCliCredential",outcome="success"}"#
        ),
        1.0
    );
    // The scrape itself is in flight while it renders.
    assert_eq!(sample(&text, "ai_service_http_requests_in_flight"), 1.0);
    assert_eq!(
        sample(
            &text,
            r#"ai_service_build_info{version="9.9.9",backend="azure-openai"}"#
        ),
        1.0
    );
    assert_eq!(azure.count(), 4);
    assert_eq!(az.calls().len(), 1);
}

#[tokio::test]
async fn the_in_flight_gauge_comes_back_to_zero_when_clients_disconnect_mid_request() {
    // Arrange: an upstream that takes far longer than the clients wait.
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Too late.")).delayed(Duration::from_secs(30))
    })
    .await;
    let app = spawn_app(azure_key_vars(&azure)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    // Act: three clients give up while their descriptions are being generated.
    for _ in 0..3 {
        let sent = impatient
            .post(app.url("/generate/description"))
            .json(&json!({"name": "Ball", "tags": []}))
            .send()
            .await;
        assert!(sent.is_err_and(|e| e.is_timeout()));
    }

    // Assert: once the server has seen the disconnects, only the scrape itself is in flight.
    let mut in_flight = f64::NAN;
    let started = std::time::Instant::now();
    while started.elapsed() < PATIENCE {
        let text = app.get("/metrics").await.text().await.unwrap();
        in_flight = sample(&text, "ai_service_http_requests_in_flight");
        if in_flight == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        in_flight, 1.0,
        "requests abandoned by their clients still count as in flight"
    );
    assert_eq!(azure.count(), 3);
}
