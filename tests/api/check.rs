//! `ai-service check`: the troubleshooting command a person runs with `kubectl exec`. It names
//! each workload identity mistake people make with one sentence (cause and fix), gets one token
//! through the real credential, calls the chat deployment once, and says what worked, never
//! printing a token, the federated assertion or a signature.

#![allow(clippy::print_stderr)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::helpers::*;
use ai_service::{
    Dependencies,
    commands::{self, CheckOptions},
};
use serde_json::{Value, json};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5f1a3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b";
const OBJECT: &str = ENTRA_OBJECT_ID;
const ISSUER: &str = "https://eastus.oic.prod-aks.azure.com/72f988bf-86f1-41af-91ab-2d7cd011db47/7a1c2e3f/";
const SUBJECT: &str = "system:serviceaccount:default:ai-service-account";
const EXCHANGE: &str = "api://AzureADTokenExchange";
const CLI_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.check-az-cli-token.c2lnbmF0dXJl";

/// The claims of the token the workload identity webhook projects, valid for the next hour.
fn projected_token_claims() -> Value {
    json!({
        "aud": [EXCHANGE],
        "exp": unix_time(3600),
        "iat": unix_time(-60),
        "nbf": unix_time(-60),
        "iss": ISSUER,
        "sub": SUBJECT,
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "ai-service-account"}}
    })
}

fn permission_denied() -> MockResponse {
    MockResponse::json(
        403,
        json!({"error": {"code": "PermissionDenied", "message": "The principal lacks the required data action."}}),
    )
}

fn no_matching_federated_credential() -> MockResponse {
    entra_error(
        400,
        "invalid_client",
        70021,
        "No matching federated identity record found for presented assertion.",
    )
}

/// A mock Entra, a mock Azure OpenAI and a projected token file, as on a working AKS pod.
struct World {
    entra: MockServer,
    azure: MockServer,
    ledger: Ledger,
    token_file: PathBuf,
    /// The projected token and its signature: what a leak would look like, with the issued tokens.
    assertion: [String; 2],
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        Self::with_token(projected_token_claims(), "azure-identity-token", CLIENT).await
    }

    /// A world whose token file (at `file_name` in a temp dir) has `claims`, and whose Entra
    /// issues access tokens to the application `app_id`.
    async fn with_token(claims: Value, file_name: &str, app_id: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join(file_name);
        std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
        let (assertion, assertion_signature) = unsigned_jwt(&claims);
        std::fs::write(&token_file, &assertion).unwrap();
        let mock = MockEntra::new(TENANT, CLIENT, &token_file).issuing_to(app_id);
        let entra = mock.start().await;
        let azure = MockServer::start(azure_openai_accepting(mock.ledger.clone(), "OK")).await;
        Self {
            entra,
            azure,
            ledger: mock.ledger,
            token_file,
            assertion: [assertion, assertion_signature],
            _dir: dir,
        }
    }

    /// Every secret of this world: the projected token, the issued tokens, their signatures.
    fn secrets(&self) -> Vec<String> {
        let mut all = self.assertion.to_vec();
        all.extend(self.ledger.secrets());
        all
    }

    fn vars(&self) -> Vec<(String, String)> {
        let mut all = azure_entra_vars(&self.azure, &[]);
        all.extend(workload_identity_vars(
            &self.entra.url,
            TENANT,
            CLIENT,
            &self.token_file,
        ));
        all.extend(vars(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]));
        all
    }

    fn assert_no_secret(&self, text: &str) {
        for secret in self.secrets().iter().map(String::as_str).chain([CLI_TOKEN, "eyJ"]) {
            assert!(!text.contains(secret), "a secret ({secret}) leaked into:\n{text}");
        }
    }
}

/// Runs `check` in process with `vars` as its environment; returns its verdict and what it printed.
async fn run_check_with(vars: Vec<(String, String)>, deps: Dependencies, options: &CheckOptions) -> (bool, String) {
    let mut out = Vec::new();
    let ok = commands::check(vars.into_iter().collect(), deps, options, &mut out).await;
    let output = String::from_utf8(out).unwrap();
    eprintln!("{output}");
    (ok, output)
}

async fn run_check(vars: Vec<(String, String)>, deps: Dependencies) -> (bool, String) {
    run_check_with(vars, deps, &CheckOptions::default()).await
}

