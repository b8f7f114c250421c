//! Passwordless authentication end to end: the real credentials (workload identity through
//! `ClientAssertionCredential`, the Azure CLI) against a mock Microsoft Entra token endpoint,
//! a fake `az` and a mock Azure OpenAI that accepts only the tokens the mock Entra issued.

#![allow(clippy::print_stderr)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::*;
use ai_service::{Dependencies, build_services, config::Settings};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};

const SCOPE: &str = ENTRA_SCOPE;
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b";
/// Two projected service-account tokens, as the kubelet writes them (JWT-shaped, fake).
const ASSERTION_A: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJpc3MiOiJodHRwczovL29pZGMudGVzdC8iLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlLWFjY291bnQiLCJqdGkiOiJBIn0.c2lnbmF0dXJlLW9mLWFzc2VydGlvbi1B";
const ASSERTION_B: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJpc3MiOiJodHRwczovL29pZGMudGVzdC8iLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlLWFjY291bnQiLCJqdGkiOiJCIn0.c2lnbmF0dXJlLW9mLWFzc2VydGlvbi1C";
const CLI_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.az-cli-access-token.c2lnbmF0dXJl";
const DESCRIPTION: &str = "A whisker-twitching delight.";

// ---------------------------------------------------------------------------------------------
// Mocks: Microsoft Entra ID and Azure OpenAI sharing the ledger of issued tokens
// ---------------------------------------------------------------------------------------------

/// The workload-identity world: a token file, the mock Entra and the mock Azure OpenAI.
struct WorkloadIdentity {
    entra: MockServer,
    azure: MockServer,
    /// What the mock Entra validates and issues; its ledger is what Azure OpenAI accepts.
    mock: MockEntra,
    ledger: Ledger,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkloadIdentity {
    async fn start(expires_in: u64) -> Self {
        Self::start_with(expires_in, Duration::ZERO).await
    }

    async fn start_with(expires_in: u64, entra_delay: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("azure-identity-token");
        write_atomically(&token_file, ASSERTION_A);
        let mock = MockEntra::new(TENANT, CLIENT, &token_file)
            .expires_in(expires_in)
            .delayed(entra_delay);
        let entra = mock.start().await;
        let azure = MockServer::start(azure_openai_accepting(mock.ledger.clone(), DESCRIPTION)).await;
        Self {
            entra,
            azure,
            ledger: mock.ledger.clone(),
            mock,
            token_file,
            _dir: dir,
        }
    }

    /// The variables the AKS webhook injects, pointing at the mocks.
    fn vars(&self) -> Vec<(String, String)> {
        self.vars_with_authority(&self.entra.url)
    }

    fn vars_with_authority(&self, authority: &str) -> Vec<(String, String)> {
        let mut all = azure_entra_vars(&self.azure, &[]);
        all.extend(workload_identity_vars(authority, TENANT, CLIENT, &self.token_file));
        all
    }

    /// Every secret of this world: assertions and issued tokens.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![ASSERTION_A.to_owned(), ASSERTION_B.to_owned()];
        secrets.extend(self.ledger.secrets());
        secrets
    }

    fn assertions_seen(&self) -> Vec<String> {
        self.entra
            .requests()
            .iter()
            .map(|r| r.form().get("client_assertion").cloned().unwrap_or_default())
            .collect()
    }
}

/// Replaces the file the way the kubelet does (write aside, then rename), so a reader sees old or new.
fn write_atomically(path: &Path, content: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn product() -> Value {
    json!({"name": "Catnip Carnival", "tags": ["cat", "toy"]})
}

/// Status and body text of one description request.
async fn describe(app: &TestApp) -> (u16, String) {
    let response = app.post_description(&product()).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

fn detail_of(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    eprintln!("DETAIL: {}", detail(&value));
    detail(&value).to_owned()
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "a secret leaked into: {text}");
    }
    // Fragments too: no JWT-shaped value and no assertion signature in any answer.
    assert!(!text.contains("eyJ"), "a JWT-shaped value leaked into: {text}");
}

