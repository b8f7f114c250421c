//! Model routing across a pool of Azure OpenAI deployments (contract, "Model routing"): each
//! rule with the exact number of requests every mock received, waits for cooldowns, the
//! fail-fast 503, the v1 API and the file that defines the pools.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::helpers::*;
use serde_json::{Value, json};

const KEY: &str = "test-azure-api-key-0123456789";

fn product() -> Value {
    json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]})
}

/// A pool: `primary` from the drop-in variables, then one `[[chat]]` entry per mock in `others`,
/// with `routing` as the file's `[routing]` table (TOML lines) and `extra` variables.
struct Pool {
    app: TestApp,
    _file: ConfigFile,
}

async fn pool(primary: &MockServer, others: &[&MockServer], routing: &str, extra: &[(&str, &str)]) -> Pool {
    let mut toml = String::new();
    for (index, other) in others.iter().enumerate() {
        toml.push_str(&format!(
            "[[chat]]\nendpoint = \"{}\"\ndeployment = \"gpt-5-mini-{}\"\n\n",
            other.url,
            index + 2
        ));
    }
    toml.push_str(&format!("[routing]\n{routing}\n"));
    let file = config_file(&toml);
    let mut all = azure_key_vars(primary);
    all.extend(vars(&[("AI_SERVICE_CONFIG", file.path.as_str())]));
    all.extend(vars(extra));
    Pool {
        app: spawn_app(all).await,
        _file: file,
    }
}

fn ok() -> MockResponse {
    MockResponse::json(200, chat_completion("Routed."))
}

fn throttled(retry_after_ms: u64) -> MockResponse {
    MockResponse::json(
        429,
        json!({"error": {"code": "429", "message": "Rate limit is exceeded."}}),
    )
    .header("retry-after-ms", &retry_after_ms.to_string())
    .header("retry-after", &retry_after_ms.div_ceil(1000).to_string())
}

async fn describe(app: &TestApp) -> (u16, Value, Option<String>) {
    let response = app.post_description(&product()).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = status_and_json(response).await;
    (status, body, retry_after)
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

/// The value of the deployment-state gauge of `deployment` in the chat pool.
fn state(metrics: &str, deployment: &str) -> f64 {
    let prefix = "ai_service_deployment_state{capability=\"chat\",";
    metrics
        .lines()
        .find(|line| line.starts_with(prefix) && line.contains(&format!("deployment=\"{deployment}\"")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no state for {deployment} in:\n{metrics}"))
}

fn failovers(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("ai_service_failovers_total{capability=\"chat\"} "))
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn a_429_cools_the_deployment_and_the_request_moves_on_at_once() {
    // Arrange
    let primary = MockServer::start(|_, _| throttled(30_000)).await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (first, _, _) = describe(&pool.app).await;
    let (second, _, _) = describe(&pool.app).await;
    let metrics = metrics(&pool.app).await;

    // Assert: the cooling primary got no second request
    assert_eq!((first, second), (200, 200));
    assert_eq!((primary.count(), secondary.count()), (1, 2));
    assert_eq!(state(&metrics, "gpt-5-mini"), 1.0, "cooling");
    assert_eq!(state(&metrics, "gpt-5-mini-2"), 0.0);
    assert_eq!(
        failovers(&metrics),
        1.0,
        "the second request went to the secondary first"
    );
    assert_eq!(
        primary.requests()[0].header("api-key"),
        Some(KEY),
        "one key serves every entry"
    );
    assert_eq!(secondary.requests()[0].header("api-key"), Some(KEY));
    assert_eq!(
        secondary.requests()[0].path,
        "/openai/deployments/gpt-5-mini-2/chat/completions"
    );
}

#[tokio::test]
async fn a_cooldown_keeps_the_later_of_its_end_and_a_shorter_new_hint() {
    // Arrange: two requests reach the primary together; the first 429 asks for 30 s, the
    // second, answered later, for 0.2 s.
    let primary = MockServer::start(|_, index| {
        if index == 0 {
            throttled(30_000).delayed(Duration::from_millis(100))
        } else {
            throttled(200).delayed(Duration::from_millis(400))
        }
    })
    .await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (a, b) = tokio::join!(describe(&pool.app), describe(&pool.app));
    // Past the short hint: only the longer cooldown may keep the primary out now (the sleep is
    // the subject: the 0.2 s cooldown must pass).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (c, _, _) = describe(&pool.app).await;

    // Assert
    assert_eq!((a.0, b.0, c), (200, 200, 200));
    assert_eq!(primary.count(), 2, "the 0.2 s hint shortened the 30 s cooldown");
    assert_eq!(secondary.count(), 3);
}

#[tokio::test]
async fn server_errors_fail_over_and_three_in_a_row_open_the_circuit_until_a_trial_closes_it() {
    // Arrange
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let primary = MockServer::start(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            ok()
        } else {
            MockResponse::json(500, json!({"error": {"code": "InternalServerError"}}))
        }
    })
    .await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "circuit_open_seconds = 1", &[]).await;

    // Act + Assert: three failures fail over, then the circuit keeps the primary out
    for _ in 0..4 {
        assert_eq!(describe(&pool.app).await.0, 200);
    }
    assert_eq!((primary.count(), secondary.count()), (3, 4));
    assert_eq!(state(&metrics(&pool.app).await, "gpt-5-mini"), 2.0, "open");

    // After the open period one trial request goes to the primary and closes the circuit.
    healthy.store(true, Ordering::SeqCst);
    // The sleep is the subject: the 1 s open period must pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(describe(&pool.app).await.0, 200);
    assert_eq!(describe(&pool.app).await.0, 200);
    assert_eq!((primary.count(), secondary.count()), (5, 4));
    assert_eq!(state(&metrics(&pool.app).await, "gpt-5-mini"), 0.0, "closed");
}