fn assert_mentions(text: &str, phrases: &[&str]) {
    for phrase in phrases {
        assert!(text.contains(phrase), "expected {phrase:?} in:\n{text}");
    }
}

/// The line that starts with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

fn set(vars: &mut Vec<(String, String)>, name: &str, value: &str) {
    vars.retain(|(k, _)| k != name);
    vars.push((name.to_owned(), value.to_owned()));
}

fn unset(vars: &mut Vec<(String, String)>, name: &str) {
    vars.retain(|(k, _)| k != name);
}

#[tokio::test]
async fn check_prints_the_token_claims_the_identity_and_the_chat_status_but_never_a_token() {
    // Arrange
    let world = World::start().await;

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(ok, "{output}");
    assert_mentions(
        &output,
        &[
            "configuration: ok",
            "credentials: WorkloadIdentityCredential",
            &format!(
                "federated token file: {} (present, {} bytes, written ",
                world.token_file.display(),
                world.assertion[0].len()
            ),
            &format!("federated token claims: iss={ISSUER}, sub={SUBJECT}, aud={EXCHANGE}, exp="),
            " ago)",
            "token: ok from WorkloadIdentityCredential (expires ",
            "in 59 min",
            &format!(
                "token identity: appid={CLIENT}, oid={OBJECT}, tid={TENANT}, aud=https://cognitiveservices.azure.com"
            ),
            "chat: ok, Azure OpenAI deployment `gpt-5-mini`",
        ],
    );
    assert!(!output.contains("note:"), "{output}");
    world.assert_no_secret(&output);
    assert_eq!(world.entra.count(), 1);
    assert_eq!(world.azure.count(), 1);
}

#[tokio::test]
async fn a_token_with_the_wrong_audience_is_named_before_any_call_to_entra() {
    // Arrange: a projected volume made by hand, with some other audience
    let mut claims = projected_token_claims();
    claims["aud"] = json!(["https://ai-service.example.com"]);
    let world = World::with_token(claims, "azure-identity-token", CLIENT).await;

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            &format!("federated token claims: iss={ISSUER}, sub={SUBJECT}, aud=https://ai-service.example.com, exp="),
            "federated token: FAILED: Workload identity: the service account token in ",
            "has the audience https://ai-service.example.com, not api://AzureADTokenExchange",
            "The workload identity webhook projects the token with that audience",
            "`audience: api://AzureADTokenExchange` on its serviceAccountToken source",
        ],
    );
    world.assert_no_secret(&output);
    assert_eq!(world.entra.count(), 0, "named before any call to Entra");
    assert_eq!(world.azure.count(), 0);
}

#[tokio::test]
async fn an_expired_token_is_named_before_any_call_to_entra() {
    // Arrange: the kubelet stopped rotating it ten minutes ago
    let mut claims = projected_token_claims();
    claims["exp"] = json!(unix_time(-600));
    claims["iat"] = json!(unix_time(-4200));
    let world = World::with_token(claims, "azure-identity-token", CLIENT).await;

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "ago, expired)",
            "federated token: FAILED: Workload identity: the service account token in ",
            "is outside its valid time range (it expired at ",
            "(10 min ago))",
            "(AADSTS700024)",
            "the kubelet stopped rotating it, or AZURE_FEDERATED_TOKEN_FILE names the wrong file",
            "kubectl rollout restart deployment/ai-service",
        ],
    );
    world.assert_no_secret(&output);
    assert_eq!(world.entra.count(), 0, "named before any call to Entra");
}

/// The token a pod gets for the Kubernetes API server, as AKS issues it.
fn api_server_token_claims() -> Value {
    let mut claims = projected_token_claims();
    claims["aud"] = json!([
        "https://myaks-dns-x1y2z3.hcp.eastus.azmk8s.io",
        "\"myaks-dns-x1y2z3.hcp.eastus.azmk8s.io\""
    ]);
    claims
}

