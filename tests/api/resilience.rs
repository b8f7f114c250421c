//! Resilience: deadlines, retries, upstream garbage, inbound bad input and load shedding.
//!
//! Each test runs the real app on a random port against a fault-injecting HTTPS
//! mock, and asserts what the caller got (status, body, headers), how long it
//! took (with generous bounds), and what the upstream saw (the number of attempts).
//! Budgets are shrunk through the environment variables so the whole file runs in seconds.
//! Every case prints one `RESULT | case | status | ms | attempts` line (see `--nocapture`).

#![allow(clippy::print_stderr)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::helpers::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE_PATH: &str = "/openai/deployments/gpt-image-1/images/generations";
/// A string planted in every garbage body: it must never reach the caller.
const MARKER: &str = "UPSTREAM-BODY-MARKER-7c1e";

/// Azure OpenAI with a key, chat and image deployments, small budgets; `extra` overrides.
fn azure_vars(mock: &MockServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = azure_key_vars(mock);
    all.extend(vars(&[
        ("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME", "gpt-image-1"),
        ("DESCRIPTION_TIMEOUT_SECONDS", "5"),
        ("IMAGE_TIMEOUT_SECONDS", "5"),
        ("UPSTREAM_MAX_RETRIES", "2"),
    ]));
    // Later entries win when the settings are collected into a map.
    all.extend(vars(extra));
    all
}

/// Azure OpenAI pointing at an arbitrary URL (a closed port, a listener that hangs up).
fn azure_vars_at(url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vars(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_ENDPOINT", url),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
        ("AZURE_OPENAI_API_KEY", "test-azure-api-key-0123456789"),
        ("DESCRIPTION_TIMEOUT_SECONDS", "5"),
        ("UPSTREAM_MAX_RETRIES", "2"),
    ]);
    all.extend(vars(extra));
    all
}

/// A mock answering the `n`th request with `script[n]` (the last entry repeats), recording when each arrived.
async fn scripted(script: Vec<MockResponse>) -> (MockServer, Arc<Mutex<Vec<Instant>>>) {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let mock = MockServer::start(move |_, index| {
        seen.lock().unwrap().push(Instant::now());
        script[index.min(script.len() - 1)].clone()
    })
    .await;
    (mock, arrivals)
}

/// The gaps between consecutive upstream attempts.
fn gaps(arrivals: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let times = arrivals.lock().unwrap();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// What the caller got, and how long it took.
#[derive(Debug)]
struct Outcome {
    status: u16,
    retry_after: Option<String>,
    text: String,
    body: Value,
    elapsed: Duration,
    /// When the whole answer had arrived.
    finished: Instant,
}

impl Outcome {
    fn detail(&self) -> &str {
        self.body["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail sentence in {}", self.text))
    }

    /// A failed generation's clause, checked for the store-admin's shape (see `failure_clause`).
    fn failure(&self) -> &str {
        failure_clause(self.detail())
    }

    /// Prints the line of the report table.
    fn report(&self, case: &str, attempts: usize) -> &Self {
        eprintln!(
            "RESULT | {case} | {} | {} ms | {attempts}",
            self.status,
            self.elapsed.as_millis()
        );
        self
    }
}

async fn outcome(started: Instant, response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let elapsed = started.elapsed();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Outcome {
        status,
        retry_after,
        text,
        body,
        elapsed,
        finished: Instant::now(),
    }
}

async fn describe(app: &TestApp) -> Outcome {
    let started = Instant::now();
    let response = app
        .post_description(&json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]}))
        .await;
    outcome(started, response).await
}

async fn draw(app: &TestApp) -> Outcome {
    let started = Instant::now();
    let response = app
        .post_image(&json!({"name": "Catnip Carnival", "description": "A feather wand."}))
        .await;
    outcome(started, response).await
}

