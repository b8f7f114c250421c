//! Graceful shutdown: stop accepting, finish what is in flight within the grace period, exit 0.
//!
//! In process through `serve`'s shutdown future, and with the real binary and a real SIGTERM.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::json;

/// Whether a TCP connection to `address` (host:port) is refused.
async fn refused(address: &str) -> bool {
    tokio::net::TcpStream::connect(address).await.is_err()
}

#[tokio::test]
async fn an_in_flight_request_completes_while_the_server_shuts_down() {
    // Arrange: the model takes 1 s.
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Finished after the signal.")).delayed(Duration::from_secs(1))
    })
    .await;
    let mut app = spawn_app(azure_key_vars(&azure)).await;
    let host_port = app.address.trim_start_matches("http://").to_owned();
    let (client, url) = (app.client.clone(), app.url("/generate/description"));
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"name": "Ball", "tags": ["dog"]}))
            .send()
            .await
    });
    wait_until(PATIENCE, "the request to reach the model", || azure.count() == 1).await;

    // Act
    let started = Instant::now();
    let server = app.begin_shutdown();

    // Assert: no new connections while draining (the listener closes once the signal is seen)...
    while !refused(&host_port).await {
        assert!(
            started.elapsed() < PATIENCE,
            "a new connection was still accepted {PATIENCE:?} into draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the listener closed only after the request was done"
    );
    // ...the request in flight completes...
    let response = in_flight.await.unwrap().expect("the in-flight request completes");
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, body),
        (200, json!({"description": "Finished after the signal."}))
    );
    // ...and the server task ends cleanly, well before the grace period (240 s).
    let result = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server stops once the request is done")
        .expect("the server task did not panic");
    assert!(result.is_ok(), "{result:?}");
    let drained = started.elapsed();
    eprintln!(
        "RESULT | in-process shutdown with a 1 s request in flight | 200 | {} ms | 1",
        drained.as_millis()
    );
    assert!(
        refused(&host_port).await,
        "a new connection was accepted after shutdown"
    );
    assert_eq!(azure.count(), 1);
}

/// The real binary trusting the test CA, with only the given variables, in an empty directory
/// (no `.env`), and the address it serves on once `/health` answers.
async fn start_binary(extra: &[(&str, String)]) -> (Running, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = Binary::new(dir.path())
        .trusting_test_ca()
        .vars(&[("PORT", port.to_string())])
        .vars(extra)
        .spawn();
    service.wait_for_health(port).await;
    (service, format!("http://127.0.0.1:{port}"), dir)
}

fn azure_env(azure: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("USE_AZURE_OPENAI", "True".to_owned()),
        ("AZURE_OPENAI_ENDPOINT", azure.url.clone()),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini".to_owned()),
        ("AZURE_OPENAI_API_KEY", "test-azure-api-key-0123456789".to_owned()),
    ]
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_0() {
    // Arrange: the real binary against a model that takes 1 s.
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Done before exit.")).delayed(Duration::from_secs(1))
    })
    .await;
    let env = azure_env(&azure);
    let (service, base, _dir) = start_binary(&env).await;
    let url = format!("{base}/generate/description");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"name": "Ball", "tags": ["dog"]}))
            .send()
            .await
    });
    wait_until(PATIENCE, "the request to reach the model", || azure.count() == 1).await;

    // Act
    let started = Instant::now();
    service.sigterm();

    // Assert
    let response = in_flight.await.unwrap().expect("the in-flight request completes");
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"description": "Done before exit."})),
        "{}",
        service.logs()
    );
    let done = service.wait_for_exit().await;
    let (exit, logs) = (done.status, done.output().join("\n"));
    let elapsed = started.elapsed();
    eprintln!(
        "RESULT | SIGTERM with a 1 s request in flight (binary) | 200, exit code {:?} | {} ms | 1",
        exit.code(),
        elapsed.as_millis()
    );
    assert!(exit.success(), "{exit}; log:\n{logs}");
    // Out once the request is done, not after the grace period (240 s); how fast is `make bench`'s business.
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains("test-azure-api-key"), "{logs}");
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/health"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sigterm_gives_up_on_a_request_that_outlasts_the_grace_period() {
    // Arrange: a 1 s grace period and a model that takes 30 s.
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Too late.")).delayed(Duration::from_secs(30))
    })
    .await;
    let mut env = azure_env(&azure);
    env.push(("SHUTDOWN_GRACE_SECONDS", "1".to_owned()));
    let (service, base, _dir) = start_binary(&env).await;
    let url = format!("{base}/generate/description");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"name": "Ball", "tags": []}))
            .send()
            .await
    });
    wait_until(PATIENCE, "the request to reach the model", || azure.count() == 1).await;

    // Act
    let started = Instant::now();
    service.sigterm();
    let done = service.wait_for_exit().await;
    let (exit, logs) = (done.status, done.output().join("\n"));
    let elapsed = started.elapsed();

    // Assert: out after the grace period, not after the model's 30 s (half of it is a bound no
    // scheduling delay reaches).
    eprintln!(
        "RESULT | SIGTERM, grace 1 s, request needs 30 s (binary) | exit code {:?} | {} ms | 1",
        exit.code(),
        elapsed.as_millis()
    );
    assert!(exit.success(), "{exit}; log:\n{logs}");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
    assert!(logs.contains("grace period over"), "{logs}");
    // The abandoned request is cut off, never answered 200.
    let abandoned = in_flight.await.unwrap();
    assert!(abandoned.as_ref().map_or(true, |r| r.status() != 200), "{abandoned:?}");
}