#[tokio::test]
async fn the_pods_own_service_account_token_is_named_by_its_path_and_by_its_audience() {
    for file_name in [
        // AZURE_FEDERATED_TOKEN_FILE set by hand to the usual mount
        "var/run/secrets/kubernetes.io/serviceaccount/token",
        // or a copy elsewhere: its audience, the API server, gives it away
        "azure-identity-token",
    ] {
        // Arrange
        let world = World::with_token(api_server_token_claims(), file_name, CLIENT).await;

        // Act
        let (ok, output) = run_check(world.vars(), test_dependencies()).await;

        // Assert
        assert!(!ok, "{output}");
        assert_mentions(
            &output,
            &[
                "federated token: FAILED: Workload identity: AZURE_FEDERATED_TOKEN_FILE names ",
                "the pod's own service account token (audience https://myaks-dns-x1y2z3.hcp.eastus.azmk8s.io",
                "(AADSTS70023)",
                "Let the workload identity webhook set AZURE_FEDERATED_TOKEN_FILE",
            ],
        );
        world.assert_no_secret(&output);
        assert_eq!(world.entra.count(), 0, "named before any call to Entra");
    }
}

#[tokio::test]
async fn entra_refusing_the_assertion_codes_gets_the_same_sentences() {
    for (code, description, phrases) in [
        (
            70023u32,
            "The assertion audience is not valid for this token exchange.",
            &["(AADSTS70023)", "the pod's own service account token"][..],
        ),
        (
            700024,
            "Client assertion is not within its valid time range.",
            &["(AADSTS700024)", "has expired or is not yet valid"][..],
        ),
    ] {
        // Arrange: a token check cannot fault, refused by Entra
        let world = World::start().await;
        world
            .entra
            .respond_with(move |_, _| entra_error(400, "invalid_client", code, description));

        // Act
        let (ok, output) = run_check(world.vars(), test_dependencies()).await;

        // Assert
        assert!(!ok, "{output}");
        assert_mentions(
            &output,
            &["token: FAILED (WorkloadIdentityCredential): Workload identity: "],
        );
        assert_mentions(&output, phrases);
        world.assert_no_secret(&output);
        assert_eq!(world.azure.count(), 0);
    }
}

#[tokio::test]
async fn no_matching_federated_credential_prints_the_issuer_subject_and_the_command_that_matches_them() {
    for (code, differs) in [
        (70021u32, ""),
        (700211, ": the issuer differs"),
        (700213, ": the subject differs"),
    ] {
        // Arrange
        let world = World::start().await;
        world.entra.respond_with(move |_, _| {
            entra_error(
                400,
                "invalid_client",
                code,
                "No matching federated identity record found for presented assertion.",
            )
        });

        // Act
        let (ok, output) = run_check(world.vars(), test_dependencies()).await;

        // Assert
        assert!(!ok, "{output}");
        assert_mentions(
            &output,
            &[
                &format!(
                    "token: FAILED (WorkloadIdentityCredential): Workload identity: no federated credential of \
                     identity {CLIENT} matches this pod's service account token (AADSTS{code}{differs}):"
                ),
                "a federated credential's issuer must be the cluster's OIDC issuer URL",
                &format!(", and this token has issuer {ISSUER} and subject {SUBJECT}. "),
                &format!(
                    "az identity federated-credential create --name <name> --identity-name <identity> \
                     --resource-group <identity resource group> --issuer {ISSUER} --subject {SUBJECT} \
                     --audience api://AzureADTokenExchange"
                ),
            ],
        );
        world.assert_no_secret(&output);
        assert_eq!(world.azure.count(), 0, "no chat call without a token");
    }
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
async fn a_pod_the_webhook_did_not_mutate_is_told_to_check_the_label_and_the_annotation_and_restart() {
    // Arrange: USE_AZURE_AD=True in a pod, and none of the webhook's variables
    let azure = azure_openai_answering("OK").await;
    let az = FakeAz::logged_in(CLI_TOKEN);
    let deps = Dependencies {
        executor: Some(az.executor()),
        ..test_dependencies()
    };
    let vars = azure_entra_vars(&azure, &[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]);

    // Act
    let (ok, output) = run_check(vars, deps).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "configuration: ok",
            "workload identity: FAILED: Workload identity: this pod runs in Kubernetes with USE_AZURE_AD=True but \
             has no AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID: the workload identity webhook did \
             not mutate it.",
            "Check both the label azure.workload.identity/use: \"true\" on the Deployment's pod template",
            "and the annotation azure.workload.identity/client-id: <the managed identity's clientId> on the pod's \
             ServiceAccount",
            "pods created before the fix keep their old spec, so restart them: kubectl rollout restart \
             deployment/ai-service",
        ],
    );
    assert!(az.calls().is_empty(), "no developer tool is tried in a pod");
    assert_eq!(azure.count(), 0);
}

