//! Test harness: the real app on a random port, HTTPS mock upstreams that
//! record what they receive, a test CA made at test time, and a validator for
//! the official Azure OpenAI request schemas.
//!
//! Only what lives outside this machine is mocked (Entra ID, Azure OpenAI,
//! OpenAI, a local LLM server, the `az` CLI); the service, its HTTP client and
//! the azure_identity credentials are the real ones.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ai_service::{AppState, Dependencies, app, build_services, config::Settings, serve};
use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::sync::oneshot;

/// A certificate authority made for this test process, and a server certificate for localhost.
pub struct TestCa {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub ca_file: PathBuf,
}

/// One CA per test process: every mock serves the same leaf, every client trusts the CA.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ai-service test CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        // Under the target directory (which cargo clean empties), not /tmp: a static is never
        // dropped, so nothing would remove it.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("test-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            server_cert_pem: leaf.pem(),
            server_key_pem: leaf_key.serialize_pem(),
            ca_file,
        }
    })
}

/// What a mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the whole request had arrived.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("upstream body is not JSON ({e}): {:?}", self.body))
    }

    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a mock answers.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl MockResponse {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, content_type: &str, body: &[u8]) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Responder = dyn Fn(&Recorded, usize) -> MockResponse + Send + Sync;

/// An HTTPS server on 127.0.0.1 that records every request and answers with `respond(request, index)`.
pub struct MockServer {
    pub url: String,
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Arc<Responder>>>,
    /// Assertions that failed inside the responder, reported when the test reads the mock.
    failures: Arc<Mutex<Vec<String>>>,
    handle: axum_server::Handle,
}

impl MockServer {
    pub async fn start(respond: impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static) -> Self {
        Self::start_with(true, respond).await
    }

    /// A plain-HTTP mock, for the local LLM server (in-cluster, often http://).
    pub async fn start_http(respond: impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static) -> Self {
        Self::start_with(false, respond).await
    }

    async fn start_with(tls: bool, respond: impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static) -> Self {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Arc<Mutex<Arc<Responder>>> = Arc::new(Mutex::new(Arc::new(respond)));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let (recorded, current, failed) = (requests.clone(), responder.clone(), failures.clone());
        let router = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (recorded, current, failed) = (recorded.clone(), current.clone(), failed.clone());
            async move {
                let query = uri
                    .query()
                    .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                    .unwrap_or_default();
                let request = Recorded {
                    method,
                    path: uri.path().to_owned(),
                    query,
                    headers,
                    body,
                    at: std::time::Instant::now(),
                };
                let index = {
                    let mut all = recorded.lock().unwrap();
                    all.push(request.clone());
                    all.len() - 1
                };
                let respond = current.lock().unwrap().clone();
                // An assertion inside the responder must name its cause, not drop the connection
                // and surface later as a puzzling status: it is kept, answered as a 599, and
                // re-raised by `requests()`, `count()` or the mock's drop.
                let answer = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| respond(&request, index))) {
                    Ok(answer) => answer,
                    Err(panic) => {
                        let cause = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "a panic without a message".to_owned());
                        let message = format!(
                            "the mock's responder failed on request {index} ({} {}): {cause}",
                            request.method, request.path
                        );
                        failed.lock().unwrap().push(message.clone());
                        MockResponse::raw(599, "text/plain", message.as_bytes())
                    }
                };
                if !answer.delay.is_zero() {
                    tokio::time::sleep(answer.delay).await;
                }
                let mut response: Response =
                    (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
                for (name, value) in answer.headers {
                    response.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                response
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let service = router.into_make_service();
        if tls {
            let ca = test_ca();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                ca.server_cert_pem.clone().into_bytes(),
                ca.server_key_pem.clone().into_bytes(),
            )
            .await
            .unwrap();
            let server = axum_server::from_tcp_rustls(listener, config).handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await });
        } else {
            let server = axum_server::from_tcp(listener).handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await });
        }
        let scheme = if tls { "https" } else { "http" };
        Self {
            url: format!("{scheme}://localhost:{}/", address.port()),
            address,
            requests,
            responder,
            failures,
            handle,
        }
    }

    /// Changes the answer from now on (e.g. after "fixing" a fault).
    pub fn respond_with(&self, respond: impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Arc::new(respond);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.raise_failures();
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.raise_failures();
        self.requests.lock().unwrap().len()
    }

    fn raise_failures(&self) {
        let failures = self.failures.lock().unwrap().clone();
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("{}", failures.join("\n"));
        }
    }

    pub fn stop(&self) {
        self.handle.shutdown();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.raise_failures();
    }
}

