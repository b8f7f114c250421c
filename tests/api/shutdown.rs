//! Graceful shutdown: stop accepting, finish what is in flight within the grace period, exit 0.
//!
//! In process through `serve`'s shutdown future, and with the real binary and a real SIGTERM.

#![allow(clippy::print_stderr)]

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::helpers::*;
use serde_json::json;

/// Polls `condition` every 10 ms for up to `within`.
async fn wait_until(within: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
    wait_until(Duration::from_secs(5), "the request to reach the model", || {
        azure.count() == 1
    })
    .await;

    // Act
    let started = Instant::now();
    let server = app.begin_shutdown();

    // Assert: no new connections while draining...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        refused(&host_port).await,
        "a new connection was accepted while draining"
    );
    // ...the request in flight completes...
    let response = in_flight.await.unwrap().expect("the in-flight request completes");
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, body),
        (200, json!({"description": "Finished after the signal."}))
    );
    // ...and the server task ends cleanly, well before the grace period (240 s).
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once the request is done")
        .expect("the server task did not panic");
    assert!(result.is_ok(), "{result:?}");
    let drained = started.elapsed();
    eprintln!(
        "RESULT | in-process shutdown with a 1 s request in flight | 200 | {} ms | 1",
        drained.as_millis()
    );
    assert!(drained < Duration::from_secs(3), "{drained:?}");
    assert!(
        refused(&host_port).await,
        "a new connection was accepted after shutdown"
    );
    assert_eq!(azure.count(), 1);
}

/// The real binary, with only the given variables, trusting the test CA, in an empty directory (no `.env`).
struct Binary {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("service.log");
        let port = free_port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-service"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("SSL_CERT_FILE", &test_ca().ca_file)
            .envs(extra.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .kill_on_drop(true);
        let child = command.spawn().expect("the binary starts");
        let binary = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        binary.wait_ready().await;
        binary
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the binary did not become ready; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the process did not exit within {within:?}; its log:\n{}", self.logs()),
        }
    }
}

fn azure_env(azure: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("USE_AZURE_OPENAI", "True".to_owned()),
        ("AZURE_OPENAI_ENDPOINT", azure.url.clone()),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini".to_owned()),
        ("AZURE_OPENAI_API_KEY", "test-azure-api-key-0123456789".to_owned()),
    ]
}

fn as_refs<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_0() {
    // Arrange: the real binary against a model that takes 1 s.
    let azure = MockServer::start(|_, _| {
        MockResponse::json(200, chat_completion("Done before exit.")).delayed(Duration::from_secs(1))
    })
    .await;
    let env = azure_env(&azure);
    let mut service = Binary::start(&as_refs(&env)).await;
    let url = format!("{}/generate/description", service.base);
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"name": "Ball", "tags": ["dog"]}))
            .send()
            .await
    });
    wait_until(Duration::from_secs(5), "the request to reach the model", || {
        azure.count() == 1
    })
    .await;

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
    let exit = service.exit_status(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    eprintln!(
        "RESULT | SIGTERM with a 1 s request in flight (binary) | 200, exit code {:?} | {} ms | 1",
        exit.code(),
        elapsed.as_millis()
    );
    assert!(exit.success(), "{exit}; log:\n{}", service.logs());
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let logs = service.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains("test-azure-api-key"), "{logs}");
    assert!(
        reqwest::Client::new()
            .get(format!("{}/health", service.base))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sigterm_gives_up_on_a_request_that_outlasts_the_grace_period() {
    // Arrange: a 1 s grace period and a model that takes 5 s.
    let azure =
        MockServer::start(|_, _| MockResponse::json(200, chat_completion("Too late.")).delayed(Duration::from_secs(5)))
            .await;
    let mut env = azure_env(&azure);
    env.push(("SHUTDOWN_GRACE_SECONDS", "1".to_owned()));
    let mut service = Binary::start(&as_refs(&env)).await;
    let url = format!("{}/generate/description", service.base);
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"name": "Ball", "tags": []}))
            .send()
            .await
    });
    wait_until(Duration::from_secs(5), "the request to reach the model", || {
        azure.count() == 1
    })
    .await;

    // Act
    let started = Instant::now();
    service.sigterm();
    let exit = service.exit_status(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();

    // Assert: out after the grace period, not after the model's 5 s.
    eprintln!(
        "RESULT | SIGTERM, grace 1 s, request needs 5 s (binary) | exit code {:?} | {} ms | 1",
        exit.code(),
        elapsed.as_millis()
    );
    assert!(exit.success(), "{exit}; log:\n{}", service.logs());
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
    assert!(service.logs().contains("grace period over"), "{}", service.logs());
    // The abandoned request is cut off, never answered 200.
    let abandoned = in_flight.await.unwrap();
    assert!(abandoned.as_ref().map_or(true, |r| r.status() != 200), "{abandoned:?}");
}