async fn send_raw(app: &TestApp, method: reqwest::Method, path: &str, content_type: &str, body: Vec<u8>) -> Outcome {
    let started = Instant::now();
    let response = app
        .client
        .request(method, app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent");
    outcome(started, response).await
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ok_completion() -> MockResponse {
    MockResponse::json(200, chat_completion("A whisker-twitching delight."))
}

// ---------------------------------------------------------------- 1. deadlines

#[tokio::test]
async fn a_hanging_upstream_answers_504_within_the_description_budget() {
    // Arrange: the model takes 30 s; the description budget is 1 s.
    let (azure, _) = scripted(vec![ok_completion().delayed(Duration::from_secs(30))]).await;
    let app = spawn_app(azure_vars(&azure, &[("DESCRIPTION_TIMEOUT_SECONDS", "1")])).await;

    // Act
    let got = describe(&app).await;

    // Assert
    got.report("description: upstream hangs (budget 1 s)", azure.count());
    assert_eq!(got.status, 504, "{}", got.text);
    assert!(got.failure().contains("in time"), "{}", got.failure());
    // Not the model's 30 s: half of it is a bound no scheduling delay reaches.
    assert!(
        secs(got.elapsed) >= 0.95 && secs(got.elapsed) < 15.0,
        "{:?}",
        got.elapsed
    );
    assert_eq!(azure.count(), 1, "a timeout is not retried: the budget is spent");
}

#[tokio::test]
async fn the_image_route_has_its_own_budget() {
    // Arrange: descriptions get 1 s, images 2 s; the image model hangs.
    let azure = MockServer::start(|request, _| {
        assert_eq!(request.path, IMAGE_PATH);
        MockResponse::json(200, json!({"data": [{"b64_json": "iVBORw0KGgo="}]})).delayed(Duration::from_secs(30))
    })
    .await;
    let app = spawn_app(azure_vars(
        &azure,
        &[("DESCRIPTION_TIMEOUT_SECONDS", "1"), ("IMAGE_TIMEOUT_SECONDS", "2")],
    ))
    .await;

    // Act
    let got = draw(&app).await;

    // Assert
    got.report("image: upstream hangs (budget 2 s)", azure.count());
    assert_eq!(got.status, 504, "{}", got.text);
    assert!(got.failure().contains("in time"), "{}", got.failure());
    assert!(
        secs(got.elapsed) >= 1.95 && secs(got.elapsed) < 15.0,
        "the image budget (2 s), not the description budget (1 s) nor the model's 30 s: {:?}",
        got.elapsed
    );
    assert_eq!(azure.count(), 1);
}

/// `ai_service_<name>{<labels>} <value>` from `/metrics`.
async fn metric(app: &TestApp, name_and_labels: &str) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_answered_502_quickly() {
    // Arrange: an endpoint where nothing listens; 1 retry.
    let url = format!("https://127.0.0.1:{}/", free_port());
    let app = spawn_app(azure_vars_at(&url, &[("UPSTREAM_MAX_RETRIES", "1")])).await;

    // Act
    let got = describe(&app).await;

    // Assert: 3 attempts (counted by the service's own metrics), then a 502 with the cause.
    let attempts = metric(
        &app,
        r#"ai_service_upstream_requests_total{backend="azure-openai",status="connect_error"}"#,
    )
    .await;
    got.report("connection refused (1 retry)", attempts as usize);
    assert_eq!(got.status, 502, "{}", got.text);
    assert!(
        got.failure().starts_with("could not reach the model API"),
        "{}",
        got.failure()
    );
    assert!(!got.text.contains("test-azure-api-key"), "{}", got.text);
    assert_eq!(attempts, 2, "first attempt + UPSTREAM_MAX_RETRIES=1");
    assert_eq!(
        metric(&app, r#"ai_service_upstream_retries_total{backend="azure-openai"}"#).await,
        1
    );
    // One backoff of at least 0.25 s (the attempts are counted above; speed is `make bench`'s).
    assert!(secs(got.elapsed) >= 0.2, "{:?}", got.elapsed);
}

#[tokio::test]
async fn a_connection_dropped_by_the_upstream_is_retried_then_answered_502() {
    // Arrange: a server that accepts each connection and hangs up at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let hang_up = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let app = spawn_app(azure_vars_at(&url, &[("UPSTREAM_MAX_RETRIES", "1")])).await;

    // Act
    let got = describe(&app).await;

    // Assert
    let attempts = accepted.load(Ordering::SeqCst);
    got.report("connection dropped by upstream (1 retry)", attempts);
    assert_eq!(got.status, 502, "{}", got.text);
    assert!(
        got.failure().contains("could not reach the model API"),
        "{}",
        got.failure()
    );
    assert_eq!(attempts, 2);
    hang_up.abort();
}

// ---------------------------------------------------------------- 2. retries

#[tokio::test]
async fn a_429_with_retry_after_ms_is_retried_after_that_many_milliseconds() {
    // Arrange: `retry-after-ms` must win over `retry-after` (10 s would outlast the 5 s budget).
    let (azure, arrivals) = scripted(vec![
        MockResponse::json(429, json!({"error": {"code": "429", "message": "Rate limit"}}))
            .header("retry-after-ms", "100")
            .header("retry-after", "10"),
        ok_completion(),
    ])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    // Act
    let got = describe(&app).await;

    // Assert
    got.report("429 retry-after-ms: 100, then 200", azure.count());
    assert_eq!(
        (got.status, &got.body),
        (200, &json!({"description": "A whisker-twitching delight."}))
    );
    assert_eq!(azure.count(), 2);
    let gap = gaps(&arrivals)[0];
    assert!(
        // Not the `retry-after` of 10 s: half of it is a bound no scheduling delay reaches.
        gap >= Duration::from_millis(95) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_in_seconds_is_honoured() {
    let (azure, arrivals) = scripted(vec![
        MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after", "1"),
        ok_completion(),
    ])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = describe(&app).await;

    got.report("429 retry-after: 1, then 200", azure.count());
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(azure.count(), 2);
    assert!(got.elapsed >= Duration::from_millis(990), "{:?}", got.elapsed);
    assert!(
        gaps(&arrivals)[0] >= Duration::from_millis(990),
        "{:?}",
        gaps(&arrivals)
    );
}

#[tokio::test]
async fn a_429_with_retry_after_as_an_http_date_is_honoured() {
    // Arrange: the date is computed when the 429 is sent; HTTP dates have whole seconds.
    let azure = MockServer::start(|_, index| {
        if index == 0 {
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            MockResponse::json(429, json!({"error": {"code": "429"}}))
                .header("retry-after", &httpdate::fmt_http_date(at))
        } else {
            ok_completion()
        }
    })
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = describe(&app).await;

    got.report("429 retry-after: <HTTP date in 2 s>, then 200", azure.count());
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(azure.count(), 2);
    // Truncated to the second: the wait is between 1 and 2 s.
    assert!(secs(got.elapsed) >= 0.9, "{:?}", got.elapsed);
}

#[tokio::test]
async fn a_503_then_200_answers_200_after_two_attempts() {
    let (azure, _) = scripted(vec![
        MockResponse::json(503, json!({"error": {"code": "ServiceUnavailable"}})),
        ok_completion(),
    ])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = describe(&app).await;

    got.report("503, then 200", azure.count());
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(azure.count(), 2);
    // One backoff of at least 0.25 s.
    assert!(secs(got.elapsed) >= 0.2, "{:?}", got.elapsed);
}

#[tokio::test]
async fn persistent_500s_are_retried_exactly_max_retries_times_then_502() {
    let (azure, _) = scripted(vec![MockResponse::json(
        500,
        json!({"error": {"code": "InternalServerError", "message": MARKER}}),
    )])
    .await;
    let app = spawn_app(azure_vars(&azure, &[("UPSTREAM_MAX_RETRIES", "2")])).await;

    let got = describe(&app).await;

    got.report("500 x3 (UPSTREAM_MAX_RETRIES=2)", azure.count());
    assert_eq!(got.status, 502, "{}", got.text);
    assert_eq!(got.failure(), "the model API answered with status 500; try again later");
    assert_eq!(azure.count(), 3, "1 attempt + 2 retries");
    assert!(!got.text.contains(MARKER));
    assert!(secs(got.elapsed) >= 0.7, "{:?}", got.elapsed);
}

#[tokio::test]
async fn with_no_retries_configured_a_500_is_tried_once() {
    let (azure, _) = scripted(vec![MockResponse::json(500, json!({}))]).await;
    let app = spawn_app(azure_vars(&azure, &[("UPSTREAM_MAX_RETRIES", "0")])).await;

    let got = describe(&app).await;

    got.report("500 (UPSTREAM_MAX_RETRIES=0)", azure.count());
    assert_eq!(got.status, 502);
    assert_eq!(azure.count(), 1, "no retry, so no backoff");
}

#[tokio::test]
async fn a_400_is_never_retried() {
    let (azure, _) = scripted(vec![MockResponse::json(
        400,
        json!({"error": {"code": "invalid_request_error", "message": "Invalid size for this model."}}),
    )])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let description = describe(&app).await;
    let image = draw(&app).await;

    description.report("description: 400", 1);
    image.report("image: 400", 1);
    assert_eq!(description.status, 502, "{}", description.text);
    assert_eq!(
        description.failure(),
        "the model rejected the request: Invalid size for this model"
    );
    assert_eq!((image.status, image.failure()), (400, "Invalid size for this model"));
    assert_eq!(azure.count(), 2, "one attempt each");
}

#[tokio::test]
async fn a_401_is_never_retried() {
    let (azure, _) = scripted(vec![MockResponse::json(
        401,
        json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}),
    )])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = describe(&app).await;

    got.report("401", azure.count());
    assert_eq!(got.status, 502);
    assert!(got.detail().contains("refused the API key (401)"), "{}", got.detail());
    assert_eq!(azure.count(), 1);
}

#[tokio::test]
async fn a_429_that_outlasts_the_budget_answers_503_at_once_with_retry_after() {
    // Arrange: the upstream asks for 30 s; the budget is 5 s.
    let (azure, _) = scripted(vec![
        MockResponse::json(429, json!({"error": {"code": "429", "message": MARKER}})).header("retry-after", "30"),
    ])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    // Act
    let got = describe(&app).await;

    // Assert
    got.report("429 retry-after: 30 (budget 5 s)", azure.count());
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.retry_after.as_deref(), Some("30"));
    assert_eq!(
        got.failure(),
        "the model is receiving too many requests right now; try again in about 30 seconds"
    );
    assert!(!got.text.contains(MARKER));
    assert_eq!(azure.count(), 1, "no attempt the budget cannot wait for");
    // Answered at once, not after the 30 s hint: half of it is a bound no scheduling delay reaches.
    assert!(secs(got.elapsed) < 15.0, "answered at once: {:?}", got.elapsed);
}

#[tokio::test]
async fn a_persistent_429_answers_503_with_retry_after_after_the_retries() {
    // A hint longer than any backoff this early (at most 0.5 s, then 1 s), so the gaps show
    // which one set the pace without an upper bound on time.
    let (azure, arrivals) = scripted(vec![
        MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after-ms", "1500"),
    ])
    .await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = draw(&app).await;

    got.report("image: 429 retry-after-ms: 1500 x3", azure.count());
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.retry_after.as_deref(), Some("2"), "rounded up to a whole second");
    assert!(
        got.failure().starts_with("the model is receiving too many requests"),
        "{}",
        got.failure()
    );
    assert_eq!(azure.count(), 3);
    // The hint, not the backoff, sets the pace.
    for gap in gaps(&arrivals) {
        assert!(gap >= Duration::from_millis(1500), "{gap:?}");
    }
}

#[tokio::test]
async fn an_absurd_retry_after_is_not_a_panic() {
    // `Duration::from_secs_f64(1e300)` would panic: upstream headers are input like any other.
    for (name, value) in [("retry-after-ms", "1e300"), ("retry-after", "99999999999999999999")] {
        let (azure, _) = scripted(vec![MockResponse::json(429, json!({})).header(name, value)]).await;
        let app = spawn_app(azure_vars(&azure, &[])).await;

        let got = describe(&app).await;

        got.report(&format!("429 {name}: {value}"), azure.count());
        assert_eq!(got.status, 503, "{}", got.text);
        assert_eq!(got.retry_after.as_deref(), Some("86400"), "capped at a day");
        assert_eq!(azure.count(), 1);
    }
}

// ---------------------------------------------------------------- 3. upstream garbage

#[tokio::test]
async fn garbage_from_the_chat_model_answers_502_without_echoing_it() {
    let html = format!("<html><body><h1>{MARKER}</h1></body></html>");
    let cases: Vec<(&str, MockResponse, usize)> = vec![
        (
            "malformed JSON",
            MockResponse::raw(
                200,
                "application/json",
                format!(r#"{{"choices": [{{"{MARKER}"#).as_bytes(),
            ),
            1,
        ),
        ("missing choices", MockResponse::json(200, json!({"id": MARKER})), 1),
        (
            "choices: []",
            MockResponse::json(200, json!({"id": MARKER, "choices": []})),
            1,
        ),
        (
            "message content null",
            MockResponse::json(
                200,
                json!({"id": MARKER, "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": null}}]}),
            ),
            1,
        ),
        ("message content empty", MockResponse::json(200, chat_completion("")), 1),
        (
            "message content blank",
            MockResponse::json(200, chat_completion("  \n\t ")),
            1,
        ),
        (
            "choice without message",
            MockResponse::json(200, json!({"id": MARKER, "choices": [{"finish_reason": "stop"}]})),
            1,
        ),
        (
            "content of the wrong type",
            MockResponse::json(200, json!({"choices": [{"message": {"content": [MARKER]}}]})),
            1,
        ),
        ("JSON null", MockResponse::raw(200, "application/json", b"null"), 1),
        ("empty body", MockResponse::raw(200, "application/json", b""), 1),
        (
            "HTML page, status 200",
            MockResponse::raw(200, "text/html", html.as_bytes()),
            1,
        ),
        (
            "HTML page, status 502",
            MockResponse::raw(502, "text/html", html.as_bytes()),
            3,
        ),
        (
            "HTML page, status 404",
            MockResponse::raw(404, "text/html", html.as_bytes()),
            1,
        ),
    ];
    for (case, response, attempts) in cases {
        // Arrange
        let (azure, _) = scripted(vec![response]).await;
        let app = spawn_app(azure_vars(&azure, &[])).await;

        // Act
        let got = describe(&app).await;

        // Assert
        got.report(&format!("description: {case}"), azure.count());
        assert_eq!(got.status, 502, "{case}: {}", got.text);
        // A sentence of ours, in the store-admin's shape, whatever the garbage.
        assert!(!got.failure().is_empty(), "{case}");
        assert!(
            !got.text.contains(MARKER),
            "{case}: the upstream body leaked: {}",
            got.text
        );
        assert_eq!(azure.count(), attempts, "{case}");
        // The service is still up.
        assert_eq!(app.get("/health").await.status(), 200);
    }
}