#[tokio::test]
async fn a_failed_trial_opens_the_circuit_again_at_once() {
    // Arrange
    let primary = MockServer::start(|_, _| MockResponse::json(503, json!({"error": {"code": "503"}}))).await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "circuit_open_seconds = 1", &[]).await;
    for _ in 0..3 {
        assert_eq!(describe(&pool.app).await.0, 200);
    }
    assert_eq!(primary.count(), 3);

    // Act: the trial fails, and the next request stays away
    // The sleep is the subject: the 1 s open period must pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(describe(&pool.app).await.0, 200);
    assert_eq!(describe(&pool.app).await.0, 200);

    // Assert
    assert_eq!((primary.count(), secondary.count()), (4, 5));
}

#[tokio::test]
async fn a_refused_connection_fails_over() {
    // Arrange: nothing listens on the primary's port.
    let primary = MockServer::start(|_, _| ok()).await;
    primary.stop();
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (status, body, _) = describe(&pool.app).await;

    // Assert
    assert_eq!((status, body), (200, json!({"description": "Routed."})));
    assert_eq!(secondary.count(), 1);
}

#[tokio::test]
async fn an_attempt_timeout_fails_over_within_the_route_budget() {
    // Arrange: the primary hangs longer than one attempt may take.
    let primary = MockServer::start(|_, _| ok().delayed(Duration::from_secs(20))).await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(
        &primary,
        &[&secondary],
        "",
        &[("DESCRIPTION_ATTEMPT_TIMEOUT_SECONDS", "1")],
    )
    .await;

    // Act
    let (status, _, _) = describe(&pool.app).await;

    // Assert
    assert_eq!(status, 200);
    assert_eq!((primary.count(), secondary.count()), (1, 1));
}

#[tokio::test]
async fn a_401_403_or_404_sets_the_deployment_aside_and_the_next_one_answers() {
    for refusal in [401, 403, 404] {
        // Arrange
        let primary =
            MockServer::start(move |_, _| MockResponse::json(refusal, json!({"error": {"code": "refused"}}))).await;
        let secondary = MockServer::start(|_, _| ok()).await;
        let pool = pool(&primary, &[&secondary], "", &[]).await;

        // Act
        let (first, _, _) = describe(&pool.app).await;
        let (second, _, _) = describe(&pool.app).await;

        // Assert
        assert_eq!((first, second), (200, 200), "{refusal}");
        assert_eq!((primary.count(), secondary.count()), (1, 2), "{refusal}: set aside");
        assert_eq!(state(&metrics(&pool.app).await, "gpt-5-mini"), 2.0, "{refusal}");
    }
}

