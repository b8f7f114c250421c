//! `ai-service check`: the troubleshooting command a person runs with `kubectl exec`. It gets one
//! token through the real credential, calls the chat deployment once, and says what worked,
//! never printing the token or the federated assertion.

#![allow(clippy::print_stderr)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use ai_service::{Dependencies, commands, config::Settings};
use common::*;
use serde_json::json;

const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b";
const ASSERTION: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlLWFjY291bnQifQ.c2lnbmF0dXJlLWNoZWNr";
const ISSUED: &str = "eyJ0eXAiOiJKV1QifQ.check-issued-access-token.c2lnbmF0dXJl";
const CLI_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.check-az-cli-token.c2lnbmF0dXJl";

/// The mock Entra token endpoint: issues [`ISSUED`] for a valid exchange of the file's content.
fn entra_issuing(token_file: PathBuf) -> impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static {
    move |request, _| {
        let form = request.form();
        let assertion = std::fs::read_to_string(&token_file).unwrap_or_default();
        let valid = request.path == format!("/{TENANT}/oauth2/v2.0/token")
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            && form.get("client_assertion").map(String::as_str) == Some(assertion.trim())
            && form.get("client_id").map(String::as_str) == Some(CLIENT)
            && form.get("scope").map(String::as_str) == Some(SCOPE);
        if valid {
            MockResponse::json(
                200,
                json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": ISSUED}),
            )
        } else {
            MockResponse::json(
                400,
                json!({"error": "invalid_request", "error_description": "AADSTS900144: mock Entra refused the request", "error_codes": [900144]}),
            )
        }
    }
}

/// Azure OpenAI accepting only the issued token.
fn azure_accepting(token: &'static str) -> impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static {
    move |request, _| {
        if request.header("authorization") == Some(format!("Bearer {token}").as_str()) {
            MockResponse::json(200, chat_completion("OK"))
        } else {
            MockResponse::json(401, json!({"error": {"code": "401", "message": "Unauthorized."}}))
        }
    }
}

fn no_matching_federated_credential() -> MockResponse {
    MockResponse::json(
        400,
        json!({
            "error": "invalid_request",
            "error_description": "AADSTS70021: No matching federated identity record found for presented assertion.",
            "error_codes": [70021]
        }),
    )
}

struct World {
    entra: MockServer,
    azure: MockServer,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, ASSERTION).unwrap();
        let entra = MockServer::start(entra_issuing(token_file.clone())).await;
        let azure = MockServer::start(azure_accepting(ISSUED)).await;
        Self {
            entra,
            azure,
            token_file,
            _dir: dir,
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        let mut all = azure_entra_vars(&self.azure, &[]);
        all.extend(workload_identity_vars(
            &self.entra.url,
            TENANT,
            CLIENT,
            &self.token_file,
        ));
        all
    }
}

/// Runs `check` in process; returns its verdict and what it printed.
async fn run_check(vars: Vec<(String, String)>, deps: Dependencies) -> (bool, String) {
    let settings = Settings::from_source(vars.into_iter().collect()).expect("valid settings");
    let mut out = Vec::new();
    let ok = commands::check(&settings, deps, &mut out).await;
    (ok, String::from_utf8(out).unwrap())
}

fn assert_mentions(text: &str, phrases: &[&str]) {
    for phrase in phrases {
        assert!(text.contains(phrase), "expected {phrase:?} in:\n{text}");
    }
}

fn assert_no_secret(text: &str) {
    for secret in [ASSERTION, ISSUED, CLI_TOKEN, "eyJ"] {
        assert!(!text.contains(secret), "a secret leaked into:\n{text}");
    }
}

#[tokio::test]
async fn check_prints_the_credential_the_expiry_and_the_chat_status_but_never_the_token() {
    // Arrange
    let world = World::start().await;

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    eprintln!("{output}");
    assert!(ok, "{output}");
    assert_mentions(
        &output,
        &[
            "configuration: ok",
            "credentials: WorkloadIdentityCredential",
            &format!(
                "federated token file: {} (present, {} bytes",
                world.token_file.display(),
                ASSERTION.len()
            ),
            "token: ok from WorkloadIdentityCredential (expires ",
            "in 59 min",
            "chat: ok, Azure OpenAI deployment `gpt-5-mini`",
        ],
    );
    assert_no_secret(&output);
    assert_eq!(world.entra.count(), 1);
    assert_eq!(world.azure.count(), 1);
}

#[tokio::test]
async fn check_fails_with_the_reason_when_the_token_endpoint_refuses() {
    // Arrange
    let world = World::start().await;
    world.entra.respond_with(|_, _| no_matching_federated_credential());

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "token: FAILED (WorkloadIdentityCredential)",
            "AADSTS70021",
            "federated credential",
        ],
    );
    assert_no_secret(&output);
    assert_eq!(world.azure.count(), 0, "no chat call without a token");
}

