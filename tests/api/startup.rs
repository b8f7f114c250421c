//! The built binary as Kubernetes runs it: a cleared environment, a fresh working directory,
//! fail-fast configuration errors, the offline default, `.env`, JSON logs and SIGTERM.

use std::{path::Path, time::Duration};

use crate::helpers::{Binary, Running, free_port};
use serde_json::Value;

/// Starts the binary in `dir` with only PATH and `env` set.
fn start(dir: &Path, env: &[(&str, &str)]) -> Running {
    Binary::new(dir).vars(env).spawn()
}

/// Runs a configuration that must not start: exits non-zero, and returns the output.
async fn refused(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let done = start(dir.path(), env).wait_for_exit().await;
    let output = done.output();
    assert!(!done.status.success(), "started anyway: {output:#?}");
    output.join("\n")
}

#[tokio::test]
async fn a_partial_azure_configuration_exits_non_zero_naming_azure_openai_endpoint() {
    let output = refused(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ])
    .await;

    assert!(output.contains("AZURE_OPENAI_ENDPOINT"), "{output}");
}

#[tokio::test]
async fn an_endpoint_without_use_azure_openai_exits_non_zero_naming_use_azure_openai() {
    let output = refused(&[("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/")]).await;

    assert!(output.contains("USE_AZURE_OPENAI"), "{output}");
}

#[tokio::test]
async fn azure_without_a_key_or_entra_exits_non_zero_naming_azure_openai_api_key() {
    let output = refused(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/"),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ])
    .await;

    assert!(output.contains("AZURE_OPENAI_API_KEY"), "{output}");
}

#[tokio::test]
async fn with_nothing_configured_it_starts_offline_warns_and_exits_0_on_sigterm() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = start(dir.path(), &[("PORT", &port.to_string())]);

    // Act
    let health = service.wait_for_health(port).await;
    let done = service.terminate().await;
    let (status, output) = (done.status, done.output());

    // Assert
    assert_eq!(health["backend"], "offline", "{health}");
    assert_eq!(health["status"], "ok");
    assert!(status.success(), "{status}: {output:#?}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no model is configured") && l.contains("USE_AZURE_OPENAI")),
        "no warning about configuring a model: {output:#?}"
    );
}

#[tokio::test]
async fn the_startup_log_shows_that_a_key_is_set_but_never_the_key() {
    // Arrange: a valid key configuration; nothing is called upstream at startup
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let key = "sk-startup-secret-0123456789abcdef";
    let mut service = start(
        dir.path(),
        &[
            ("PORT", &port.to_string()),
            ("USE_AZURE_OPENAI", "True"),
            ("AZURE_OPENAI_ENDPOINT", "https://127.0.0.1:9/"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
            ("AZURE_OPENAI_API_KEY", key),
        ],
    );

    // Act
    let health = service.wait_for_health(port).await;
    let done = service.terminate().await;
    let (status, output) = (done.status, done.output());

    // Assert
    assert_eq!(health["backend"], "azure-openai");
    assert!(status.success(), "{status}: {output:#?}");
    let configuration = output
        .iter()
        .find(|l| l.contains("configuration:"))
        .unwrap_or_else(|| panic!("no configuration line: {output:#?}"));
    assert!(configuration.contains("api_key=set"), "{configuration}");
    assert!(
        configuration.contains("chat_pool=[gpt-5-mini@127.0.0.1:9(2024-12-01-preview)]"),
        "{configuration}"
    );
    assert!(
        output
            .iter()
            .all(|l| !l.contains(key) && !l.contains("0123456789abcdef")),
        "the key was logged: {output:#?}"
    );
}

#[tokio::test]
async fn a_dotenv_file_is_loaded_but_never_overrides_the_environment() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join(".env"),
        format!("APP_VERSION=from-dotenv\nPORT={port}\n"),
    )
    .unwrap();

    // Act: only .env
    let mut service = start(dir.path(), &[]);
    let from_dotenv = service.wait_for_health(port).await;
    let status = service.terminate().await.status;
    assert!(status.success());
    // Act: .env and the environment (PORT still comes from .env)
    let mut service = start(dir.path(), &[("APP_VERSION", "from-env")]);
    let from_env = service.wait_for_health(port).await;
    service.terminate().await;

    // Assert
    assert_eq!(from_dotenv["version"], "from-dotenv");
    assert_eq!(from_env["version"], "from-env");
}