#[tokio::test]
async fn a_pod_whose_service_account_lacks_the_annotation_is_told_only_about_the_annotation() {
    // Arrange: the webhook ran (token file, tenant, authority) but found no client id to inject
    let world = World::start().await;
    let mut vars = world.vars();
    unset(&mut vars, "AZURE_CLIENT_ID");

    // Act
    let (ok, output) = run_check(vars, test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    let diagnosis = line(&output, "workload identity: FAILED: ");
    assert_mentions(
        diagnosis,
        &[
            "the workload identity webhook mutated this pod but set no AZURE_CLIENT_ID",
            "Check the annotation azure.workload.identity/client-id",
            "kubectl rollout restart deployment/ai-service",
        ],
    );
    assert!(!diagnosis.contains("azure.workload.identity/use"), "{diagnosis}");
    assert_eq!(world.entra.count(), 0);
}

#[tokio::test]
async fn a_pod_with_a_hand_set_client_id_but_no_token_file_is_told_only_about_the_label() {
    // Arrange: AZURE_CLIENT_ID and AZURE_TENANT_ID in the manifest, but the webhook did not run
    let world = World::start().await;
    let mut vars = world.vars();
    unset(&mut vars, "AZURE_FEDERATED_TOKEN_FILE");
    unset(&mut vars, "AZURE_AUTHORITY_HOST");

    // Act
    let (ok, output) = run_check(vars, test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    let diagnosis = line(&output, "workload identity: FAILED: ");
    assert_mentions(
        diagnosis,
        &[
            "has no AZURE_FEDERATED_TOKEN_FILE: the workload identity webhook did not mutate it",
            "Check the label azure.workload.identity/use: \"true\"",
            "kubectl rollout restart deployment/ai-service",
        ],
    );
    assert!(!diagnosis.contains("azure.workload.identity/client-id"), "{diagnosis}");
    assert_eq!(world.entra.count(), 0);
}

#[tokio::test]
async fn a_regional_endpoint_is_named_before_any_call() {
    // Arrange
    let world = World::start().await;
    let mut vars = world.vars();
    set(
        &mut vars,
        "AZURE_OPENAI_ENDPOINT",
        "https://eastus.api.cognitive.microsoft.com/",
    );

    // Act
    let (ok, output) = run_check(vars, test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "endpoint: FAILED: AZURE_OPENAI_ENDPOINT is https://eastus.api.cognitive.microsoft.com/, a regional \
             endpoint, and Microsoft Entra authentication works only with the resource's custom subdomain.",
            "https://<resource name>.openai.azure.com/",
        ],
    );
    assert_eq!(world.entra.count(), 0, "named before any call");
    assert_eq!(world.azure.count(), 0);
}

#[tokio::test]
async fn a_token_for_another_identity_is_visible() {
    // Arrange: the access token belongs to some other application (say, the node's identity)
    let node_identity = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4";
    let world = World::with_token(projected_token_claims(), "azure-identity-token", node_identity).await;

    // Act
    let (_, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert_mentions(
        &output,
        &[
            &format!("token identity: appid={node_identity}, oid={OBJECT}, tid={TENANT}"),
            &format!("note: this is not the identity in AZURE_CLIENT_ID ({CLIENT})"),
        ],
    );
    world.assert_no_secret(&output);
}

#[tokio::test]
async fn check_fails_naming_the_role_and_wait_when_azure_openai_answers_403() {
    // Arrange
    let world = World::start().await;
    world.azure.respond_with(|_, _| permission_denied());

    // Act
    let (ok, output) = run_check(world.vars(), test_dependencies()).await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "token: ok from WorkloadIdentityCredential",
            "chat: FAILED, Azure OpenAI deployment `gpt-5-mini`",
            "refused the Microsoft Entra token (403)",
            "Cognitive Services OpenAI User",
            "`ai-service check --wait 600` retries until it does",
        ],
    );
    world.assert_no_secret(&output);
    assert_eq!(world.azure.count(), 1, "no retry without --wait");
}

fn quick_retries(wait: Duration, retry_interval: Duration) -> CheckOptions {
    CheckOptions { wait, retry_interval }
}