#[tokio::test]
async fn when_every_deployment_refuses_the_sentence_names_the_cause() {
    // Arrange
    let primary = MockServer::start(|_, _| MockResponse::json(401, json!({"error": {"code": "401"}}))).await;
    let secondary =
        MockServer::start(|_, _| MockResponse::json(404, json!({"error": {"code": "DeploymentNotFound"}}))).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (first, body, _) = describe(&pool.app).await;
    let (again, body_again, _) = describe(&pool.app).await;

    // Assert: the last cause, then (both set aside, nothing called) the first to come back
    assert_eq!(first, 502);
    assert_eq!(
        failure_clause(detail(&body)),
        "the deployment or model `gpt-5-mini-2` was not found; check the deployment name and endpoint"
    );
    assert_eq!(again, 502);
    assert_eq!(
        failure_clause(detail(&body_again)),
        "the model API refused the API key (401); check the configured key"
    );
    assert_eq!((primary.count(), secondary.count()), (1, 1));
}

#[tokio::test]
async fn a_400_is_answered_at_once_and_never_failed_over() {
    // Arrange
    let primary = MockServer::start(|_, _| {
        MockResponse::json(
            400,
            json!({"error": {"code": "content_filter", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}),
        )
    })
    .await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (status, body, _) = describe(&pool.app).await;

    // Assert
    assert_eq!(status, 422);
    assert!(failure_clause(detail(&body)).starts_with("the content filter blocked"));
    assert_eq!((primary.count(), secondary.count()), (1, 0));
}

#[tokio::test]
async fn when_every_deployment_cools_the_request_waits_for_the_first_that_ends_within_its_budget() {
    // Arrange: both throttled once; the primary's cooldown ends first.
    let primary = MockServer::start(|_, index| if index == 0 { throttled(300) } else { ok() }).await;
    let secondary = MockServer::start(|_, index| if index == 0 { throttled(5_000) } else { ok() }).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (status, body, _) = describe(&pool.app).await;

    // Assert: primary (429), secondary (429), then the primary again after its 0.3 s
    assert_eq!((status, body), (200, json!({"description": "Routed."})));
    assert_eq!((primary.count(), secondary.count()), (2, 1));
    let arrivals = primary.requests();
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_millis(300),
        "the cooldown was not honoured: {gap:?}"
    );
}

#[tokio::test]
async fn when_no_cooldown_ends_within_the_budget_the_answer_is_503_at_once_without_an_upstream_call() {
    // Arrange
    let primary = MockServer::start(|_, _| throttled(60_000)).await;
    let secondary = MockServer::start(|_, _| throttled(45_000)).await;
    let pool = pool(&primary, &[&secondary], "", &[]).await;

    // Act
    let (first, _, _) = describe(&pool.app).await;
    let (status, body, retry_after) = describe(&pool.app).await;

    // Assert: the second request reached no deployment, and says when to come back
    assert_eq!(first, 503);
    assert_eq!((primary.count(), secondary.count()), (1, 1));
    assert_eq!(status, 503);
    let seconds: u64 = retry_after.expect("a Retry-After").parse().unwrap();
    assert!((44..=45).contains(&seconds), "{seconds}");
    let clause = failure_clause(detail(&body));
    assert_eq!(
        clause,
        format!("the model is receiving too many requests right now; try again in about {seconds} seconds")
    );
}