#[tokio::test]
async fn garbage_from_the_image_model_answers_502_without_echoing_it() {
    let cases: Vec<(&str, MockResponse)> = vec![
        (
            "malformed JSON",
            MockResponse::raw(200, "application/json", format!("{{\"data\": [{MARKER}").as_bytes()),
        ),
        (
            "missing data",
            MockResponse::json(200, json!({"created": 1, "id": MARKER})),
        ),
        ("data: []", MockResponse::json(200, json!({"created": 1, "data": []}))),
        (
            "neither b64_json nor url",
            MockResponse::json(200, json!({"data": [{"revised_prompt": MARKER}]})),
        ),
        (
            "b64_json null and url empty",
            MockResponse::json(200, json!({"data": [{"b64_json": null, "url": ""}]})),
        ),
        (
            "HTML page, status 200",
            MockResponse::raw(200, "text/html", format!("<html>{MARKER}</html>").as_bytes()),
        ),
    ];
    for (case, response) in cases {
        let (azure, _) = scripted(vec![response]).await;
        let app = spawn_app(azure_vars(&azure, &[])).await;

        let got = draw(&app).await;

        got.report(&format!("image: {case}"), azure.count());
        assert_eq!(got.status, 502, "{case}: {}", got.text);
        // A sentence of ours, in the store-admin's shape, whatever the garbage.
        assert!(!got.failure().is_empty(), "{case}");
        assert!(!got.text.contains(MARKER), "{case}: {}", got.text);
        assert_eq!(azure.count(), 1, "{case}");
    }
}