#[tokio::test]
async fn check_wait_retries_a_403_until_the_role_assignment_arrives() {
    // Arrange: the role assignment reaches the data plane after the first call
    let world = World::start().await;
    let accepting = azure_openai_accepting(world.ledger.clone(), "OK");
    world.azure.respond_with(move |request, index| {
        if index == 0 {
            permission_denied()
        } else {
            accepting(request, index)
        }
    });

    // Act
    let (ok, output) = run_check_with(
        world.vars(),
        test_dependencies(),
        &quick_retries(Duration::from_secs(60), Duration::from_millis(20)),
    )
    .await;

    // Assert
    assert!(ok, "{output}");
    assert_mentions(
        &output,
        &[
            "chat: HTTP 403 after 0 s of --wait 60 s; the role assignment may not have reached Azure OpenAI yet, \
             trying again in 0 s",
            "chat: ok, Azure OpenAI deployment `gpt-5-mini`",
            "after waiting 0 s",
        ],
    );
    world.assert_no_secret(&output);
    assert_eq!(world.azure.count(), 2);
    assert_eq!(world.entra.count(), 1, "the token is reused across retries");
}

#[tokio::test]
async fn check_wait_gives_up_when_the_time_runs_out() {
    // Arrange
    let world = World::start().await;
    world.azure.respond_with(|_, _| permission_denied());

    // Act
    let (ok, output) = run_check_with(
        world.vars(),
        test_dependencies(),
        &quick_retries(Duration::from_secs(1), Duration::from_millis(100)),
    )
    .await;

    // Assert
    assert!(!ok, "{output}");
    assert_mentions(
        &output,
        &[
            "chat: HTTP 403 after 0 s of --wait 1 s",
            "chat: FAILED, Azure OpenAI deployment `gpt-5-mini` at ",
            "refused the Microsoft Entra token (403)",
            "It was still refused after --wait 1 s.",
        ],
    );
    assert!(world.azure.count() >= 2, "retried: {}", world.azure.count());
    world.assert_no_secret(&output);
}

#[tokio::test]
async fn check_with_the_azure_cli_names_the_cli_as_the_credential_that_worked() {
    // Arrange: a developer machine, not a pod
    let ledger = Ledger::default();
    ledger.admit(CLI_TOKEN, Duration::from_secs(3600));
    let azure = MockServer::start(azure_openai_accepting(ledger, "OK")).await;
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
            "token identity: unknown (the access token is not a JWT; not shown)",
            "chat: ok",
        ],
    );
    assert!(!output.contains(CLI_TOKEN) && !output.contains("eyJ"), "{output}");
    assert_eq!(az.calls().len(), 1);
}

#[test]
fn check_arguments_parse_wait_and_reject_anything_else() {
    let parse = |args: &[&str]| CheckOptions::from_args(args.iter().map(|a| a.to_string()));
    assert_eq!(parse(&[]).unwrap().wait, Duration::ZERO);
    assert_eq!(parse(&[]).unwrap().retry_interval, Duration::from_secs(10));
    assert_eq!(parse(&["--wait", "300"]).unwrap().wait, Duration::from_secs(300));
    assert_eq!(parse(&["--wait=45"]).unwrap().wait, Duration::from_secs(45));
    for bad in [
        &["--wait"][..],
        &["--wait", "soon"],
        &["--wait=-5"],
        &["--wait", "1.5"],
        &["--verbose"],
    ] {
        let err = parse(bad).unwrap_err();
        assert!(err.contains('`'), "{bad:?}: {err}");
    }
}

/// Runs the real binary's `check` with `args`, and only `vars`, `PATH` and the test CA in its environment.
async fn run_binary_check(args: &[&str], vars: &[(String, String)], cwd: &Path) -> (Option<i32>, String, String) {
    // No stray .env file: the binary reads one from its working directory.
    let done = Binary::new(cwd)
        .trusting_test_ca()
        .arg("check")
        .args(args)
        .vars(vars)
        .run()
        .await;
    let (stdout, stderr) = (done.stdout(), done.stderr());
    eprintln!("{stdout}");
    (done.status.code(), stdout, stderr)
}

#[tokio::test]
async fn the_check_binary_exits_0_naming_the_credential_and_never_printing_the_token() {
    // Arrange
    let world = World::start().await;
    let cwd = tempfile::tempdir().unwrap();

    // Act
    let (code, stdout, stderr) = run_binary_check(&[], &world.vars(), cwd.path()).await;

    // Assert
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_mentions(
        &stdout,
        &[
            "federated token claims: iss=",
            "token: ok from WorkloadIdentityCredential",
            "token identity: appid=",
            "chat: ok",
        ],
    );
    world.assert_no_secret(&stdout);
    world.assert_no_secret(&stderr);
    assert_eq!(world.entra.count(), 1);
    assert_eq!(world.azure.count(), 1);
}