fn assert_mentions(text: &str, phrases: &[&str]) {
    for phrase in phrases {
        assert!(text.contains(phrase), "expected {phrase:?} in: {text}");
    }
}

/// Requests descriptions until one answers 200; returns how long recovery took.
async fn until_recovered(app: &TestApp, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = describe(app).await;
        if status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not recovered within {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `total` description requests, at most `concurrency` at a time; returns the statuses.
async fn describe_many(app: &TestApp, total: usize, concurrency: usize) -> Vec<u16> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for _ in 0..total {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (client, url) = (app.client.clone(), app.url("/generate/description"));
        tasks.spawn(async move {
            let status = client
                .post(url)
                .json(&product())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            drop(permit);
            status
        });
    }
    tasks.join_all().await
}

// ---------------------------------------------------------------------------------------------
// 1. The real workload identity credential
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn workload_identity_exchanges_the_token_file_at_entra_and_calls_azure_openai_with_the_issued_token() {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert: the caller
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"description":"A whisker-twitching delight."}"#)
    );
    // Assert: Entra saw one valid exchange of the file's content
    let exchanges = world.entra.requests();
    assert_eq!(exchanges.len(), 1);
    assert_eq!(world.mock.exchange_problem(&exchanges[0]), None);
    let form = exchanges[0].form();
    assert_eq!(form["client_assertion"], ASSERTION_A);
    assert_eq!(form["client_id"], CLIENT);
    assert_eq!(form["scope"], SCOPE);
    assert_eq!(exchanges[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    // Assert: Azure OpenAI got the issued token as a bearer, and no key
    let calls = world.azure.requests();
    assert_eq!(calls.len(), 1);
    let issued = &world.ledger.grants()[0].token;
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {issued}").as_str())
    );
    assert_eq!(calls[0].header("api-key"), None);
    assert_eq!(calls[0].path, "/openai/deployments/gpt-5-mini/chat/completions");
}