#[tokio::test]
async fn the_v1_api_puts_the_deployment_in_the_body_and_sends_no_api_version() {
    // Arrange: the drop-in deployment on v1 through the variable, a file entry on v1 through its key.
    let primary = MockServer::start(|_, _| throttled(30_000)).await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let file = config_file(&format!(
        "[[chat]]\nendpoint = \"{}\"\ndeployment = \"gpt-5-mini-sweden\"\napi_version = \"v1\"\n",
        secondary.url
    ));
    let mut all = azure_key_vars(&primary);
    all.extend(vars(&[
        ("AZURE_OPENAI_API_VERSION", "v1"),
        ("AI_SERVICE_CONFIG", file.path.as_str()),
    ]));
    let app = spawn_app(all).await;

    // Act
    let (status, _, _) = describe(&app).await;

    // Assert
    assert_eq!(status, 200);
    for (mock, deployment) in [(&primary, "gpt-5-mini"), (&secondary, "gpt-5-mini-sweden")] {
        let request = &mock.requests()[0];
        assert_eq!(request.path, "/openai/v1/chat/completions");
        assert!(request.query.is_empty(), "{:?}", request.query);
        let body = request.json();
        assert_eq!(body["model"], deployment);
        assert_eq!(body["messages"][1]["role"], "user");
    }
}

#[tokio::test]
async fn an_image_pool_from_the_file_alone_turns_images_on_and_uses_v1() {
    // Arrange: no image variable; one [[image]] entry on the v1 API.
    let chat = MockServer::start(|_, _| ok()).await;
    let images = MockServer::start(|_, _| {
        MockResponse::json(200, json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]}))
    })
    .await;
    let file = config_file(&format!(
        "[[image]]\nendpoint = \"{}\"\ndeployment = \"gpt-image-1\"\napi_version = \"v1\"\n",
        images.url
    ));
    let mut all = azure_key_vars(&chat);
    all.extend(vars(&[("AI_SERVICE_CONFIG", file.path.as_str())]));
    let app = spawn_app(all).await;

    // Act
    let health: Value = app.get("/health").await.json().await.unwrap();
    let (status, body) = status_and_json(
        app.post_image(&json!({"name": "Catnip Carnival", "description": "A feather wand."}))
            .await,
    )
    .await;

    // Assert
    assert_eq!(health["capabilities"], json!(["description", "image"]));
    assert_eq!(
        (status, body),
        (200, json!({"image": "data:image/png;base64,iVBORw0KGgo="}))
    );
    let request = &images.requests()[0];
    assert_eq!(request.path, "/openai/v1/images/generations");
    assert_eq!(request.json()["model"], "gpt-image-1");
    assert_eq!(request.json()["n"], 1);
    assert_eq!(chat.count(), 0);
}

#[tokio::test]
async fn an_entry_may_name_its_own_key_variable() {
    // Arrange
    let primary = MockServer::start(|_, _| throttled(30_000)).await;
    let secondary = MockServer::start(|_, _| ok()).await;
    let file = config_file(&format!(
        "[[chat]]\nendpoint = \"{}\"\ndeployment = \"gpt-5-mini\"\napi_key_env = \"SWEDEN_KEY\"\n",
        secondary.url
    ));
    let mut all = azure_key_vars(&primary);
    all.extend(vars(&[
        ("AI_SERVICE_CONFIG", file.path.as_str()),
        ("SWEDEN_KEY", "sweden-key-9876543210"),
    ]));
    let app = spawn_app(all).await;

    // Act
    let (status, _, _) = describe(&app).await;

    // Assert
    assert_eq!(status, 200);
    assert_eq!(primary.requests()[0].header("api-key"), Some(KEY));
    assert_eq!(secondary.requests()[0].header("api-key"), Some("sweden-key-9876543210"));
}

#[tokio::test]
async fn a_pool_of_one_behaves_as_a_single_deployment_always_did() {
    // Arrange: a 429 with a short hint, then an answer.
    let only = MockServer::start(|_, index| if index == 0 { throttled(200) } else { ok() }).await;
    let app = spawn_app(azure_key_vars(&only)).await;

    // Act
    let (status, _, _) = describe(&app).await;
    let metrics = metrics(&app).await;

    // Assert: waited out the hint and retried the same deployment; no failover counted
    assert_eq!(status, 200);
    assert_eq!(only.count(), 2);
    assert_eq!(failovers(&metrics), 0.0);
}