#[tokio::test]
async fn an_oversized_upstream_answer_is_refused_not_buffered() {
    // Arrange: 17 MiB, over the 16 MiB cap on upstream bodies.
    let huge = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, "A".repeat(17 * 1024 * 1024));
    let (azure, _) = scripted(vec![MockResponse::raw(200, "application/json", huge.as_bytes())]).await;
    let app = spawn_app(azure_vars(&azure, &[])).await;

    let got = draw(&app).await;

    got.report("image: 17 MiB answer", azure.count());
    assert_eq!(got.status, 502, "{}", got.text);
    assert_eq!(
        got.failure(),
        "the model API returned an answer that could not be used; try again"
    );
    assert_eq!(azure.count(), 1, "not retried");
}

// ---------------------------------------------------------------- 4. inbound bad input

/// An app whose upstream must never be called.
async fn guarded_app() -> (MockServer, TestApp) {
    let azure = MockServer::start(|_, _| MockResponse::json(200, chat_completion("should not be called"))).await;
    let app = spawn_app(azure_vars(&azure, &[])).await;
    (azure, app)
}

#[tokio::test]
async fn a_1_mb_name_is_refused_with_413() {
    let (azure, app) = guarded_app().await;
    let body = serde_json::to_vec(&json!({"name": "x".repeat(1024 * 1024), "tags": []})).unwrap();

    let got = send_raw(
        &app,
        reqwest::Method::POST,
        "/generate/description",
        "application/json",
        body,
    )
    .await;

    got.report("1 MB name", azure.count());
    assert_eq!(got.status, 413, "{}", got.text);
    assert_eq!(got.detail(), "The request body is larger than 65536 bytes.");
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_60_kb_name_within_the_body_limit_is_refused_with_422() {
    let (azure, app) = guarded_app().await;

    let started = Instant::now();
    let response = app
        .post_description(&json!({"name": "x".repeat(60 * 1024), "tags": []}))
        .await;
    let got = outcome(started, response).await;

    got.report("60 KB name", azure.count());
    assert_eq!(got.status, 422, "{}", got.text);
    let issue = &got.body["detail"][0];
    assert_eq!(issue["type"], "string_too_long");
    assert_eq!(issue["loc"], json!(["body", "name"]));
    assert!(
        got.text.len() < 2048,
        "the input is echoed shortened: {} bytes",
        got.text.len()
    );
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn ten_thousand_tags_are_refused() {
    let (azure, app) = guarded_app().await;
    let tags: Vec<&str> = vec!["t"; 10_000];

    let started = Instant::now();
    let response = app.post_description(&json!({"name": "Ball", "tags": tags})).await;
    let got = outcome(started, response).await;

    got.report("10,000 tags", azure.count());
    assert!(got.status == 413 || got.status == 422, "{}", got.text);
    assert!(
        got.text.len() < 2048,
        "the list is not echoed: {} bytes",
        got.text.len()
    );
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn malformed_bodies_are_422_with_the_list_form() {
    let (azure, app) = guarded_app().await;
    let nested = "[".repeat(60_000);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "invalid UTF-8",
            "/generate/description",
            b"{\"name\": \"\xff\xfe\xfd\", \"tags\": []}".to_vec(),
        ),
        (
            "invalid UTF-8 (image)",
            "/generate/image",
            b"{\"name\": \"\xc3\x28\"}".to_vec(),
        ),
        (
            "truncated JSON",
            "/generate/description",
            b"{\"name\": \"Ball\", \"tags\": [".to_vec(),
        ),
        ("empty body", "/generate/description", Vec::new()),
        ("JSON null", "/generate/image", b"null".to_vec()),
        ("60,000 nested arrays", "/generate/description", nested.into_bytes()),
        ("NUL bytes", "/generate/description", vec![0; 1000]),
    ];
    for (case, path, body) in cases {
        let got = send_raw(&app, reqwest::Method::POST, path, "application/json", body).await;
        got.report(case, azure.count());
        assert_eq!(got.status, 422, "{case}: {}", got.text);
        assert!(got.body["detail"].is_array(), "{case}: {}", got.text);
        assert!(got.body["detail"][0]["type"].is_string(), "{case}: {}", got.text);
    }
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn the_wrong_content_type_is_415() {
    let (azure, app) = guarded_app().await;
    let body = br#"{"name": "Ball", "tags": []}"#.to_vec();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let got = send_raw(
            &app,
            reqwest::Method::POST,
            "/generate/description",
            content_type,
            body.clone(),
        )
        .await;
        got.report(&format!("content-type {content_type}"), azure.count());
        assert_eq!(got.status, 415, "{content_type}: {}", got.text);
        assert!(got.detail().contains("application/json"), "{}", got.detail());
    }
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_404_and_405_with_a_detail() {
    let (azure, app) = guarded_app().await;
    let cases = [
        (reqwest::Method::GET, "/nope", 404, "Not Found"),
        (reqwest::Method::POST, "/generate/poem", 404, "Not Found"),
        (reqwest::Method::GET, "/generate/description", 405, "Method Not Allowed"),
        (reqwest::Method::PUT, "/generate/image", 405, "Method Not Allowed"),
        (reqwest::Method::DELETE, "/health", 405, "Method Not Allowed"),
    ];
    for (method, path, status, detail) in cases {
        let case = format!("{method} {path}");
        let got = send_raw(&app, method, path, "application/json", b"{}".to_vec()).await;
        got.report(&case, azure.count());
        assert_eq!((got.status, got.detail()), (status, detail), "{case}");
    }
    assert_eq!(azure.count(), 0);
}

/// Sends a chunked body (no content-length) of `total` bytes over a raw connection; returns status and body.
async fn post_chunked(app: &TestApp, path: &str, total: usize) -> (u16, String) {
    let address = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    // Write in the background: the service may answer (and stop reading) before the body ends.
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 8192];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            writer.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            writer.write_all(&chunk[..n]).await?;
            writer.write_all(b"\r\n").await?;
            sent += n;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    writing.abort();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413() {
    let (azure, app) = guarded_app().await;

    let started = Instant::now();
    let (status, body) = post_chunked(&app, "/generate/description", 1024 * 1024).await;
    let elapsed = started.elapsed();

    eprintln!(
        "RESULT | chunked 1 MB body, no content-length | {status} | {} ms | {}",
        elapsed.as_millis(),
        azure.count()
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains(r#""detail":"The request body is larger than 65536 bytes.""#),
        "{body}"
    );
    assert_eq!(azure.count(), 0);
}

// ---------------------------------------------------------------- 5. load

/// About 2 MB of base64, like a 1024x1024 PNG from gpt-image.
fn big_image() -> Value {
    json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo".repeat(2_000_000 / 11)}]})
}

#[tokio::test]
async fn a_flood_of_image_requests_is_shed_with_503_and_health_stays_fast() {
    // Arrange: 2 image slots; the model takes 3 s and answers ~2 MB.
    let image = big_image();
    let azure =
        MockServer::start(move |_, _| MockResponse::json(200, image.clone()).delayed(Duration::from_secs(3))).await;
    let app = Arc::new(spawn_app(azure_vars(&azure, &[("MAX_CONCURRENT_IMAGES", "2")])).await);

    // Act: 10 at once, then /health while the 2 slots are busy.
    let flood: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { draw(&app).await })
        })
        .collect();
    wait_until(PATIENCE, "the 2 admitted requests to reach the model", || {
        azure.count() == 2
    })
    .await;
    let started = Instant::now();
    let health = app.get("/health").await;
    let health_status = health.status().as_u16();
    let _ = health.bytes().await;
    let health_answered = Instant::now();
    let health_elapsed = health_answered - started;
    let mut outcomes = Vec::new();
    for task in flood {
        outcomes.push(task.await.unwrap());
    }

    // Assert
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let shed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    ok[0].report("image flood: admitted (2 slots, 10 requests)", ok.len());
    shed.iter()
        .max_by_key(|o| o.elapsed)
        .unwrap()
        .report("image flood: shed (slowest of 8)", shed.len());
    eprintln!(
        "RESULT | /health while the image slots are full | {health_status} | {} ms | 0",
        health_elapsed.as_millis()
    );
    assert_eq!((ok.len(), shed.len()), (2, 8), "{outcomes:?}");
    let first_admitted_done = ok.iter().map(|o| o.finished).min().unwrap();
    for o in &ok {
        assert!(
            o.body["image"]
                .as_str()
                .unwrap()
                .starts_with("data:image/png;base64,iVBORw0KGgo")
        );
        assert!(o.text.len() > 2_000_000);
    }
    for o in &shed {
        assert_eq!(o.retry_after.as_deref(), Some("1"));
        assert_eq!(
            o.failure(),
            "the service is busy with other generations; try again in a moment"
        );
        // Shed at once: before an admitted request (3 s at the model) could free a slot.
        assert!(
            o.finished < first_admitted_done,
            "shed only after a slot freed: {:?}",
            o.elapsed
        );
    }
    assert_eq!(azure.count(), 2, "only the admitted requests reached the model");
    assert_eq!(health_status, 200);
    // /health did not wait for a slot: it answered while both were still busy.
    assert!(health_answered < first_admitted_done, "{health_elapsed:?}");

    // The slots are free again (and the model fast now).
    azure.respond_with(|_, _| MockResponse::json(200, json!({"data": [{"b64_json": "iVBORw0KGgo="}]})));
    assert_eq!(draw(&app).await.status, 200);
}

#[tokio::test]
async fn a_flood_of_description_requests_is_shed_with_503() {
    let (azure, _) = scripted(vec![ok_completion().delayed(Duration::from_secs(1))]).await;
    let app = Arc::new(spawn_app(azure_vars(&azure, &[("MAX_CONCURRENT_DESCRIPTIONS", "3")])).await);

    let flood: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { describe(&app).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in flood {
        outcomes.push(task.await.unwrap());
    }

    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let shed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 503).collect();
    shed[0].report("description flood: shed (3 slots, 10 requests)", shed.len());
    assert_eq!((ok, shed.len()), (3, 7), "{outcomes:?}");
    assert!(shed.iter().all(|o| o.retry_after.as_deref() == Some("1")));
    assert_eq!(azure.count(), 3);
}