/// A chat completion as Azure OpenAI answers it.
pub fn chat_completion(content: &str) -> Value {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-5-mini",
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "content_filter_results": {}
        }],
        "prompt_filter_results": [],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
    })
}

/// A mock Azure OpenAI that answers every chat call with `content`.
pub async fn azure_openai_answering(content: &'static str) -> MockServer {
    MockServer::start(move |_, _| MockResponse::json(200, chat_completion(content))).await
}

/// The real app, served on 127.0.0.1:0, with the test CA trusted.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// The variables of an Azure OpenAI + key configuration pointing at `azure`.
pub fn azure_key_vars(azure: &MockServer) -> Vec<(String, String)> {
    vars(&[
        ("USE_AZURE_OPENAI", "True"),
        ("AZURE_OPENAI_ENDPOINT", &azure.url),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
        ("AZURE_OPENAI_API_KEY", "test-azure-api-key-0123456789"),
    ])
}

/// The variables of an Azure OpenAI + Microsoft Entra configuration pointing at `azure`, plus `extra`.
pub fn azure_entra_vars(azure: &MockServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vars(&[
        ("USE_AZURE_OPENAI", "True"),
        ("USE_AZURE_AD", "True"),
        ("AZURE_OPENAI_ENDPOINT", &azure.url),
        ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
    ]);
    all.extend(vars(extra));
    all
}

/// The variables the AKS workload identity webhook injects.
pub fn workload_identity_vars(authority: &str, tenant: &str, client: &str, token_file: &Path) -> Vec<(String, String)> {
    vars(&[
        ("AZURE_AUTHORITY_HOST", authority),
        ("AZURE_TENANT_ID", tenant),
        ("AZURE_CLIENT_ID", client),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.to_str().expect("a UTF-8 temp path"),
        ),
    ])
}

pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Dependencies that trust the test CA.
pub fn test_dependencies() -> Dependencies {
    Dependencies {
        extra_root_certificates: vec![reqwest::Certificate::from_pem(test_ca().ca_pem.as_bytes()).unwrap()],
        ..Default::default()
    }
}

/// Initialises logging once; set TEST_LOG=1 to see the app's logs.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _telemetry =
            ai_service::telemetry::init_with(ai_service::config::LogFormat::Text, "debug", std::io::stdout, None);
    }
}

pub async fn spawn_app(vars: Vec<(String, String)>) -> TestApp {
    spawn_app_with(vars, test_dependencies()).await
}

pub async fn spawn_app_with(vars: Vec<(String, String)>, deps: Dependencies) -> TestApp {
    init_test_logging();
    let settings = Settings::from_source(vars.into_iter().collect()).expect("test settings are valid");
    let services = build_services(&settings, deps).expect("services build");
    let state = AppState::new(&settings, services);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let grace = settings.limits.shutdown_grace;
    let server = tokio::spawn(serve(
        listener,
        app(state),
        async move {
            let _ = rx.await;
        },
        grace,
    ));
    TestApp {
        address,
        client: reqwest::Client::new(),
        settings,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_description(&self, body: &Value) -> reqwest::Response {
        self.post_json("/generate/description", body).await
    }

    pub async fn post_image(&self, body: &Value) -> reqwest::Response {
        self.post_json("/generate/image", body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    /// Sends the shutdown signal (as SIGTERM would) and returns the server task.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server running")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Status and JSON body of a response.
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, body)
}

/// The `detail` sentence of an error body.
pub fn detail(body: &Value) -> &str {
    body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail sentence in {body}"))
}

/// A JSON file of `tests/fixtures/azure-openai/` (see the README there for where each comes from).
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/azure-openai")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Validates upstream request and response bodies against the schemas of the official
/// Azure OpenAI description (2024-10-21) that the service sends and reads.
pub struct OfficialSchema {
    document: Value,
}

impl OfficialSchema {
    pub fn load() -> &'static OfficialSchema {
        static SCHEMA: OnceLock<OfficialSchema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let mut document = fixture("schemas.json");
            openapi_to_json_schema(&mut document);
            OfficialSchema { document }
        })
    }

    /// Panics with every violation when `instance` does not match `#/components/schemas/{name}`.
    pub fn assert_valid(&self, name: &str, instance: &Value) {
        let schema = serde_json::json!({
            "$ref": format!("#/components/schemas/{name}"),
            "components": self.document["components"].clone(),
        });
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{instance} does not match {name}: {errors:#?}");
    }
}

