//! Secrets never leak: no API key, access token or client assertion in any log line
//! (captured at TRACE, dependencies included), in any answer, or in `Debug` of the settings.
//!
//! Its own test binary: it installs the process-wide tracing subscriber. The flows
//! run for real: a workload-identity token exchange against a mock Microsoft Entra ID
//! over HTTPS, an Azure OpenAI key, a public OpenAI key and a (fake) `az login`, each
//! succeeding and failing.

#![allow(clippy::print_stderr)]

#[path = "api/helpers.rs"]
mod helpers;

use std::time::Duration;

use ai_service::config::LogFormat;
use helpers::*;
use serde_json::json;

const AZURE_KEY: &str = "azkey-7f3a9c1e5b2d4f6a8c0e2b4d";
const OPENAI_KEY: &str = "sk-proj-Qw3rTy8uIo9pAs7dFg5hJk";
const ACCESS_TOKEN: &str =
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiJjb2duaXRpdmVzZXJ2aWNlcyIsInRpZCI6InRlbmFudCJ9.access-sig-5e8d1f0b";
const ASSERTION: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imt1YmUifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlIn0.assertion-sig-91c4a7e2";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0c8f2d3e-1a4b-4c5d-9e6f-7a8b9c0d1e2f";

/// What to search for: each secret whole, and distinctive pieces (a log could truncate or split).
/// `issued` holds the tokens the mock Entra issued in this run (see [`issued_pieces`]).
fn needles(issued: &[String]) -> Vec<&str> {
    let mut all = vec![
        AZURE_KEY,
        &AZURE_KEY[6..22],
        OPENAI_KEY,
        &OPENAI_KEY[8..24],
        ACCESS_TOKEN,
        "eyJhdWQiOiJjb2duaXRpdmVzZXJ2aWNlcyIsInRpZCI6InRlbmFudCJ9",
        "access-sig-5e8d1f0b",
        ASSERTION,
        "eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlIn0",
        "assertion-sig-91c4a7e2",
    ];
    all.extend(issued.iter().map(String::as_str));
    all
}

/// Each token `ledger` issued, whole, and its claims and signature parts.
fn issued_pieces(ledger: &Ledger) -> Vec<String> {
    ledger
        .grants()
        .into_iter()
        .flat_map(|grant| {
            let mut pieces: Vec<String> = grant.token.split('.').skip(1).map(str::to_owned).collect();
            pieces.push(grant.token);
            pieces
        })
        .collect()
}

/// The line holding the first secret found in `text`, if any.
fn find_secret(text: &str, issued: &[String]) -> Option<String> {
    needles(issued).into_iter().find_map(|needle| {
        let at = text.find(needle)?;
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        Some(format!("({needle}) {}", &text[line_start..line_end]))
    })
}

