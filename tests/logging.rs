//! JSON logs for collectors: one object a line, with the request id on every line of a request,
//! including the upstream call's deployment, status, attempt and duration.

#[path = "api/helpers.rs"]
mod helpers;

use ai_service::config::LogFormat;
use helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn every_log_line_of_a_request_is_json_and_carries_its_request_id() {
    // Arrange
    let captured = Captured::default();
    let writer = captured.clone();
    let _telemetry =
        ai_service::telemetry::init_with(LogFormat::Json, "info,ai_service=debug", move || writer.clone(), None);
    let azure = azure_openai_answering("Logged.").await;
    let app = spawn_app(azure_key_vars(&azure)).await;

    // Act
    let response = app
        .client
        .post(app.url("/generate/description"))
        .header("x-request-id", "req-7f3a")
        .json(&json!({"name": "Ball", "tags": ["dog"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-7f3a");

    // Assert
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}")))
        .collect();
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|line| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == "req-7f3a"))
        })
        .collect();
    let upstream = of_request
        .iter()
        .find(|line| line["message"] == "upstream attempt")
        .unwrap_or_else(|| panic!("no upstream line with the request id in:\n{text}"));
    assert_eq!(upstream["level"], "DEBUG");
    assert_eq!(upstream["status"], 200);
    assert_eq!(upstream["attempt"], 1);
    assert!(upstream["elapsed_ms"].is_u64());
    assert_eq!(upstream["outcome"], "success");
    assert_eq!(upstream["deployment"], "gpt-5-mini", "{upstream}");
    let finished = of_request
        .iter()
        .find(|line| line["message"] == "finished processing request");
    assert!(
        finished.is_some_and(|line| line["level"] == "INFO" && line["status"] == 200),
        "{text}"
    );
    // And the upstream received the same id.
    assert_eq!(azure.requests()[0].header("x-request-id"), Some("req-7f3a"));

    // A failure's detail ends with the short id that the request's log lines carry, at the
    // default level: a person can quote it, an operator can find the request with it.
    azure.respond_with(|_, _| MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after", "90"));
    let response = app.post_description(&json!({"name": "Ball", "tags": []})).await;
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 503);
    let short = &request_id[..8];
    assert!(detail(&body).ends_with(&format!(" (request {short}).")), "{body}");
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let failure_lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| {
            line["span"]["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(short))
        })
        .filter(|line| line["level"] == "INFO" || line["level"] == "WARN")
        .collect();
    assert!(
        failure_lines.iter().any(|line| line["message"] == "generation failed"),
        "no log line of the failed request carries {short}:\n{text}"
    );
}