#[tokio::test]
async fn the_check_binary_exits_non_zero_naming_a_wrong_audience_before_calling_entra() {
    // Arrange
    let mut claims = projected_token_claims();
    claims["aud"] = json!("https://ai-service.example.com");
    let world = World::with_token(claims, "azure-identity-token", CLIENT).await;
    let cwd = tempfile::tempdir().unwrap();

    // Act
    let (code, stdout, stderr) = run_binary_check(&["--wait", "5"], &world.vars(), cwd.path()).await;

    // Assert
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_mentions(
        &stdout,
        &["federated token: FAILED: ", "not api://AzureADTokenExchange"],
    );
    world.assert_no_secret(&stdout);
    world.assert_no_secret(&stderr);
    assert_eq!(world.entra.count(), 0);
}

#[tokio::test]
async fn the_check_binary_exits_non_zero_with_the_reason_when_entra_refuses() {
    // Arrange
    let world = World::start().await;
    world.entra.respond_with(|_, _| no_matching_federated_credential());
    let cwd = tempfile::tempdir().unwrap();

    // Act
    let (code, stdout, stderr) = run_binary_check(&[], &world.vars(), cwd.path()).await;

    // Assert
    assert_ne!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(code.is_some(), "killed by a signal");
    assert_mentions(
        &stdout,
        &[
            "token: FAILED (WorkloadIdentityCredential)",
            "AADSTS70021",
            "az identity federated-credential create",
        ],
    );
    world.assert_no_secret(&stdout);
    world.assert_no_secret(&stderr);
    assert_eq!(world.azure.count(), 0);
}

#[tokio::test]
async fn the_check_binary_exits_2_with_the_usage_on_a_bad_wait() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["--wait", "soon"][..], &["--wait"], &["--frobnicate"]] {
        // Act
        let (code, stdout, stderr) = run_binary_check(args, &[], cwd.path()).await;

        // Assert
        assert_eq!(code, Some(2), "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert_mentions(&stderr, &["usage: ai-service", "check [--wait SECONDS]"]);
        assert!(stdout.is_empty(), "{stdout}");
    }
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
    let (code, stdout, stderr) = run_binary_check(&[], &vars, cwd.path()).await;

    // Assert: SSL_CERT_FILE is what the binary trusts, and an untrusted endpoint is named as such
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

#[tokio::test]
async fn check_calls_every_deployment_of_both_pools_once_and_prints_each_result() {
    // Arrange: a chat pool of two (the second deployment is missing) and an image pool of one.
    let primary = MockServer::start(|_, _| MockResponse::json(200, chat_completion("OK"))).await;
    let missing =
        MockServer::start(|_, _| MockResponse::json(404, json!({"error": {"code": "DeploymentNotFound"}}))).await;
    let images = MockServer::start(|_, _| {
        MockResponse::json(200, json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]}))
    })
    .await;
    let file = config_file(&format!(
        "[[chat]]\nendpoint = \"{}\"\ndeployment = \"gpt-5-mini-sweden\"\n\n[[image]]\nendpoint = \"{}\"\ndeployment = \"gpt-image-1\"\napi_version = \"v1\"\n",
        missing.url, images.url
    ));
    let mut all = azure_key_vars(&primary);
    all.extend(vars(&[("AI_SERVICE_CONFIG", file.path.as_str())]));

    // Act
    let (ok, output) = run_check(all, test_dependencies()).await;

    // Assert: one call each, one line each, and a failure overall
    assert!(!ok, "{output}");
    assert_eq!((primary.count(), missing.count(), images.count()), (1, 1, 1));
    assert_mentions(
        &output,
        &[
            "chat: ok, Azure OpenAI deployment `gpt-5-mini` at ",
            "chat: FAILED, Azure OpenAI deployment `gpt-5-mini-sweden` at ",
            "the deployment or model `gpt-5-mini-sweden` was not found",
            "image: ok, Azure OpenAI deployment `gpt-image-1` at ",
            "(api v1) answered HTTP 2xx with an image",
            "deployments: 2 of 3 answered",
            "chat_pool=[gpt-5-mini@localhost:",
            "image_pool=[gpt-image-1@localhost:",
        ],
    );
}
