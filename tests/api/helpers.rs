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
        let dir = std::env::temp_dir().join(format!("ai-service-test-ca-{}", std::process::id()));
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
        ai_service::telemetry::init_with(ai_service::config::LogFormat::Text, "debug", std::io::stdout);
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
        Ok(ai_service::credential::BearerToken {
            secret: secrecy::SecretString::from(self.0.to_owned()),
            expires_on: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            credential: "FixedToken",
        })
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