/// OpenAPI 3.0 `nullable: true` becomes JSON Schema's "or null"; the rest is compatible.
fn openapi_to_json_schema(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".to_owned(), serde_json::json!([t, "null"]));
                } else if map.contains_key("$ref") || map.contains_key("allOf") || map.contains_key("oneOf") {
                    let inner = Value::Object(std::mem::take(map));
                    map.insert("anyOf".to_owned(), serde_json::json!([inner, {"type": "null"}]));
                }
            }
            map.remove("example");
            map.remove("discriminator");
            for child in map.values_mut() {
                openapi_to_json_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(openapi_to_json_schema),
        _ => {}
    }
}

/// A fake `az` on PATH that records its arguments and prints `stdout` (or fails with `stderr`).
pub struct FakeAz {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl FakeAz {
    /// `script_body` runs after the arguments are logged; it prints the token JSON or fails.
    pub fn new(script_body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("az-calls.log");
        let script = format!("#!/bin/sh\necho \"$@\" >> '{}'\n{script_body}\n", log.display());
        let path = dir.path().join("az");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, log }
    }

    /// A fake `az` that hands out `token`, valid for an hour.
    pub fn logged_in(token: &str) -> Self {
        Self::new(&format!(
            "EXP=$(( $(date +%s) + 3600 ))\nprintf '{{\"accessToken\":\"{token}\",\"expiresOn\":\"2030-01-01 00:00:00.000000\",\"expires_on\":%s,\"subscription\":\"sub\",\"tenant\":\"tenant\",\"tokenType\":\"Bearer\"}}' \"$EXP\""
        ))
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// An executor that runs commands with only this fake (and the system's shell tools) on PATH.
    pub fn executor(&self) -> Arc<dyn azure_identity::Executor> {
        Arc::new(PathExecutor {
            path: format!("{}:/usr/bin:/bin", self.dir.path().display()),
        })
    }
}

/// Runs the credential's commands like the SDK's tokio executor, with a given PATH.
#[derive(Debug)]
pub struct PathExecutor {
    pub path: String,
}

#[async_trait::async_trait]
impl azure_identity::Executor for PathExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<Output> {
        tokio::process::Command::new(program)
            .args(args)
            .env("PATH", &self.path)
            .output()
            .await
    }
}

/// A token provider that always hands out the same hour-long token.
#[derive(Debug)]
pub struct FixedToken(pub &'static str);

#[async_trait::async_trait]
impl ai_service::credential::TokenProvider for FixedToken {
    async fn token(&self) -> Result<ai_service::credential::BearerToken, ai_service::credential::TokenError> {
        Ok(ai_service::credential::BearerToken::new(
            secrecy::SecretString::from(self.0.to_owned()),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            "FixedToken",
        ))
    }
}

/// Log output kept in memory, for tests that read what the service logged.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback port nothing listens on: bound for a moment to learn a free number, then released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JWT with `claims` and a made-up signature: what a projected service account token or an
/// Entra access token looks like to a client that decodes it without verifying. Returns the
/// token and its signature part, which tests assert is never printed.
pub fn unsigned_jwt(claims: &Value) -> (String, String) {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"test-key","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(format!("test-signature-{}", fastrand::u64(..)));
    (format!("{header}.{payload}.{signature}"), signature)
}

/// Seconds since the Unix epoch, `offset` seconds from now: for `exp` and `iat` claims.
pub fn unix_time(offset: i64) -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + offset
}