fn assert_no_secret(what: &str, text: &str, issued: &[String]) {
    if let Some(line) = find_secret(text, issued) {
        panic!("a secret appears in {what}: {line}");
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every answer the service gave, to search for secrets.
#[derive(Default)]
struct Answers(Vec<String>);

impl Answers {
    async fn record(&mut self, response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let headers = format!("{:?}", response.headers());
        let text = response.text().await.unwrap();
        self.0.push(format!("{headers}\n{text}"));
        (status, text)
    }
}

async fn description(app: &TestApp, answers: &mut Answers) -> (u16, String) {
    answers
        .record(app.post_description(&json!({"name": "Ball", "tags": ["dog"]})).await)
        .await
}

async fn image(app: &TestApp, answers: &mut Answers) -> (u16, String) {
    answers
        .record(app.post_image(&json!({"name": "Ball", "description": "A ball."})).await)
        .await
}

/// A mock Microsoft Entra ID for the token file: issues tokens, or fails with an AADSTS error.
async fn entra(token_file: &std::path::Path, fail: bool) -> (MockServer, Ledger) {
    let mut mock = MockEntra::new(TENANT, CLIENT, token_file);
    if fail {
        mock = mock.failing(entra_error(
            400,
            "invalid_client",
            700213,
            "No matching federated identity record found for presented assertion subject 'system:serviceaccount:default:ai-service'.",
        ));
    }
    (mock.start().await, mock.ledger)
}

fn entra_app_vars(azure: &MockServer, authority: &str, token_file: &std::path::Path) -> Vec<(String, String)> {
    let mut all = azure_entra_vars(
        azure,
        &[
            ("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME", "gpt-image-1"),
            ("UPSTREAM_MAX_RETRIES", "1"),
        ],
    );
    all.extend(workload_identity_vars(authority, TENANT, CLIENT, token_file));
    all
}

/// An Azure OpenAI mock: chat and image succeed when `credential_ok` accepts the request (else 418).
async fn azure_openai(credential_ok: impl Fn(&Recorded) -> bool + Send + Sync + 'static) -> MockServer {
    MockServer::start(move |request, _| {
        if !credential_ok(request) {
            MockResponse::json(418, json!({"error": {"code": "unexpected_credential"}}))
        } else if request.path.ends_with("/images/generations") {
            MockResponse::json(200, json!({"data": [{"b64_json": "iVBORw0KGgo="}]}))
        } else {
            MockResponse::json(200, chat_completion("Bouncy."))
        }
    })
    .await
}

fn closed_port_url() -> String {
    format!("https://127.0.0.1:{}/", free_port())
}

/// RUST_LOG overrides the subscriber's default filter: run the test again without it,
/// so the capture is at TRACE whatever the caller's environment says.
fn rerun_without_rust_log(test: &str) -> bool {
    if std::env::var_os("RUST_LOG").is_none_or(|v| v.is_empty()) {
        return false;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_remove("RUST_LOG")
        .status()
        .expect("the test binary runs again");
    assert!(status.success(), "the run without RUST_LOG failed: {status}");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_answer_or_debug_output() {
    if rerun_without_rust_log("no_secret_reaches_a_log_line_an_answer_or_debug_output") {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let _telemetry = ai_service::telemetry::init_with(LogFormat::Text, "trace", move || writer.clone(), None);
    let mut answers = Answers::default();
    let mut debug_output = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, format!("{ASSERTION}\n")).unwrap();

    // 1. Workload identity: a token exchange, a description and an image, then Azure OpenAI refuses the token.
    let (login, ledger) = entra(&token_file, false).await;
    let accepted = ledger.clone();
    let azure = azure_openai(move |request| {
        request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|token| accepted.accepts(token))
    })
    .await;
    let app = spawn_app(entra_app_vars(&azure, &login.url, &token_file)).await;
    assert_eq!(description(&app, &mut answers).await.0, 200);
    assert_eq!(image(&app, &mut answers).await.0, 200);
    assert_eq!(login.count(), 1, "one token exchange, cached");
    azure.respond_with(|_, _| {
        MockResponse::json(
            401,
            json!({"error": {"code": "PermissionDenied", "message": "Principal does not have access to API/Operation."}}),
        )
    });
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("refused the Microsoft Entra token"), "{text}");
    azure
        .respond_with(|_, _| MockResponse::json(429, json!({"error": {"code": "429"}})).header("retry-after-ms", "10"));
    assert_eq!(image(&app, &mut answers).await.0, 503);
    debug_output.push(format!("{:?}\n{}", app.settings, app.settings.summary()));
    answers.record(app.get("/metrics").await).await;
    drop(app);

    // 2. Workload identity refused by Microsoft Entra ID, and Entra unreachable.
    let (refusing, _) = entra(&token_file, true).await;
    let app = spawn_app(entra_app_vars(&azure, &refusing.url, &token_file)).await;
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Workload identity"), "{text}");
    assert!(refusing.count() >= 1);
    drop(app);
    let app = spawn_app(entra_app_vars(&azure, &closed_port_url(), &token_file)).await;
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 503, "{text}");

    // 3. Azure OpenAI with a key: success, 401, 500s, and an unreachable endpoint.
    let azure = azure_openai(|request| request.header("api-key") == Some(AZURE_KEY)).await;
    let mut key_vars = azure_key_vars(&azure);
    key_vars.extend(vars(&[
        ("AZURE_OPENAI_API_KEY", AZURE_KEY),
        ("AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME", "gpt-image-1"),
        ("UPSTREAM_MAX_RETRIES", "1"),
    ]));
    let app = spawn_app(key_vars.clone()).await;
    assert_eq!(description(&app, &mut answers).await.0, 200);
    assert_eq!(image(&app, &mut answers).await.0, 200);
    assert_eq!(
        azure.requests()[0].header("api-key"),
        Some(AZURE_KEY),
        "the key was used"
    );
    azure.respond_with(|_, _| {
        MockResponse::json(
            401,
            json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}}),
        )
    });
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 502, "{text}");
    azure.respond_with(|_, _| MockResponse::raw(500, "text/html", b"<html>Internal error</html>"));
    assert_eq!(image(&app, &mut answers).await.0, 502);
    debug_output.push(format!("{:?}\n{}", app.settings, app.settings.summary()));
    drop(app);
    key_vars.push(("AZURE_OPENAI_ENDPOINT".to_owned(), closed_port_url()));
    let app = spawn_app(key_vars).await;
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 502, "{text}");
    drop(app);

    // 4. The public OpenAI API: success, then the key is refused.
    let openai = MockServer::start(|request, _| {
        if request.header("authorization") == Some(format!("Bearer {OPENAI_KEY}").as_str()) {
            MockResponse::json(200, chat_completion("Public."))
        } else {
            MockResponse::json(418, json!({}))
        }
    })
    .await;
    let base = format!("{}v1", openai.url);
    let app = spawn_app(vars(&[("OPENAI_API_KEY", OPENAI_KEY), ("OPENAI_BASE_URL", &base)])).await;
    assert_eq!(description(&app, &mut answers).await.0, 200);
    openai.respond_with(|_, _| {
        MockResponse::json(
            401,
            json!({"error": {"message": "Incorrect API key provided: sk-proj-****dFg5hJk.", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        )
    });
    let (status, text) = description(&app, &mut answers).await;
    assert_eq!(status, 502, "{text}");
    debug_output.push(format!("{:?}\n{}", app.settings, app.settings.summary()));
    drop(app);

    // 5. The developer's `az login`: a token from the CLI, then a CLI whose output is broken mid-token.
    let azure =
        azure_openai(|request| request.header("authorization") == Some(format!("Bearer {ACCESS_TOKEN}").as_str()))
            .await;
    let developer_vars = azure_entra_vars(&azure, &[]);
    for (az, expected) in [
        (FakeAz::logged_in(ACCESS_TOKEN), 200),
        (
            FakeAz::new(&format!("echo '{{\"accessToken\": \"{ACCESS_TOKEN}\", \"expiresOn'")),
            503,
        ),
    ] {
        let mut deps = test_dependencies();
        deps.executor = Some(az.executor());
        let app = spawn_app_with(developer_vars.clone(), deps).await;
        let (status, text) = description(&app, &mut answers).await;
        assert_eq!(status, expected, "{text}");
        assert_eq!(az.calls().len(), 1, "az was asked once");
    }

    // Let the last connection tasks finish their logging: nothing observable marks their end,
    // so this stays a sleep (a late line can only add to what is searched, never hide a leak).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Assert: the capture really is at TRACE and includes the dependencies...
    let log = logs.text();
    eprintln!("captured {} log lines ({} bytes)", log.lines().count(), log.len());
    assert!(log.contains("TRACE"), "the capture is not at TRACE");
    for expected in [
        "acquired a Microsoft Entra token",
        "typespec_client_core",
        "retrying upstream call",
    ] {
        assert!(
            log.contains(expected),
            "the log has no `{expected}`; is the capture working?"
        );
    }
    // ...and holds no secret; nor does any answer or Debug output.
    let issued = issued_pieces(&ledger);
    assert!(!issued.is_empty(), "the mock Entra issued no token to search for");
    assert_no_secret("the log", &log, &issued);
    for (i, answer) in answers.0.iter().enumerate() {
        assert_no_secret(&format!("answer #{i}"), answer, &issued);
    }
    for (i, output) in debug_output.iter().enumerate() {
        assert_no_secret(&format!("Debug/summary of settings #{i}"), output, &issued);
    }
}

#[test]
fn the_search_finds_a_planted_secret_even_cut_short() {
    // Guards the guard: a search that never matches would make the test above pass vacuously.
    for planted in [
        format!("x api-key={AZURE_KEY} y"),
        format!("token={}…", &ACCESS_TOKEN[..ACCESS_TOKEN.len() - 4]),
        format!("assertion=...{}", &ASSERTION[40..]),
        format!("Bearer {}", &OPENAI_KEY[..26]),
    ] {
        assert!(find_secret(&planted, &[]).is_some(), "{planted}");
    }
}