#[tokio::test]
async fn an_authority_host_without_its_trailing_slash_reaches_the_same_token_endpoint() {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    let app = spawn_app(world.vars_with_authority(world.entra.url.trim_end_matches('/'))).await;

    // Act
    let (status, _) = describe(&app).await;

    // Assert
    assert_eq!(status, 200);
    assert_eq!(world.entra.requests()[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
}

#[test]
fn the_chain_names_the_credential_in_use_for_the_startup_log() {
    // Arrange
    let entra = |extra: &[(&str, &str)]| {
        let mut all = vars(&[
            ("USE_AZURE_OPENAI", "True"),
            ("USE_AZURE_AD", "True"),
            ("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
        ]);
        all.extend(vars(extra));
        Settings::from_source(all.into_iter().collect()).unwrap()
    };
    let workload = entra(&[
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", TENANT),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
    ]);
    let developer = entra(&[]);
    let managed = entra(&[("AZURE_USE_MANAGED_IDENTITY", "true"), ("AZURE_CLIENT_ID", CLIENT)]);

    // Act
    let names = |settings: &Settings| build_services(settings, Dependencies::default()).unwrap().credentials;

    // Assert
    assert_eq!(names(&workload), ["WorkloadIdentityCredential"]);
    assert_eq!(names(&developer), ["AzureCliCredential", "AzureDeveloperCliCredential"]);
    assert_eq!(names(&managed), ["ManagedIdentityCredential"]);
}

// ---------------------------------------------------------------------------------------------
// 2. One token, shared
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_at_concurrency_64_share_one_token_request() {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    let app = spawn_app(world.vars()).await;

    // Act
    let started = Instant::now();
    let statuses = describe_many(&app, 1000, 64).await;
    let elapsed = started.elapsed();

    // Assert
    let ok = statuses.iter().filter(|s| **s == 200).count();
    eprintln!(
        "MEASURED: 1000 description requests at concurrency 64 -> {ok} answered 200, {} token request(s) at Entra, {} Azure OpenAI calls, in {elapsed:.2?}",
        world.entra.count(),
        world.azure.count()
    );
    assert_eq!(
        ok,
        1000,
        "statuses other than 200: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(world.entra.count(), 1);
    assert_eq!(world.azure.count(), 1000);
    assert_eq!(world.ledger.rejected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_cli_fallback_runs_az_once_for_a_hundred_concurrent_requests() {
    // Arrange
    let azure = azure_openai_answering(DESCRIPTION).await;
    let az = FakeAz::logged_in(CLI_TOKEN);
    let app = spawn_app_with(
        cli_vars(&azure, None),
        Dependencies {
            executor: Some(az.executor()),
            ..test_dependencies()
        },
    )
    .await;

    // Act
    let statuses = describe_many(&app, 100, 100).await;

    // Assert
    eprintln!(
        "MEASURED: 100 concurrent description requests with the Azure CLI fallback -> {} az call(s)",
        az.calls().len()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        az.calls(),
        [format!("account get-access-token -o json --scope {SCOPE}")]
    );
    let requests = azure.requests();
    assert_eq!(requests.len(), 100);
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {CLI_TOKEN}").as_str()))
    );
}

#[tokio::test]
async fn the_azure_cli_fallback_passes_the_tenant_when_azure_tenant_id_is_set() {
    // Arrange
    let azure = azure_openai_answering(DESCRIPTION).await;
    let az = FakeAz::logged_in(CLI_TOKEN);
    let app = spawn_app_with(
        cli_vars(&azure, Some(TENANT)),
        Dependencies {
            executor: Some(az.executor()),
            ..test_dependencies()
        },
    )
    .await;

    // Act
    let (status, _) = describe(&app).await;

    // Assert
    assert_eq!(status, 200);
    assert_eq!(
        az.calls(),
        [format!(
            "account get-access-token -o json --scope {SCOPE} --tenant {TENANT}"
        )]
    );
}

fn cli_vars(azure: &MockServer, tenant: Option<&str>) -> Vec<(String, String)> {
    let mut all = vars(&[
        ("USE_AZURE_OPENAI", "True"),
        ("USE_AZURE_AD", "True"),
        ("AZURE_OPENAI_ENDPOINT", &azure.url),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ]);
    if let Some(tenant) = tenant {
        all.extend(vars(&[("AZURE_TENANT_ID", tenant)]));
    }
    all
}

// ---------------------------------------------------------------------------------------------
// 3. Refresh ahead of expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_token_is_refreshed_before_it_expires_so_no_request_presents_an_expired_one() {
    // Arrange
    let world = WorkloadIdentity::start(2).await;
    let app = Arc::new(spawn_app(world.vars()).await);

    // Act: four callers, one request every 50 ms each, for 4.5 s (two token lifetimes and more)
    let mut callers = JoinSet::new();
    for _ in 0..4 {
        let app = app.clone();
        callers.spawn(async move {
            let mut statuses = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(4500) {
                statuses.push(describe(&app).await.0);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        });
    }
    let statuses: Vec<u16> = callers.join_all().await.into_iter().flatten().collect();

    // Assert: every request carried a live token
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(world.ledger.rejected(), 0);
    // Assert: each token was replaced before it expired, once per lifetime or so
    let grants = world.ledger.grants();
    eprintln!(
        "MEASURED: {} requests over 4.5 s with 2 s tokens -> {} token requests, refreshed {:?} after issue",
        statuses.len(),
        grants.len(),
        grants
            .windows(2)
            .map(|w| w[1].issued_at - w[0].issued_at)
            .collect::<Vec<_>>()
    );
    assert!((3..=5).contains(&grants.len()), "{} token requests", grants.len());
    for pair in grants.windows(2) {
        assert!(
            pair[1].issued_at < pair[0].expires_at,
            "a token was refreshed only after it expired"
        );
    }
}

#[tokio::test]
async fn a_retry_after_longer_than_the_token_s_life_still_sends_a_live_token() {
    // Arrange: 2 s tokens, and a first answer that asks to wait 3 s: the token taken for the
    // first attempt has expired by the second.
    let world = WorkloadIdentity::start(2).await;
    let accepting = azure_openai_accepting(world.ledger.clone(), DESCRIPTION);
    world.azure.respond_with(move |request, index| {
        if index == 0 {
            MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after", "3")
        } else {
            accepting(request, index)
        }
    });
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert: the second attempt took a fresh token
    assert_eq!(status, 200, "{body}");
    assert_eq!(world.azure.count(), 2);
    assert_eq!(world.ledger.rejected(), 0, "an expired token reached Azure OpenAI");
    let tokens: Vec<String> = world
        .azure
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(world.ledger.grants().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_during_a_refresh_share_one_acquisition_and_keep_using_the_valid_token() {
    // Arrange: 4 s tokens from an Entra that takes 400 ms to answer. The cache refreshes 3 s after
    // issue and hands out the current token until 3.5 s while the refresh runs.
    let world = WorkloadIdentity::start_with(4, Duration::from_millis(400)).await;
    let app = spawn_app(world.vars()).await;
    assert_eq!(describe(&app).await.0, 200);

    // Act: 48 callers arrive 3.1 s after the token was issued (it arrived 0.4 s after issue)
    // The sleep is the subject: the token must age into its refresh window.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    let statuses = describe_many(&app, 48, 48).await;

    // Assert: one shared refresh, no expired token presented
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(world.entra.count(), 2, "one acquisition at start, one shared refresh");
    assert_eq!(world.ledger.rejected(), 0);
    // Assert: while the one refresh ran, the other callers did not wait for it
    let grants = world.ledger.grants();
    let carrying = |grant: &Grant| {
        world.azure.requests()[1..]
            .iter()
            .filter(|r| r.header("authorization") == Some(format!("Bearer {}", grant.token).as_str()))
            .count()
    };
    let (old, new) = (carrying(&grants[0]), carrying(&grants[1]));
    eprintln!("MEASURED: during a refresh, {old} callers used the still-valid token, {new} the refreshed one");
    assert!(old >= 1 && new >= 1, "old token: {old}, refreshed token: {new}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_arriving_after_expiry_wait_for_and_share_one_acquisition() {
    // Arrange: 1 s tokens from an Entra that takes 300 ms to answer
    let world = WorkloadIdentity::start_with(1, Duration::from_millis(300)).await;
    let app = spawn_app(world.vars()).await;
    assert_eq!(describe(&app).await.0, 200);

    // Act: 48 callers arrive after the token has expired
    // The sleep is the subject: the token's 1 s lifetime must pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let statuses = describe_many(&app, 48, 48).await;

    // Assert
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(world.entra.count(), 2);
    assert_eq!(world.ledger.rejected(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Rotation of the federated token file
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rotated_token_file_is_sent_at_the_next_exchange_within_seconds() {
    // Arrange
    let world = WorkloadIdentity::start(1).await;
    let app = spawn_app(world.vars()).await;
    assert_eq!(describe(&app).await.0, 200);
    assert_eq!(world.assertions_seen(), [ASSERTION_A]);

    // Act: the kubelet rotates the file; requests keep coming
    let before = world.assertions_seen().len();
    write_atomically(&world.token_file, ASSERTION_B);
    let rotated = Instant::now();
    let mut statuses = Vec::new();
    while !world.assertions_seen().iter().any(|a| a == ASSERTION_B) {
        assert!(rotated.elapsed() < PATIENCE, "the new assertion was never sent");
        statuses.push(describe(&app).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pickup = rotated.elapsed();

    // Assert
    eprintln!("MEASURED: rotated token file picked up by the token endpoint after {pickup:.2?}");
    // At the next exchange: no exchange after the rotation sent the old assertion.
    assert!(
        world.assertions_seen()[before..].iter().all(|a| a == ASSERTION_B),
        "{:?}",
        world.assertions_seen()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(world.assertions_seen().last().map(String::as_str), Some(ASSERTION_B));
    assert_eq!(world.ledger.rejected(), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Failures: explained, bounded, recovered from
// ---------------------------------------------------------------------------------------------

/// Forwards every connection on `listener` to `target`, bytes as they are (TLS passes through).
async fn forward(listener: tokio::net::TcpListener, target: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn an_unreachable_token_endpoint_fails_in_seconds_with_503_and_recovers_when_it_is_back() {
    // Arrange: nothing listens on the authority's port
    let world = WorkloadIdentity::start(3600).await;
    let port = free_port();
    let app = spawn_app(world.vars_with_authority(&format!("https://localhost:{port}/"))).await;

    // Act
    let started = Instant::now();
    let (status, body) = describe(&app).await;
    let time_to_fail = started.elapsed();
    // Failed, not waited out: well inside the description budget (40 s) it would otherwise spend.

    // Assert
    eprintln!("MEASURED: time to fail on a dead token endpoint (connection refused): {time_to_fail:.2?}");
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &[
            "Workload identity",
            "could not reach",
            "the connection was refused",
            "AZURE_AUTHORITY_HOST",
        ],
    );
    assert!(time_to_fail < Duration::from_secs(20), "{time_to_fail:?}");
    assert_no_secret(&body, &world.secrets());
    assert_eq!(world.azure.count(), 0);

    // Act: the endpoint comes back on the same port
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(forward(listener, world.entra.address));
    let recovery = until_recovered(&app, PATIENCE).await;

    // Assert
    eprintln!("MEASURED: recovered {recovery:.2?} after the token endpoint came back");
    assert_eq!(world.entra.count(), 1);
}

/// Entra refuses with `status`/`error`/AADSTS`code`; the caller gets a 503 sentence naming it,
/// and the service recovers once Entra accepts again.
async fn entra_refusal_is_explained_and_recovered_from(
    status: u16,
    error: &'static str,
    code: u32,
    description: &'static str,
    expected: &[&str],
) {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    world
        .entra
        .respond_with(move |_, _| entra_error(status, error, code, description));
    let app = spawn_app(world.vars()).await;

    // Act
    let (answered, body) = describe(&app).await;

    // Assert
    assert_eq!(answered, 503, "{body}");
    let sentence = detail_of(&body);
    assert!(
        failure_clause(&sentence).starts_with("Workload identity: "),
        "{sentence}"
    );
    assert_mentions(&sentence, expected);
    assert_no_secret(&body, &world.secrets());
    assert_eq!(world.entra.count(), 1, "a 4xx from Entra is not retried");
    assert_eq!(world.azure.count(), 0);

    // Act: the identity is fixed
    world.entra.respond_with(world.mock.responder());
    until_recovered(&app, PATIENCE).await;

    // Assert
    assert_eq!(world.ledger.rejected(), 0);
}

#[tokio::test]
async fn an_unknown_client_id_aadsts700016_names_the_client_id_to_check() {
    entra_refusal_is_explained_and_recovered_from(
        400,
        "unauthorized_client",
        700016,
        "Application with identifier '5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b' was not found in the directory 'Contoso'. This can happen if the application has not been installed by the administrator of the tenant.",
        &["AADSTS700016", CLIENT, TENANT, "AZURE_CLIENT_ID", "azure.workload.identity/client-id"],
    )
    .await;
}

#[tokio::test]
async fn an_invalid_client_401_with_aadsts700016_is_explained_the_same_way() {
    entra_refusal_is_explained_and_recovered_from(
        401,
        "invalid_client",
        700016,
        "Application with identifier '5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b' was not found in the directory 'Contoso'.",
        &["AADSTS700016", "AZURE_CLIENT_ID"],
    )
    .await;
}

#[tokio::test]
async fn no_matching_federated_credential_aadsts70021_names_issuer_and_subject() {
    entra_refusal_is_explained_and_recovered_from(
        400,
        "invalid_request",
        70021,
        "No matching federated identity record found for presented assertion. Assertion Issuer: 'https://oidc.test/'. Assertion Subject: 'system:serviceaccount:default:ai-service-account'. Assertion Audience: 'api://AzureADTokenExchange'.",
        &["AADSTS70021", "federated credential", "OIDC issuer URL", "system:serviceaccount:<namespace>:<service account>"],
    )
    .await;
}

#[tokio::test]
async fn an_expired_assertion_aadsts700024_names_the_token_file_and_recovers_after_rotation() {
    // Arrange: Entra refuses the stale assertion A and accepts the rotated B
    let world = WorkloadIdentity::start(3600).await;
    let valid = world.mock.responder();
    world.entra.respond_with(move |request, index| {
        if request.form().get("client_assertion").map(String::as_str) == Some(ASSERTION_A) {
            entra_error(
                400,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range. Current time: 2025-01-02T00:00:00Z, assertion valid from 2025-01-01T00:00:00Z, expiry time of assertion 2025-01-01T01:00:00Z.",
            )
        } else {
            valid(request, index)
        }
    });
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &[
            "Workload identity",
            "AADSTS700024",
            "valid time range",
            world.token_file.to_str().unwrap(),
        ],
    );
    assert_no_secret(&body, &world.secrets());

    // Act: the kubelet rotates the file
    write_atomically(&world.token_file, ASSERTION_B);
    until_recovered(&app, PATIENCE).await;

    // Assert
    assert_eq!(world.assertions_seen(), [ASSERTION_A, ASSERTION_B]);
}

#[tokio::test]
async fn a_missing_token_file_says_so_and_recovers_once_the_file_appears() {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    std::fs::remove_file(&world.token_file).unwrap();
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &[
            "Workload identity",
            world.token_file.to_str().unwrap(),
            "does not exist",
            "AZURE_FEDERATED_TOKEN_FILE",
            "azure.workload.identity/use",
        ],
    );
    assert_eq!(world.entra.count(), 0, "nothing to exchange, nothing sent");

    // Act: the webhook mounts the token
    write_atomically(&world.token_file, ASSERTION_A);
    until_recovered(&app, PATIENCE).await;

    // Assert
    assert_eq!(world.assertions_seen(), [ASSERTION_A]);
}

#[tokio::test]
async fn an_unreadable_token_file_says_why_and_recovers_once_it_is_a_readable_file() {
    // Arrange: a directory where the file should be (root reads any file, so permissions cannot fail here)
    let world = WorkloadIdentity::start(3600).await;
    std::fs::remove_file(&world.token_file).unwrap();
    std::fs::create_dir(&world.token_file).unwrap();
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &[
            "Workload identity",
            world.token_file.to_str().unwrap(),
            "could not be read (Is a directory)",
        ],
    );
    assert_eq!(world.entra.count(), 0);

    // Act
    std::fs::remove_dir(&world.token_file).unwrap();
    write_atomically(&world.token_file, ASSERTION_A);
    until_recovered(&app, PATIENCE).await;
}

#[tokio::test]
async fn an_empty_token_file_is_reported_as_empty() {
    // Arrange
    let world = WorkloadIdentity::start(3600).await;
    write_atomically(&world.token_file, "\n");
    let app = spawn_app(world.vars()).await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(&detail_of(&body), &["Workload identity", "is empty"]);
    assert_eq!(world.entra.count(), 0);
}

/// Rewrites the fake `az` in place, keeping its call log.
fn replace_az_script(az: &FakeAz, body: &str) {
    let script = format!("#!/bin/sh\necho \"$@\" >> '{}'\n{body}\n", az.log.display());
    let path = az.dir.path().join("az");
    let aside = az.dir.path().join("az.new");
    std::fs::write(&aside, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&aside, &path).unwrap();
}

fn az_logged_in_body(token: &str) -> String {
    format!(
        "EXP=$(( $(date +%s) + 3600 ))\nprintf '{{\"accessToken\":\"{token}\",\"expiresOn\":\"2030-01-01 00:00:00.000000\",\"expires_on\":%s,\"subscription\":\"sub\",\"tenant\":\"tenant\",\"tokenType\":\"Bearer\"}}' \"$EXP\""
    )
}

#[tokio::test]
async fn without_az_on_path_the_sentence_says_az_was_not_found_and_recovers_once_installed() {
    // Arrange: a PATH with the system's tools but no az (nor azd)
    let azure = azure_openai_answering(DESCRIPTION).await;
    let az = FakeAz::logged_in(CLI_TOKEN);
    std::fs::remove_file(az.dir.path().join("az")).unwrap();
    let app = spawn_app_with(
        cli_vars(&azure, None),
        Dependencies {
            executor: Some(az.executor()),
            ..test_dependencies()
        },
    )
    .await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &[
            "Azure CLI: `az` was not found on PATH",
            "az login",
            "Azure Developer CLI",
        ],
    );
    assert_no_secret(&body, &[CLI_TOKEN.to_owned()]);
    assert_eq!(azure.count(), 0);

    // Act: the developer installs the Azure CLI
    replace_az_script(&az, &az_logged_in_body(CLI_TOKEN));
    until_recovered(&app, PATIENCE).await;

    // Assert
    assert_eq!(az.calls().len(), 1);
}

#[tokio::test]
async fn az_not_logged_in_says_run_az_login_and_recovers_after_the_login() {
    // Arrange
    let azure = azure_openai_answering(DESCRIPTION).await;
    let az = FakeAz::new("echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1");
    let app = spawn_app_with(
        cli_vars(&azure, Some(TENANT)),
        Dependencies {
            executor: Some(az.executor()),
            ..test_dependencies()
        },
    )
    .await;

    // Act
    let (status, body) = describe(&app).await;

    // Assert
    assert_eq!(status, 503, "{body}");
    assert_mentions(
        &detail_of(&body),
        &["Azure CLI: not logged in", &format!("az login --tenant {TENANT}")],
    );
    assert_eq!(azure.count(), 0);

    // Act: the developer logs in
    replace_az_script(&az, &az_logged_in_body(CLI_TOKEN));
    until_recovered(&app, PATIENCE).await;

    // Assert
    assert_eq!(
        az.calls().last().map(String::as_str),
        Some(format!("account get-access-token -o json --scope {SCOPE} --tenant {TENANT}").as_str())
    );
}

#[tokio::test]
async fn azure_openai_refusing_a_valid_token_answers_502_naming_the_role_and_recovers_once_granted() {
    for refusal in [401, 403] {
        // Arrange: Entra issues a token, but the identity has no role on the resource
        let world = WorkloadIdentity::start(3600).await;
        world.azure.respond_with(move |_, _| {
            MockResponse::json(
                refusal,
                json!({"error": {"code": "PermissionDenied", "message": "The principal lacks the required data action Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action."}}),
            )
        });
        let app = spawn_app(world.vars()).await;

        // Act
        let (status, body) = describe(&app).await;

        // Assert
        assert_eq!(status, 502, "{body}");
        assert_mentions(
            &detail_of(&body),
            &[
                &format!("({refusal})"),
                "Cognitive Services OpenAI User",
                "Microsoft Entra token",
            ],
        );
        assert_no_secret(&body, &world.secrets());

        // Act: the role assignment lands
        world
            .azure
            .respond_with(azure_openai_accepting(world.ledger.clone(), DESCRIPTION));
        until_recovered(&app, PATIENCE).await;

        // Assert: the same token serves on
        assert_eq!(world.entra.count(), 1);
    }
}