#[tokio::test]
async fn log_format_json_prints_one_json_object_per_line() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = start(dir.path(), &[("PORT", &port.to_string()), ("LOG_FORMAT", "json")]);

    // Act
    service.wait_for_health(port).await;
    let done = service.terminate().await;

    // Assert
    assert!(done.status.success());
    let lines = done.stdout;
    assert!(lines.len() >= 3, "{lines:#?}");
    let mut messages = Vec::new();
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry.is_object(), "{line}");
        assert!(entry["timestamp"].is_string(), "no timestamp: {line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&entry["level"].as_str().unwrap_or_default()),
            "no level: {line}"
        );
        let message = entry["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no top-level message: {line}"));
        messages.push(message.to_owned());
    }
    assert!(
        messages.iter().any(|m| m.starts_with("configuration:")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m == "listening"), "{messages:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("no model is configured")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn empty_values_mean_unset_and_start_offline() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = start(
        dir.path(),
        &[
            ("PORT", &port.to_string()),
            ("USE_AZURE_OPENAI", ""),
            ("AZURE_OPENAI_ENDPOINT", ""),
            ("AZURE_OPENAI_API_KEY", ""),
            ("APP_VERSION", ""),
        ],
    );

    // Act
    let health = service.wait_for_health(port).await;
    let done = service.terminate().await;
    let (status, output) = (done.status, done.output());

    // Assert
    assert_eq!(health["backend"], "offline", "{health}");
    assert_eq!(health["version"], "0.1.0", "an empty APP_VERSION is unset");
    assert!(status.success(), "{output:#?}");
}

#[tokio::test]
async fn the_binary_answers_version_help_and_an_unknown_command() {
    let dir = tempfile::tempdir().unwrap();
    let run = |arg: &'static str| Binary::new(dir.path()).arg(arg).run();
    let version = run("--version").await;
    assert!(version.status.success());
    assert_eq!(
        version.stdout().trim(),
        format!("ai-service {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run("--help").await;
    assert!(help.status.success() && help.stdout().contains("healthcheck"));
    let unknown = run("bogus").await;
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = unknown.stderr();
    assert!(
        stderr.contains("unknown command `bogus`") && stderr.contains("usage:"),
        "{stderr}"
    );
}

/// Whether `GET {base}/health` answers 200 (a refused connection is `false`).
async fn health_answers(base: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match client.get(format!("{base}/health")).send().await {
        Ok(response) => response.status() == 200,
        Err(err) => {
            assert!(err.is_connect(), "not a refused connection: {err:?}");
            false
        }
    }
}

#[tokio::test]
async fn without_host_it_answers_on_ipv4_and_ipv6_loopback() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = start(dir.path(), &[("PORT", &port.to_string())]);
    service.wait_for_health(port).await;

    // Act
    let ipv4 = health_answers(&format!("http://127.0.0.1:{port}")).await;
    let ipv6 = health_answers(&format!("http://[::1]:{port}")).await;
    let output = service.terminate().await.output();

    // Assert
    assert!(ipv4 && ipv6, "IPv4 {ipv4}, IPv6 {ipv6}: {output:#?}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("listening") && l.contains(&format!("[::]:{port}"))),
        "{output:#?}"
    );
}

#[tokio::test]
async fn host_127_0_0_1_answers_on_ipv4_loopback_only() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = start(dir.path(), &[("PORT", &port.to_string()), ("HOST", "127.0.0.1")]);
    service.wait_for_health(port).await;

    // Act
    let ipv6 = health_answers(&format!("http://[::1]:{port}")).await;
    let output = service.terminate().await.output();

    // Assert
    assert!(!ipv6, "answered on [::1]: {output:#?}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("listening") && l.contains(&format!("127.0.0.1:{port}"))),
        "{output:#?}"
    );
}

#[tokio::test]
async fn a_host_that_is_not_an_ip_address_stops_startup_naming_host() {
    let output = refused(&[("HOST", "my-pod.local")]).await;

    assert!(
        output.contains("HOST must be an IP address") && output.contains("my-pod.local"),
        "{output}"
    );
}
