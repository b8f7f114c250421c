//! The built binary as Kubernetes runs it: a cleared environment, a fresh working directory,
//! fail-fast configuration errors, the offline default, `.env`, JSON logs and SIGTERM.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::helpers::free_port;
use serde_json::Value;

/// How long a process may take to start, fail or stop.
const PATIENCE: Duration = Duration::from_secs(5);

/// Removes ANSI colour sequences (`ESC [ … m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for inner in chars.by_ref() {
                if inner.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The service binary running as a child process, with its stdout and stderr collected line by line.
struct Service {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    })
}

impl Service {
    /// Starts the binary in `dir` with only PATH and `env` set.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ai-service"));
        command
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Waits at most [`PATIENCE`] for the process to exit, then returns its status and all its output.
    fn wait_for_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the process did not exit within {PATIENCE:?}; output so far: {:#?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (status, self.output())
    }

    /// Everything printed so far, stdout then stderr, without colours.
    fn output(&self) -> Vec<String> {
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        stdout.iter().chain(&stderr).map(|l| strip_ansi(l)).collect()
    }

    /// Polls `GET /health` until it answers (at most [`PATIENCE`]) and returns the body.
    async fn wait_for_health(&mut self, port: u16) -> Value {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("http://127.0.0.1:{port}/health")).send().await {
                assert_eq!(response.status().as_u16(), 200);
                return response.json().await.unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the service exited with {status} before answering: {:#?}",
                    self.output()
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "/health did not answer within {PATIENCE:?}: {:#?}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM, as Kubernetes does, and waits for the exit.
    fn terminate(&mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        self.wait_for_exit()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Only our own child, by its handle, if a failed assertion left it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a configuration that must not start: exits non-zero in time, and returns the output.
fn refused(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start(dir.path(), env);
    let started = Instant::now();
    let (status, output) = service.wait_for_exit();
    assert!(!status.success(), "started anyway: {output:#?}");
    assert!(started.elapsed() < PATIENCE);
    output.join("\n")
}

#[test]
fn a_partial_azure_configuration_exits_non_zero_naming_azure_openai_endpoint() {
    let output = refused(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ]);

    assert!(output.contains("AZURE_OPENAI_ENDPOINT"), "{output}");
}

#[test]
fn an_endpoint_without_use_azure_openai_exits_non_zero_naming_use_azure_openai() {
    let output = refused(&[("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/")]);

    assert!(output.contains("USE_AZURE_OPENAI"), "{output}");
}

#[test]
fn azure_without_a_key_or_entra_exits_non_zero_naming_azure_openai_api_key() {
    let output = refused(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/"),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ]);

    assert!(output.contains("AZURE_OPENAI_API_KEY"), "{output}");
}

#[tokio::test]
async fn with_nothing_configured_it_starts_offline_warns_and_exits_0_on_sigterm() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = Service::start(dir.path(), &[("PORT", &port.to_string())]);

    // Act
    let health = service.wait_for_health(port).await;
    let (status, output) = service.terminate();

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
    let mut service = Service::start(
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
    let (status, output) = service.terminate();

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
    let mut service = Service::start(dir.path(), &[]);
    let from_dotenv = service.wait_for_health(port).await;
    let (status, _) = service.terminate();
    assert!(status.success());
    // Act: .env and the environment (PORT still comes from .env)
    let mut service = Service::start(dir.path(), &[("APP_VERSION", "from-env")]);
    let from_env = service.wait_for_health(port).await;
    service.terminate();

    // Assert
    assert_eq!(from_dotenv["version"], "from-dotenv");
    assert_eq!(from_env["version"], "from-env");
}

#[tokio::test]
async fn log_format_json_prints_one_json_object_per_line() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = Service::start(dir.path(), &[("PORT", &port.to_string()), ("LOG_FORMAT", "json")]);

    // Act
    service.wait_for_health(port).await;
    let (status, _) = service.terminate();

    // Assert
    assert!(status.success());
    let lines = service.stdout.lock().unwrap().clone();
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
    let mut service = Service::start(
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
    let (status, output) = service.terminate();

    // Assert
    assert_eq!(health["backend"], "offline", "{health}");
    assert_eq!(health["version"], "0.1.0", "an empty APP_VERSION is unset");
    assert!(status.success(), "{output:#?}");
}

#[test]
fn the_binary_answers_version_help_and_an_unknown_command() {
    let binary = env!("CARGO_BIN_EXE_ai-service");
    let version = std::process::Command::new(binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("ai-service {}", env!("CARGO_PKG_VERSION"))
    );
    let help = std::process::Command::new(binary).arg("--help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("healthcheck"));
    let unknown = std::process::Command::new(binary).arg("bogus").output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
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
    let mut service = Service::start(dir.path(), &[("PORT", &port.to_string())]);
    service.wait_for_health(port).await;

    // Act
    let ipv4 = health_answers(&format!("http://127.0.0.1:{port}")).await;
    let ipv6 = health_answers(&format!("http://[::1]:{port}")).await;
    let (_, output) = service.terminate();

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
    let mut service = Service::start(dir.path(), &[("PORT", &port.to_string()), ("HOST", "127.0.0.1")]);
    service.wait_for_health(port).await;

    // Act
    let ipv6 = health_answers(&format!("http://[::1]:{port}")).await;
    let (_, output) = service.terminate();

    // Assert
    assert!(!ipv6, "answered on [::1]: {output:#?}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("listening") && l.contains(&format!("127.0.0.1:{port}"))),
        "{output:#?}"
    );
}

#[test]
fn a_host_that_is_not_an_ip_address_stops_startup_naming_host() {
    let output = refused(&[("HOST", "my-pod.local")]);

    assert!(
        output.contains("HOST must be an IP address") && output.contains("my-pod.local"),
        "{output}"
    );
}