#[tokio::test]
async fn check_fails_with_the_reason_when_the_token_file_is_missing() {
    // Arrange
    let world = World::start().await;
    std::fs::remove_file(&world.token_file).unwrap();

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            &format!("federated token file: {} (missing)", world.token_file.display()),
            "token: FAILED (WorkloadIdentityCredential)",
            "does not exist",
        ],
    );
    assert_eq!(world.entra.count(), 0);
}

#[tokio::test]
async fn check_fails_naming_the_role_when_azure_openai_answers_403() {
    // Arrange
    let world = World::start().await;
    world.azure.respond_with(|_, _| {
        MockResponse::json(
            403,
            json!({"error": {"code": "PermissionDenied", "message": "The principal lacks the required data action."}}),
        )
    });

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "token: ok from WorkloadIdentityCredential",
            "chat: FAILED, Azure OpenAI deployment `gpt-5-mini`",
            "answered HTTP 403",
            "Cognitive Services OpenAI User",
        ],
    );
    assert_no_secret(&output);
}

#[tokio::test]
async fn check_with_the_azure_cli_names_the_cli_as_the_credential_that_worked() {
    // Arrange
    let azure = MockServer::start(azure_accepting(CLI_TOKEN)).await;
    let az = FakeAz::logged_in(CLI_TOKEN);
    let deps = Dependencies {
        executor: Some(az.executor()),
        ..test_dependencies()
    };
    let vars = vars(&[
        ("USE_AZURE_OPENAI", "True"),
        ("USE_AZURE_AD", "True"),
        ("AZURE_OPENAI_ENDPOINT", &azure.url),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ]);

    // Act
    let (ok, output) = run_check(vars, deps).await;

    // Assert
    assert!(ok, "{output}");
    assert_mentions(
        &output,
        &[
            "credentials: AzureCliCredential, AzureDeveloperCliCredential",
            "token: ok from AzureCliCredential",
            "chat: ok",
        ],
    );
    assert_no_secret(&output);
    assert_eq!(az.calls().len(), 1);
}

/// Runs the real binary's `check` with only `vars`, `PATH` and the test CA in its environment.
async fn run_binary_check(vars: &[(String, String)], cwd: &Path) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-service"))
        .arg("check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SSL_CERT_FILE", &test_ca().ca_file)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // No stray .env file: the binary reads one from its working directory.
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_check_binary_exits_0_naming_the_credential_and_never_printing_the_token() {
    // Arrange
    let world = World::start().await;
    let cwd = tempfile::tempdir().unwrap();

    // Act
    let (code, stdout, stderr) = run_binary_check(&world.vars(), cwd.path()).await;

    // Assert
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_mentions(&stdout, &["token: ok from WorkloadIdentityCredential", "chat: ok"]);
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    assert_eq!(world.entra.count(), 1);
    assert_eq!(world.azure.count(), 1);
}

#[tokio::test]
async fn the_check_binary_exits_non_zero_with_the_reason_when_entra_refuses() {
    // Arrange
    let world = World::start().await;
    world.entra.respond_with(|_, _| no_matching_federated_credential());
    let cwd = tempfile::tempdir().unwrap();

    // Act
    let (code, stdout, stderr) = run_binary_check(&world.vars(), cwd.path()).await;

    // Assert
    assert_ne!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(code.is_some(), "killed by a signal");
    assert_mentions(&stdout, &["token: FAILED (WorkloadIdentityCredential)", "AADSTS70021"]);
    assert_no_secret(&stdout);
    assert_no_secret(&stderr);
    assert_eq!(world.azure.count(), 0);
}

#[tokio::test]
async fn the_check_binary_trusting_another_ca_says_the_certificate_is_not_trusted() {
    // Arrange: the same world, but SSL_CERT_FILE holds some other CA, so the mocks are not trusted
    let world = World::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let other_ca = cwd.path().join("other-ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let mut vars = world.vars();
    vars.push(("SSL_CERT_FILE".to_owned(), other_ca.to_str().unwrap().to_owned()));

    // Act
    let (code, stdout, stderr) = run_binary_check(&vars, cwd.path()).await;

    // Assert: SSL_CERT_FILE is what the binary trusts, and an untrusted endpoint is named as such
    eprintln!("{stdout}");
    assert_ne!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_mentions(
        &stdout,
        &[
            "token: FAILED (WorkloadIdentityCredential)",
            "certificate is not trusted",
            "SSL_CERT_FILE",
        ],
    );
    assert_eq!(world.entra.count(), 0, "no TLS session, no request");
}