/// A failure's `detail`, checked for the shape the store-admin needs: one clause that completes
/// its "Unable to generate description: " (or image) without repeating it, ending with the
/// request's short id, ` (request 6ed9b964).`. Returns the clause without the id.
pub fn failure_clause(detail: &str) -> &str {
    let (clause, id) = detail
        .rsplit_once(" (request ")
        .unwrap_or_else(|| panic!("no request id at the end: {detail}"));
    let id = id
        .strip_suffix(").")
        .unwrap_or_else(|| panic!("the request id does not close the sentence: {detail}"));
    assert!(
        id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "not a short request id: {id:?} in {detail}"
    );
    assert!(
        !clause.starts_with("Error generating") && !clause.starts_with("Unable to generate"),
        "repeats the store-admin's prefix: {detail}"
    );
    clause
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `within` (a guard
/// against hanging, not a speed requirement: give it tens of seconds).
pub async fn wait_until(within: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Microsoft Entra ID: one mock token endpoint, and the ledger of what it issued
// ---------------------------------------------------------------------------------------------

/// The scope the service asks Entra for.
pub const ENTRA_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// The audience of the access tokens the mock Entra issues.
pub const ENTRA_AUDIENCE: &str = "https://cognitiveservices.azure.com";
/// The object id of the identity the mock Entra issues tokens to.
pub const ENTRA_OBJECT_ID: &str = "0b9d6c1e-2f3a-4b5c-8d7e-6f5a4b3c2d1e";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One access token the mock Entra handed out (or a token from elsewhere the mock Azure OpenAI accepts).
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: String,
    pub issued_at: std::time::Instant,
    pub expires_at: std::time::Instant,
}

/// The tokens the mock Entra issued, which the mock Azure OpenAI checks, and how many calls it refused.
#[derive(Clone, Default)]
pub struct Ledger {
    grants: Arc<Mutex<Vec<Grant>>>,
    rejected: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ledger {
    /// Records `token` as valid for `lifetime` from now.
    pub fn admit(&self, token: &str, lifetime: Duration) {
        let now = std::time::Instant::now();
        self.grants.lock().unwrap().push(Grant {
            token: token.to_owned(),
            issued_at: now,
            expires_at: now + lifetime,
        });
    }

    /// Issued and not expired.
    pub fn accepts(&self, token: &str) -> bool {
        let now = std::time::Instant::now();
        self.grants
            .lock()
            .unwrap()
            .iter()
            .any(|grant| grant.token == token && now < grant.expires_at)
    }

    pub fn grants(&self) -> Vec<Grant> {
        self.grants.lock().unwrap().clone()
    }

    /// The issued tokens, and their signatures (a leak may print only those).
    pub fn secrets(&self) -> Vec<String> {
        self.grants()
            .into_iter()
            .flat_map(|g| {
                let signature = g.token.rsplit('.').next().unwrap_or_default().to_owned();
                [g.token, signature]
            })
            .collect()
    }

    /// How many calls the mock Azure OpenAI refused for want of a live issued token.
    pub fn rejected(&self) -> usize {
        self.rejected.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A mock Microsoft Entra ID token endpoint as workload identity meets it: it validates the
/// exchange (tenant path, form, grant type, assertion type, the token file's content as the
/// assertion, client id, scope), then issues a JWT-shaped access token (claims `appid`, `oid`,
/// `tid`, `aud`, `exp`) recorded in its [`Ledger`], or answers with the configured failure.
#[derive(Clone)]
pub struct MockEntra {
    pub tenant: String,
    pub client_id: String,
    pub token_file: PathBuf,
    pub ledger: Ledger,
    /// The `appid` of the tokens it issues (the client id unless set otherwise).
    pub app_id: String,
    pub expires_in: u64,
    pub delay: Duration,
    pub failure: Option<MockResponse>,
}

impl MockEntra {
    /// Issues hour-long tokens to `client_id` of `tenant` for the content of `token_file`.
    pub fn new(tenant: &str, client_id: &str, token_file: &Path) -> Self {
        Self {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            token_file: token_file.to_owned(),
            ledger: Ledger::default(),
            app_id: client_id.to_owned(),
            expires_in: 3600,
            delay: Duration::ZERO,
            failure: None,
        }
    }

    /// Tokens valid for `seconds`.
    pub fn expires_in(mut self, seconds: u64) -> Self {
        self.expires_in = seconds;
        self
    }

    /// Answers a valid exchange after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Issues tokens to another application (say, the node's identity).
    pub fn issuing_to(mut self, app_id: &str) -> Self {
        self.app_id = app_id.to_owned();
        self
    }

    /// Answers a valid exchange with `answer` (see [`entra_error`]) instead of a token.
    pub fn failing(mut self, answer: MockResponse) -> Self {
        self.failure = Some(answer);
        self
    }

    /// What is wrong with a token request, compared with what workload identity must send.
    pub fn exchange_problem(&self, request: &Recorded) -> Option<String> {
        let form = request.form();
        let field = |name: &str| form.get(name).map(String::as_str);
        let assertion = std::fs::read_to_string(&self.token_file).unwrap_or_default();
        let expected_path = format!("/{}/oauth2/v2.0/token", self.tenant);
        if request.method != "POST" {
            Some(format!("method {}", request.method))
        } else if request.path != expected_path {
            Some(format!("path {} (expected {expected_path})", request.path))
        } else if !request
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            Some("content-type is not a form".to_owned())
        } else if field("grant_type") != Some("client_credentials") {
            Some(format!("grant_type {:?}", field("grant_type")))
        } else if field("client_assertion_type") != Some(JWT_BEARER) {
            Some(format!("client_assertion_type {:?}", field("client_assertion_type")))
        } else if field("client_assertion") != Some(assertion.trim()) {
            Some("client_assertion is not the token file's content".to_owned())
        } else if field("client_id") != Some(self.client_id.as_str()) {
            Some(format!("client_id {:?}", field("client_id")))
        } else if field("scope") != Some(ENTRA_SCOPE) {
            Some(format!("scope {:?}", field("scope")))
        } else {
            None
        }
    }

    /// Issues (and records) one access token.
    fn issue(&self, index: usize) -> String {
        let (token, _) = unsigned_jwt(&serde_json::json!({
            "aud": ENTRA_AUDIENCE,
            "iss": format!("https://sts.windows.net/{}/", self.tenant),
            "appid": self.app_id,
            "oid": ENTRA_OBJECT_ID,
            "tid": self.tenant,
            "idtyp": "app",
            "uti": format!("issued-{index}"),
            "exp": unix_time(i64::try_from(self.expires_in).unwrap_or(i64::MAX)),
        }));
        self.ledger.admit(&token, Duration::from_secs(self.expires_in));
        token
    }

    /// The token endpoint, as a [`MockServer`] responder.
    pub fn responder(&self) -> impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static {
        let entra = self.clone();
        move |request, index| {
            if let Some(problem) = entra.exchange_problem(request) {
                return MockResponse::json(
                    400,
                    serde_json::json!({
                        "error": "invalid_request",
                        "error_description": format!("AADSTS900144: mock Entra refused the request: {problem}"),
                        "error_codes": [900144]
                    }),
                );
            }
            if let Some(failure) = &entra.failure {
                return failure.clone();
            }
            let token = entra.issue(index);
            MockResponse::json(
                200,
                serde_json::json!({"token_type": "Bearer", "expires_in": entra.expires_in, "ext_expires_in": entra.expires_in, "access_token": token}),
            )
            .delayed(entra.delay)
        }
    }

    pub async fn start(&self) -> MockServer {
        MockServer::start(self.responder()).await
    }
}

/// An Entra error answer as the real service phrases it.
pub fn entra_error(status: u16, error: &str, code: u32, description: &str) -> MockResponse {
    MockResponse::json(
        status,
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: 0d6f4b2a-0000-4000-8000-000000000000 Correlation ID: 1e7a5c3b-0000-4000-8000-000000000000 Timestamp: 2025-01-01 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2025-01-01 00:00:00Z",
            "trace_id": "0d6f4b2a-0000-4000-8000-000000000000",
            "correlation_id": "1e7a5c3b-0000-4000-8000-000000000000",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
        }),
    )
}

/// Azure OpenAI with Entra auth: a chat completion of `content` for a live token of `ledger`,
/// 401 (counted in the ledger) for anything else.
pub fn azure_openai_accepting(
    ledger: Ledger,
    content: &'static str,
) -> impl Fn(&Recorded, usize) -> MockResponse + Send + Sync + 'static {
    move |request, _| match request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")) {
        Some(token) if ledger.accepts(token) => MockResponse::json(200, chat_completion(content)),
        _ => {
            ledger.rejected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            MockResponse::json(
                401,
                serde_json::json!({"error": {"code": "401", "message": "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The built binary as a child process
// ---------------------------------------------------------------------------------------------

/// How long a child process may take to start, answer or exit before the test gives up on it:
/// a guard against hanging, generous enough for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The service binary to run: a cleared environment (only `PATH` and what is added), a working
/// directory of the test's choosing (the binary reads `.env` there), no stdin.
pub struct Binary {
    command: tokio::process::Command,
}

/// What a finished run printed, line by line, and how it ended.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    pub fn stdout(&self) -> String {
        self.stdout.join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.join("\n")
    }

    /// stdout then stderr, without colours.
    pub fn output(&self) -> Vec<String> {
        self.stdout.iter().chain(&self.stderr).map(|l| strip_ansi(l)).collect()
    }
}

impl Binary {
    pub fn new(cwd: &Path) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-service"));
        command
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        Self { command }
    }

    /// Trusts the test CA (`SSL_CERT_FILE`), so the binary can reach the HTTPS mocks.
    pub fn trusting_test_ca(mut self) -> Self {
        self.command.env("SSL_CERT_FILE", &test_ca().ca_file);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.command.args(args);
        self
    }

    /// Sets `vars` (later ones win, and they win over what was set before).
    pub fn vars<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, vars: &[(K, V)]) -> Self {
        for (name, value) in vars {
            self.command.env(name, value);
        }
        self
    }

    pub fn spawn(mut self) -> Running {
        let mut child = self.command.spawn().expect("the binary starts");
        let (stdout, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            stdout.collect(child.stdout.take().unwrap()),
            stderr.collect(child.stderr.take().unwrap()),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Runs to completion (a subcommand like `check`), at most [`PATIENCE`].
    pub async fn run(self) -> Finished {
        self.spawn().wait_for_exit().await
    }
}

/// Lines a child printed on one stream, collected as they come.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> tokio::task::JoinHandle<()> {
        use tokio::io::AsyncBufReadExt;
        let into = self.0.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                into.lock().unwrap().push(line);
            }
        })
    }

    pub fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The binary running, its output collected line by line; killed if dropped while running.
pub struct Running {
    child: tokio::process::Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Everything printed so far, stdout then stderr, without colours.
    pub fn output(&self) -> Vec<String> {
        self.stdout
            .get()
            .iter()
            .chain(&self.stderr.get())
            .map(|l| strip_ansi(l))
            .collect()
    }

    /// [`Running::output`] as one text.
    pub fn logs(&self) -> String {
        self.output().join("\n")
    }

    /// Waits (at most [`PATIENCE`]) for the exit, then returns its status and all the output.
    pub async fn wait_for_exit(mut self) -> Finished {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("the child can be waited for"),
            Err(_) => panic!(
                "the process did not exit within {PATIENCE:?}; output so far: {:#?}",
                self.output()
            ),
        };
        for reader in self.readers.drain(..) {
            tokio::time::timeout(PATIENCE, reader)
                .await
                .expect("the output ends with the process")
                .unwrap();
        }
        Finished {
            status,
            stdout: self.stdout.get(),
            stderr: self.stderr.get(),
        }
    }

    /// Polls `GET /health` on `port` until it answers (at most [`PATIENCE`]) and returns the body.
    pub async fn wait_for_health(&mut self, port: u16) -> Value {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = std::time::Instant::now();
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

    /// Sends SIGTERM, as Kubernetes does.
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(kill.success());
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(self) -> Finished {
        self.sigterm();
        self.wait_for_exit().await
    }
}

/// Removes ANSI colour sequences (`ESC [ … m`) from a log line.
pub fn strip_ansi(line: &str) -> String {
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

/// A TOML file for `AI_SERVICE_CONFIG`, removed with the value.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: String,
}

/// Writes `toml` to a fresh file for `AI_SERVICE_CONFIG`.
pub fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ai-service.toml");
    std::fs::write(&path, toml).unwrap();
    ConfigFile {
        path: path.to_str().expect("a UTF-8 temp path").to_owned(),
        _dir: dir,
    }
}

/// The value of the Prometheus sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
}
