//! Typed settings, parsed and validated once at startup from the environment.
//!
//! The contract's rules live here and nowhere else: an empty value means unset,
//! booleans are `true` in any letter case, a local LLM takes precedence over
//! Azure OpenAI, which takes precedence over the public OpenAI API, and
//! `OPENAI_API_KEY` wins over `AZURE_OPENAI_API_KEY`. A partial configuration
//! is an error that names the missing variable; no configuration at all selects
//! the embedded offline generator.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Default scope of a Microsoft Entra token for Azure OpenAI.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Default Microsoft Entra authority (public cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// Default Azure OpenAI API version of the chat deployment.
pub const DEFAULT_API_VERSION: &str = "2024-12-01-preview";
/// Default API version of the image deployment when no chat version is set.
pub const DEFAULT_IMAGE_API_VERSION: &str = "2025-04-01-preview";
/// Base URL of the public OpenAI API.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Model used on the public OpenAI API (as in the original service).
pub const OPENAI_MODEL: &str = "gpt-5-mini";

/// A configuration that cannot start the service. The message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors such as Container Insights.
    Json,
}

/// Everything the service needs to know, parsed once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address to listen on (`HOST`); `None` listens on every IPv6 and IPv4 address.
    pub host: Option<IpAddr>,
    /// TCP port to listen on (`PORT`, default 5001).
    pub port: u16,
    /// Log format (`LOG_FORMAT`: `text` or `json`).
    pub log_format: LogFormat,
    /// Version reported by `/health` (`APP_VERSION`, default 0.1.0).
    pub app_version: String,
    /// Which model answers description requests.
    pub backend: Backend,
    /// The image pool on Azure OpenAI (the drop-in image variables' deployment, then the
    /// file's `[[image]]` entries); empty when no image deployment is configured.
    pub image: Vec<DeploymentSettings>,
    /// Failover, cooldown and circuit rules of the pools.
    pub routing: Routing,
    /// Sampling temperature sent upstream (`TEMPERATURE`, default 1.0).
    pub temperature: f64,
    /// Deadlines, retries and limits.
    pub limits: Limits,
    /// OpenTelemetry export (the standard `OTEL_*` variables).
    pub telemetry: TelemetrySettings,
    /// Warnings found while parsing, logged once telemetry is up.
    pub warnings: Vec<String>,
}

/// OpenTelemetry trace export. Only the variables this service acts on itself are here;
/// the SDK reads the rest (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`).
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// Where spans are sent: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`; `None` (no endpoint, or
    /// `OTEL_SDK_DISABLED=true`): no exporter, no spans built.
    pub traces_endpoint: Option<Url>,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` /
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; default 10 s).
    pub export_timeout: Duration,
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`: prompts and completions go
    /// on the spans.
    pub capture_content: bool,
}

impl TelemetrySettings {
    /// The endpoint as the startup log shows it: no credentials, no query.
    pub fn summary(&self) -> String {
        match &self.traces_endpoint {
            Some(url) => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                format!(
                    "traces=otlp-http:{shown} capture_message_content={}",
                    self.capture_content
                )
            }
            None => "traces=off".to_owned(),
        }
    }
}

/// The model behind `/generate/description`.
#[derive(Debug, Clone)]
pub enum Backend {
    /// No model configured: the embedded deterministic generator.
    Offline,
    /// An OpenAI-compatible server inside the cluster (KAITO, vLLM, Ollama).
    Local {
        /// Base URL, e.g. `http://workspace-phi-3-5-mini/v1`.
        endpoint: Url,
        /// Model id to pick from `GET {endpoint}/models`; the first one when unset.
        model: Option<String>,
    },
    /// Azure OpenAI.
    Azure(Box<AzureSettings>),
    /// The public OpenAI API.
    OpenAi {
        /// `OPENAI_API_KEY`.
        api_key: SecretString,
        /// `OPENAI_ORG_ID`, sent as `OpenAI-Organization`.
        organization: Option<String>,
        /// Base URL (`OPENAI_BASE_URL`, default the public API).
        base_url: Url,
    },
}

impl Backend {
    /// A short stable name, reported by `/health` and the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Offline => "offline",
            Backend::Local { .. } => "local",
            Backend::Azure(_) => "azure-openai",
            Backend::OpenAi { .. } => "openai",
        }
    }
}

/// Azure OpenAI: the chat pool and how every deployment in it is authenticated.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// Chat deployments in order of preference: the drop-in variables' deployment first,
    /// then the `[[chat]]` entries of `AI_SERVICE_CONFIG`. Never empty.
    pub chat: Vec<DeploymentSettings>,
    /// Key or Entra token, for every deployment of both pools.
    pub auth: AzureAuth,
}

impl AzureSettings {
    /// The first (preferred) chat deployment.
    pub fn primary(&self) -> &DeploymentSettings {
        &self.chat[0]
    }
}

/// One Azure OpenAI deployment of a pool.
#[derive(Debug, Clone)]
pub struct DeploymentSettings {
    /// Resource endpoint, e.g. `https://myaoai.openai.azure.com/`.
    pub endpoint: Url,
    /// Deployment name.
    pub deployment: String,
    /// Which API shape to call.
    pub api_version: ApiVersion,
    /// This resource's own key (from the variable its entry's `api_key_env` names), in key mode.
    pub api_key: Option<SecretString>,
}

impl DeploymentSettings {
    /// `host:port` of the endpoint, for metric labels and logs.
    pub fn endpoint_label(&self) -> String {
        endpoint_label(&self.endpoint)
    }
}

/// `host:port` of an endpoint (the port known from the scheme when not written), for metric
/// labels and logs.
pub fn endpoint_label(url: &Url) -> String {
    let host = url.host_str().unwrap_or("unknown");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The Azure OpenAI API a deployment is called with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiVersion {
    /// `openai/v1/...` with the deployment in the body's `model` and no `api-version`.
    V1,
    /// `openai/deployments/{deployment}/...?api-version=<this>`.
    Dated(String),
}

impl ApiVersion {
    fn parse(value: &str) -> Self {
        if value.eq_ignore_ascii_case("v1") {
            ApiVersion::V1
        } else {
            ApiVersion::Dated(value.to_owned())
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiVersion::V1 => f.write_str("v1"),
            ApiVersion::Dated(version) => f.write_str(version),
        }
    }
}

/// How a pool treats a failing deployment (contract, "Model routing").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Consecutive failures (5xx, connection, attempt timeout) that open a deployment's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit keeps requests away before one trial request.
    pub circuit_open: Duration,
    /// How long a deployment that answered 401, 403 or 404 is set aside (pools of two or more).
    pub set_aside: Duration,
    /// How long a 429 without `retry-after-ms`/`retry-after` cools a deployment.
    pub default_cooldown: Duration,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            circuit_failures: 3,
            circuit_open: Duration::from_secs(30),
            set_aside: Duration::from_secs(5 * 60),
            default_cooldown: Duration::from_secs(10),
        }
    }
}

/// How requests to Azure OpenAI are authenticated.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// `api-key` header: this key, unless the deployment has its own (`api_key_env`).
    /// `None` when every deployment has its own.
    ApiKey(Option<SecretString>),
    /// `Authorization: Bearer` with a Microsoft Entra token.
    Entra(Box<EntraSettings>),
}

/// Which Microsoft Entra credential to use, and for what scope.
#[derive(Debug, Clone)]
pub struct EntraSettings {
    /// Token scope (`AZURE_TOKEN_SCOPE`, default Cognitive Services).
    pub scope: String,
    /// Workload identity, when the AKS webhook injected its variables.
    pub workload_identity: Option<WorkloadIdentitySettings>,
    /// Managed identity (IMDS), only on explicit opt-in (`AZURE_USE_MANAGED_IDENTITY=true`).
    pub managed_identity: bool,
    /// `AZURE_CLIENT_ID`: the user-assigned identity, where one applies.
    pub client_id: Option<String>,
    /// `AZURE_TENANT_ID`, passed to the developer tools when set.
    pub tenant_id: Option<String>,
}

/// The variables injected by the Microsoft Entra Workload ID webhook.
#[derive(Debug, Clone)]
pub struct WorkloadIdentitySettings {
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_FEDERATED_TOKEN_FILE`, rotated by the kubelet.
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST` (with its trailing slash).
    pub authority_host: Url,
}

/// Deadlines, retries and resource limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Total budget of a description request; below the UI's 45 s.
    pub description_timeout: Duration,
    /// Total budget of an image request; below the UI's 240 s.
    pub image_timeout: Duration,
    /// Longest one description attempt may take before the next deployment is tried.
    pub description_attempt_timeout: Duration,
    /// Longest one image attempt may take before the next deployment is tried.
    pub image_attempt_timeout: Duration,
    /// TCP+TLS connect timeout to an upstream.
    pub connect_timeout: Duration,
    /// Retries of a throttled or failed upstream call (after the first attempt).
    pub max_retries: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Description requests served at once; the excess is shed with 503.
    pub max_concurrent_descriptions: usize,
    /// Image requests served at once (each holds a ~2 MB image); the excess is shed with 503.
    pub max_concurrent_images: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            description_timeout: Duration::from_secs(40),
            image_timeout: Duration::from_secs(230),
            // Half the budget, so a hung deployment leaves time for another attempt (a
            // gpt-5-mini description takes a few seconds, a gpt-image-1 picture up to a minute).
            description_attempt_timeout: Duration::from_secs(20),
            image_attempt_timeout: Duration::from_secs(115),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            max_body_bytes: 64 * 1024,
            max_concurrent_descriptions: 512,
            // An image answer is ~2.8 MB of base64, held about four times over while it is
            // read, parsed, turned into a data URL and serialised: ~11 MB per image in
            // flight. Four of them stay under 64 MB next to the idle ~12 MB, which leaves
            // the 128 Mi pod limit room to spare.
            max_concurrent_images: 4,
            shutdown_grace: Duration::from_secs(240),
        }
    }
}

/// The raw settings: the variables (all strings, since the contract's rules for empty
/// values and booleans differ from `config`'s), merged over the optional TOML file, whose
/// pools and routing table are typed. `config` lower-cases the variables' names.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    /// `[[chat]]` entries of the file.
    #[serde(default)]
    chat: Vec<RawDeployment>,
    /// `[[image]]` entries of the file.
    #[serde(default)]
    image: Vec<RawDeployment>,
    /// `[routing]` of the file.
    #[serde(default)]
    routing: RawRouting,
    host: Option<String>,
    port: Option<String>,
    log_format: Option<String>,
    app_version: Option<String>,
    temperature: Option<String>,
    use_local_llm: Option<String>,
    local_llm_endpoint: Option<String>,
    local_llm_model: Option<String>,
    use_azure_openai: Option<String>,
    use_azure_ad: Option<String>,
    azure_openai_endpoint: Option<String>,
    azure_openai_deployment_name: Option<String>,
    azure_openai_api_version: Option<String>,
    azure_openai_api_key: Option<String>,
    openai_api_key: Option<String>,
    openai_org_id: Option<String>,
    openai_base_url: Option<String>,
    azure_openai_image_endpoint: Option<String>,
    azure_openai_image_deployment_name: Option<String>,
    azure_openai_image_api_version: Option<String>,
    azure_openai_dalle_endpoint: Option<String>,
    azure_openai_dalle_deployment_name: Option<String>,
    ai_endpoint: Option<String>,
    model_name: Option<String>,
    azure_client_id: Option<String>,
    azure_tenant_id: Option<String>,
    azure_federated_token_file: Option<String>,
    azure_authority_host: Option<String>,
    azure_token_scope: Option<String>,
    azure_use_managed_identity: Option<String>,
    description_timeout_seconds: Option<String>,
    image_timeout_seconds: Option<String>,
    description_attempt_timeout_seconds: Option<String>,
    image_attempt_timeout_seconds: Option<String>,
    upstream_connect_timeout_seconds: Option<String>,
    upstream_max_retries: Option<String>,
    max_body_bytes: Option<String>,
    max_concurrent_descriptions: Option<String>,
    max_concurrent_images: Option<String>,
    shutdown_grace_seconds: Option<String>,
    otel_sdk_disabled: Option<String>,
    otel_exporter_otlp_endpoint: Option<String>,
    otel_exporter_otlp_traces_endpoint: Option<String>,
    otel_exporter_otlp_protocol: Option<String>,
    otel_exporter_otlp_traces_protocol: Option<String>,
    otel_exporter_otlp_timeout: Option<String>,
    otel_exporter_otlp_traces_timeout: Option<String>,
    otel_instrumentation_genai_capture_message_content: Option<String>,
}

/// One `[[chat]]` or `[[image]]` entry as written; checked in [`pool_entries`].
#[derive(Debug, Default, Deserialize)]
struct RawDeployment {
    endpoint: Option<String>,
    deployment: Option<String>,
    api_version: Option<String>,
    api_key_env: Option<String>,
}

/// `[routing]`: every value optional, the defaults in [`Routing::default`].
#[derive(Debug, Default, Deserialize)]
struct RawRouting {
    circuit_failures: Option<u32>,
    circuit_open_seconds: Option<u64>,
    set_aside_seconds: Option<u64>,
    cooldown_seconds: Option<u64>,
}

/// The variable naming the optional TOML file.
pub const CONFIG_FILE_VARIABLE: &str = "AI_SERVICE_CONFIG";

impl Settings {
    /// Reads the process environment (after `.env` was loaded by `main`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(std::env::vars().collect())
    }

    /// Parses settings from a map of variables (and the file `AI_SERVICE_CONFIG` names);
    /// tests use this instead of the process env.
    pub fn from_source(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k, v.trim().to_owned())).collect();
        let file = vars
            .get(CONFIG_FILE_VARIABLE)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        let environment = config::Environment::default()
            .source(Some(vars.clone()))
            .ignore_empty(true)
            .try_parsing(false);
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            let source = file_source(path)?;
            reject_unknown_keys(path, source.clone())?;
            builder = builder.add_source(source);
        }
        // Added last, so a variable wins over the same single value in the file.
        let raw: RawEnv = builder
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|err| match &file {
                Some(path) => ConfigError::new(format!("{CONFIG_FILE_VARIABLE} file {}: {err}", path.display())),
                None => ConfigError::new(format!("could not read the environment: {err}")),
            })?;
        Self::from_raw(raw, &vars, file.as_deref())
    }

    fn from_raw(raw: RawEnv, vars: &HashMap<String, String>, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let entries = FileEntries { raw: &raw, vars, file };
        let backend = backend(&raw, &entries, &mut warnings)?;
        let image = image(&raw, &entries, &backend, &mut warnings)?;
        let routing = routing(&raw.routing)?;
        let temperature = temperature(raw.temperature.as_deref(), &mut warnings);
        let limits = limits(&raw)?;
        let telemetry = telemetry(&raw)?;
        if raw.ai_endpoint.is_some() || raw.model_name.is_some() {
            warnings.push(
                "AI_ENDPOINT and MODEL_NAME are no longer supported and are ignored: \
                 set USE_LOCAL_LLM=True, LOCAL_LLM_ENDPOINT and LOCAL_LLM_MODEL instead"
                    .to_owned(),
            );
        }
        let log_format = match raw.log_format.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "LOG_FORMAT must be `text` or `json`, not `{other}`"
                )));
            }
        };
        Ok(Self {
            host: raw.host.as_deref().map(listen_address).transpose()?,
            port: parse_number(raw.port.as_deref(), "PORT")?.unwrap_or(5001),
            log_format,
            app_version: raw.app_version.unwrap_or_else(|| "0.1.0".to_owned()),
            backend,
            image,
            routing,
            temperature,
            limits,
            telemetry,
            warnings,
        })
    }

    /// The names of what `/health` advertises.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let mut capabilities = vec!["description"];
        if !self.image.is_empty() || matches!(self.backend, Backend::Offline) {
            capabilities.push("image");
        }
        capabilities
    }

    /// One line for the startup log: what is configured, secrets shown only as set/unset.
    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!(
                "host={}",
                self.host
                    .map_or_else(|| "<all IPv6 and IPv4>".to_owned(), |ip| ip.to_string())
            ),
            format!("port={}", self.port),
            format!("version={}", self.app_version),
            format!("backend={}", self.backend.name()),
        ];
        match &self.backend {
            Backend::Offline => {}
            Backend::Local { endpoint, model } => {
                parts.push(format!("local_endpoint={endpoint}"));
                parts.push(format!("local_model={}", model.as_deref().unwrap_or("<first listed>")));
            }
            Backend::Azure(azure) => {
                parts.push(format!("chat_pool=[{}]", pool_summary(&azure.chat)));
                match &azure.auth {
                    AzureAuth::ApiKey(_) => parts.push("auth=api-key api_key=set".to_owned()),
                    AzureAuth::Entra(entra) => {
                        parts.push(format!("auth=entra scope={}", entra.scope));
                        match &entra.workload_identity {
                            Some(wi) => parts.push(format!(
                                "credential=workload-identity client_id={} tenant_id={} token_file={} authority={}",
                                wi.client_id,
                                wi.tenant_id,
                                wi.token_file.display(),
                                wi.authority_host
                            )),
                            None if entra.managed_identity => parts.push(format!(
                                "credential=managed-identity client_id={}",
                                entra.client_id.as_deref().unwrap_or("<system-assigned>")
                            )),
                            None => parts.push("credential=developer-tools (az, azd)".to_owned()),
                        }
                    }
                }
            }
            Backend::OpenAi {
                organization, base_url, ..
            } => {
                parts.push(format!("base_url={base_url}"));
                parts.push("api_key=set".to_owned());
                parts.push(format!(
                    "organization={}",
                    if organization.is_some() { "set" } else { "unset" }
                ));
            }
        }
        if !self.image.is_empty() {
            parts.push(format!("image_pool=[{}]", pool_summary(&self.image)));
        } else if matches!(self.backend, Backend::Offline) {
            parts.push("image=offline-placeholder".to_owned());
        } else {
            parts.push("image=unset".to_owned());
        }
        if matches!(self.backend, Backend::Azure(_)) {
            let r = &self.routing;
            parts.push(format!(
                "routing=circuit_failures:{},circuit_open:{}s,set_aside:{}s,cooldown:{}s",
                r.circuit_failures,
                r.circuit_open.as_secs(),
                r.set_aside.as_secs(),
                r.default_cooldown.as_secs()
            ));
        }
        parts.push(self.telemetry.summary());
        parts.push(format!("temperature={}", self.temperature));
        parts.push(format!(
            "description_timeout={}s image_timeout={}s max_retries={} max_body_bytes={}",
            self.limits.description_timeout.as_secs(),
            self.limits.image_timeout.as_secs(),
            self.limits.max_retries,
            self.limits.max_body_bytes
        ));
        parts.join(" ")
    }
}

/// `deployment@host:port(api-version[, own key])` for each deployment of a pool.
fn pool_summary(pool: &[DeploymentSettings]) -> String {
    pool.iter()
        .map(|d| {
            let key = if d.api_key.is_some() { ",own key set" } else { "" };
            format!("{}@{}({}{key})", d.deployment, d.endpoint_label(), d.api_version)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The TOML file `AI_SERVICE_CONFIG` names, read once here.
fn file_source(path: &Path) -> Result<config::File<config::FileSourceString, config::FileFormat>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(format!(
            "{CONFIG_FILE_VARIABLE} names {}, which cannot be read: {err}",
            path.display()
        ))
    })?;
    Ok(config::File::from_str(&text, config::FileFormat::Toml))
}

/// A misspelt key in the file would otherwise be ignored without a word: refuse it, naming
/// the file, the entry and the key.
fn reject_unknown_keys(
    path: &Path,
    source: config::File<config::FileSourceString, config::FileFormat>,
) -> Result<(), ConfigError> {
    let in_file =
        |message: String| ConfigError::new(format!("{CONFIG_FILE_VARIABLE} file {}: {message}", path.display()));
    let file_only = config::Config::builder()
        .add_source(source)
        .build()
        .map_err(|err| in_file(format!("not valid TOML: {err}")))?;
    let mut unknown = Vec::new();
    let _: RawEnv = serde_ignored::deserialize(file_only, |key| unknown.push(describe_key(&key)))
        .map_err(|err| in_file(err.to_string()))?;
    match unknown.first() {
        None => Ok(()),
        Some(key) => Err(in_file(format!(
            "unknown key {key}; the file takes [[chat]] and [[image]] entries (endpoint, deployment, \
             api_version, api_key_env), a [routing] table (circuit_failures, circuit_open_seconds, \
             set_aside_seconds, cooldown_seconds) and the service's variables in lower case"
        ))),
    }
}

/// `[[chat]] entry 2, key `endpont`` for a path inside a pool, `` `name` `` for the rest.
fn describe_key(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Map { parent, key } => match parent {
            Path::Seq { parent, index } => match parent {
                Path::Map { parent: _, key: table } => format!("[[{table}]] entry {}, key `{key}`", index + 1),
                _ => format!("`{path}`"),
            },
            Path::Map { key: table, .. } => format!("[{table}], key `{key}`"),
            _ => format!("`{key}`"),
        },
        _ => format!("`{path}`"),
    }
}

/// What the pools are built from: the file's entries and the variables they may name.
struct FileEntries<'a> {
    raw: &'a RawEnv,
    vars: &'a HashMap<String, String>,
    file: Option<&'a Path>,
}

impl FileEntries<'_> {
    /// The `[[table]]` entries as deployments, each checked, with the file, entry and key
    /// named in any error. `api_version` defaults to `default_version`.
    fn pool(&self, table: &str, default_version: &str, key_mode: bool) -> Result<Vec<DeploymentSettings>, ConfigError> {
        let entries = if table == "chat" {
            &self.raw.chat
        } else {
            &self.raw.image
        };
        let path = self.file.map(|p| p.display().to_string()).unwrap_or_default();
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let at = |message: String| {
                    ConfigError::new(format!(
                        "{CONFIG_FILE_VARIABLE} file {path}: [[{table}]] entry {}: {message}",
                        index + 1
                    ))
                };
                let endpoint_text = entry.endpoint.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| at("`endpoint` is missing".to_owned()))?;
                let deployment = entry.deployment.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| at("`deployment` is missing".to_owned()))?;
                let endpoint = Url::parse(endpoint_text)
                    .ok()
                    .filter(|url| url.scheme() == "https" && url.host_str().is_some())
                    .ok_or_else(|| at(format!("`endpoint` must be an https URL such as https://myaoai.openai.azure.com/, not `{endpoint_text}`")))?;
                let api_key = match entry.api_key_env.as_deref() {
                    None => None,
                    Some(name) if !key_mode => {
                        return Err(at(format!(
                            "`api_key_env` names {name}, but USE_AZURE_AD=True authenticates every entry with one \
                             Microsoft Entra token; remove the key"
                        )));
                    }
                    Some(name) => match self.vars.get(name).filter(|v| !v.is_empty()) {
                        Some(key) => Some(SecretString::from(key.clone())),
                        None => return Err(at(format!("`api_key_env` names {name}, which is not set"))),
                    },
                };
                Ok(DeploymentSettings {
                    endpoint,
                    deployment: deployment.to_owned(),
                    api_version: ApiVersion::parse(entry.api_version.as_deref().unwrap_or(default_version)),
                    api_key,
                })
            })
            .collect()
    }
}

fn routing(raw: &RawRouting) -> Result<Routing, ConfigError> {
    let d = Routing::default();
    let seconds = |value: Option<u64>, key: &str, default: Duration| match value {
        Some(0) => Err(ConfigError::new(format!(
            "{CONFIG_FILE_VARIABLE} file: [routing] {key} must be at least 1"
        ))),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    Ok(Routing {
        circuit_failures: match raw.circuit_failures {
            Some(0) => {
                return Err(ConfigError::new(format!(
                    "{CONFIG_FILE_VARIABLE} file: [routing] circuit_failures must be at least 1"
                )));
            }
            Some(n) => n,
            None => d.circuit_failures,
        },
        circuit_open: seconds(raw.circuit_open_seconds, "circuit_open_seconds", d.circuit_open)?,
        set_aside: seconds(raw.set_aside_seconds, "set_aside_seconds", d.set_aside)?,
        default_cooldown: seconds(raw.cooldown_seconds, "cooldown_seconds", d.default_cooldown)?,
    })
}

fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_url(value: &str, name: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|err| {
        ConfigError::new(format!(
            "{name} must be an absolute URL (e.g. https://myaoai.openai.azure.com/), not `{value}`: {err}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(format!(
            "{name} must use http or https, not `{value}`"
        )));
    }
    Ok(url)
}

/// `HOST`: one IP address, as uvicorn's `--host` takes it (`[::1]` is accepted too).
fn listen_address(value: &str) -> Result<IpAddr, ConfigError> {
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    bare.parse().map_err(|_| {
        ConfigError::new(format!(
            "HOST must be an IP address to listen on (e.g. 127.0.0.1, ::1, 0.0.0.0 or ::), not `{value}`; \
             leave it unset to listen on every IPv6 and IPv4 address"
        ))
    })
}

/// The trace export settings; a malformed endpoint, protocol or timeout stops startup
/// naming its variable, as any other setting does.
fn telemetry(raw: &RawEnv) -> Result<TelemetrySettings, ConfigError> {
    let (name, protocol) = match (
        &raw.otel_exporter_otlp_traces_protocol,
        &raw.otel_exporter_otlp_protocol,
    ) {
        (Some(p), _) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
        (None, p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p.as_ref()),
    };
    if let Some(other) = protocol.filter(|p| p.as_str() != "http/protobuf") {
        return Err(ConfigError::new(format!(
            "{name} is `{other}`; this service exports traces over OTLP/HTTP with protobuf only: \
             set it to `http/protobuf` or leave it unset (a collector's port 4318)"
        )));
    }
    let endpoint = |name: &str, value: &str, path: &str| {
        let url = Url::parse(value)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "{name} must be an http:// or https:// URL (an OTLP/HTTP collector, e.g. http://otel-collector:4318), not `{value}`"
                ))
            })?;
        if path.is_empty() {
            return Ok(url);
        }
        // The base URL's path is kept: `/v1/traces` is appended to it, per the specification.
        let mut url = url;
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        Ok(url)
    };
    let disabled = is_true(raw.otel_sdk_disabled.as_deref());
    let traces_endpoint = match (
        &raw.otel_exporter_otlp_traces_endpoint,
        &raw.otel_exporter_otlp_endpoint,
    ) {
        _ if disabled => None,
        (Some(full), _) => Some(endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full, "")?),
        (None, Some(base)) => Some(endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", base, "v1/traces")?),
        (None, None) => None,
    };
    let timeout = match (&raw.otel_exporter_otlp_traces_timeout, &raw.otel_exporter_otlp_timeout) {
        (Some(ms), _) => parse_number::<u64>(Some(ms), "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")?,
        (None, ms) => parse_number::<u64>(ms.as_deref(), "OTEL_EXPORTER_OTLP_TIMEOUT")?,
    };
    Ok(TelemetrySettings {
        traces_endpoint,
        export_timeout: Duration::from_millis(timeout.unwrap_or(10_000).max(1)),
        capture_content: is_true(raw.otel_instrumentation_genai_capture_message_content.as_deref()),
    })
}

fn parse_number<T: std::str::FromStr>(value: Option<&str>, name: &str) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| ConfigError::new(format!("{name} must be a non-negative whole number, not `{v}`")))
        })
        .transpose()
}

fn required<'a>(value: &'a Option<String>, name: &str, why: &str) -> Result<&'a str, ConfigError> {
    value
        .as_deref()
        .ok_or_else(|| ConfigError::new(format!("{name} is not set; it is required {why}")))
}

fn backend(raw: &RawEnv, entries: &FileEntries<'_>, warnings: &mut Vec<String>) -> Result<Backend, ConfigError> {
    if is_true(raw.use_local_llm.as_deref()) {
        let endpoint = required(&raw.local_llm_endpoint, "LOCAL_LLM_ENDPOINT", "when USE_LOCAL_LLM=True")?;
        return Ok(Backend::Local {
            endpoint: parse_url(endpoint, "LOCAL_LLM_ENDPOINT")?,
            model: raw.local_llm_model.clone(),
        });
    }
    if is_true(raw.use_azure_openai.as_deref()) {
        let why = "when USE_AZURE_OPENAI=True and AI_SERVICE_CONFIG has no [[chat]] entry";
        let auth = if is_true(raw.use_azure_ad.as_deref()) {
            if raw.azure_openai_api_key.is_some() || raw.openai_api_key.is_some() {
                warnings.push(
                    "USE_AZURE_AD=True: the API key variables are set but ignored; remove them from the pod".to_owned(),
                );
            }
            AzureAuth::Entra(Box::new(entra(raw)?))
        } else {
            AzureAuth::ApiKey(
                raw.openai_api_key
                    .clone()
                    .or_else(|| raw.azure_openai_api_key.clone())
                    .map(SecretString::from),
            )
        };
        let key_mode = matches!(auth, AzureAuth::ApiKey(_));
        let version = raw
            .azure_openai_api_version
            .clone()
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned());
        let mut chat = Vec::new();
        // The drop-in variables' deployment comes first; the file alone may define the pool.
        if raw.azure_openai_endpoint.is_some() || raw.azure_openai_deployment_name.is_some() || raw.chat.is_empty() {
            chat.push(DeploymentSettings {
                endpoint: parse_url(
                    required(&raw.azure_openai_endpoint, "AZURE_OPENAI_ENDPOINT", why)?,
                    "AZURE_OPENAI_ENDPOINT",
                )?,
                deployment: required(&raw.azure_openai_deployment_name, "AZURE_OPENAI_DEPLOYMENT_NAME", why)?
                    .to_owned(),
                api_version: ApiVersion::parse(&version),
                api_key: None,
            });
        }
        chat.extend(entries.pool("chat", &version, key_mode)?);
        require_keys(&auth, &chat)?;
        return Ok(Backend::Azure(Box::new(AzureSettings { chat, auth })));
    }
    if let Some(key) = &raw.openai_api_key {
        let base_url = match &raw.openai_base_url {
            Some(url) => parse_url(url, "OPENAI_BASE_URL")?,
            None => parse_url(OPENAI_BASE_URL, "OPENAI_BASE_URL")?,
        };
        return Ok(Backend::OpenAi {
            api_key: SecretString::from(key.clone()),
            organization: raw.openai_org_id.clone(),
            base_url,
        });
    }
    // Nothing selects a backend: any model variable that is set is a half-done configuration.
    let azure_hint = "USE_AZURE_OPENAI is not True; set USE_AZURE_OPENAI=True to use Azure OpenAI";
    let partial = [
        (raw.azure_openai_endpoint.is_some(), "AZURE_OPENAI_ENDPOINT", azure_hint),
        (
            raw.azure_openai_deployment_name.is_some(),
            "AZURE_OPENAI_DEPLOYMENT_NAME",
            azure_hint,
        ),
        (raw.azure_openai_api_key.is_some(), "AZURE_OPENAI_API_KEY", azure_hint),
        (is_true(raw.use_azure_ad.as_deref()), "USE_AZURE_AD", azure_hint),
        (
            raw.openai_org_id.is_some(),
            "OPENAI_ORG_ID",
            "OPENAI_API_KEY is not set; set it to use the public OpenAI API",
        ),
        (
            raw.local_llm_endpoint.is_some(),
            "LOCAL_LLM_ENDPOINT",
            "USE_LOCAL_LLM is not True; set USE_LOCAL_LLM=True to use it",
        ),
    ];
    if let Some((_, name, hint)) = partial.iter().find(|(set, _, _)| *set) {
        return Err(ConfigError::new(format!("{name} is set but {hint}")));
    }
    Ok(Backend::Offline)
}

fn entra(raw: &RawEnv) -> Result<EntraSettings, ConfigError> {
    let workload_identity = match &raw.azure_federated_token_file {
        Some(file) => {
            // The webhook injected the token file, so the pod label is right: a missing client id
            // means the ServiceAccount's annotation is missing or empty.
            let why = "with AZURE_FEDERATED_TOKEN_FILE (workload identity); check the ServiceAccount's annotation \
                       azure.workload.identity/client-id, then restart the pod";
            let authority = raw.azure_authority_host.as_deref().unwrap_or(DEFAULT_AUTHORITY_HOST);
            let mut authority_host = parse_url(authority, "AZURE_AUTHORITY_HOST")?;
            if authority_host.scheme() != "https" {
                return Err(ConfigError::new(format!(
                    "AZURE_AUTHORITY_HOST must use https, not `{authority}`"
                )));
            }
            // The webhook sets a trailing slash; add it when absent so joining keeps the host's path.
            if !authority_host.path().ends_with('/') {
                let path = format!("{}/", authority_host.path());
                authority_host.set_path(&path);
            }
            Some(WorkloadIdentitySettings {
                client_id: required(&raw.azure_client_id, "AZURE_CLIENT_ID", why)?.to_owned(),
                tenant_id: required(&raw.azure_tenant_id, "AZURE_TENANT_ID", why)?.to_owned(),
                token_file: PathBuf::from(file),
                authority_host,
            })
        }
        None => None,
    };
    Ok(EntraSettings {
        scope: raw
            .azure_token_scope
            .clone()
            .unwrap_or_else(|| COGNITIVE_SERVICES_SCOPE.to_owned()),
        workload_identity,
        managed_identity: is_true(raw.azure_use_managed_identity.as_deref()),
        client_id: raw.azure_client_id.clone(),
        tenant_id: raw.azure_tenant_id.clone(),
    })
}

/// In key mode every deployment needs a key: its own (`api_key_env`) or the shared one.
fn require_keys(auth: &AzureAuth, pool: &[DeploymentSettings]) -> Result<(), ConfigError> {
    match auth {
        AzureAuth::ApiKey(None) if pool.iter().any(|d| d.api_key.is_none()) => Err(ConfigError::new(
            "AZURE_OPENAI_API_KEY is not set; it is required when USE_AZURE_OPENAI=True \
             and USE_AZURE_AD is not True (or set USE_AZURE_AD=True for passwordless Entra auth)",
        )),
        _ => Ok(()),
    }
}

fn image(
    raw: &RawEnv,
    entries: &FileEntries<'_>,
    backend: &Backend,
    warnings: &mut Vec<String>,
) -> Result<Vec<DeploymentSettings>, ConfigError> {
    let deployment = match (
        &raw.azure_openai_image_deployment_name,
        &raw.azure_openai_dalle_deployment_name,
    ) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(name)) => {
            warnings.push(
                "AZURE_OPENAI_DALLE_DEPLOYMENT_NAME is deprecated: rename it to AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME"
                    .to_owned(),
            );
            Some(name.clone())
        }
        (None, None) => None,
    };
    let endpoint = match (&raw.azure_openai_image_endpoint, &raw.azure_openai_dalle_endpoint) {
        (Some(url), _) => Some(parse_url(url, "AZURE_OPENAI_IMAGE_ENDPOINT")?),
        (None, Some(url)) => {
            warnings
                .push("AZURE_OPENAI_DALLE_ENDPOINT is deprecated: rename it to AZURE_OPENAI_IMAGE_ENDPOINT".to_owned());
            Some(parse_url(url, "AZURE_OPENAI_DALLE_ENDPOINT")?)
        }
        (None, None) => None,
    };
    if deployment.is_none() && raw.image.is_empty() {
        return Ok(Vec::new());
    }
    let Backend::Azure(azure) = backend else {
        return Err(ConfigError::new(
            "AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME is set but USE_AZURE_OPENAI is not True; \
             image generation runs on Azure OpenAI with the same authentication as descriptions",
        ));
    };
    let version = raw
        .azure_openai_image_api_version
        .clone()
        .or_else(|| raw.azure_openai_api_version.clone())
        .unwrap_or_else(|| DEFAULT_IMAGE_API_VERSION.to_owned());
    let mut pool = Vec::new();
    if let Some(deployment) = deployment {
        let endpoint = match (endpoint, &raw.azure_openai_endpoint) {
            (Some(endpoint), _) => endpoint,
            (None, Some(url)) => parse_url(url, "AZURE_OPENAI_ENDPOINT")?,
            (None, None) => {
                return Err(ConfigError::new(
                    "AZURE_OPENAI_IMAGE_ENDPOINT is not set; it is required for AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME \
                     when AZURE_OPENAI_ENDPOINT is not set",
                ));
            }
        };
        pool.push(DeploymentSettings {
            endpoint,
            deployment,
            api_version: ApiVersion::parse(&version),
            api_key: None,
        });
    }
    pool.extend(entries.pool("image", &version, matches!(azure.auth, AzureAuth::ApiKey(_)))?);
    require_keys(&azure.auth, &pool)?;
    Ok(pool)
}

fn temperature(value: Option<&str>, warnings: &mut Vec<String>) -> f64 {
    let Some(value) = value else { return 1.0 };
    match value.parse::<f64>() {
        Ok(t) if (0.0..=2.0).contains(&t) => t,
        _ => {
            warnings.push(format!(
                "TEMPERATURE `{value}` is not a number between 0 and 2; using 1.0"
            ));
            1.0
        }
    }
}

fn seconds(value: Option<&str>, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match parse_number::<u64>(value, name)? {
        Some(0) => Err(ConfigError::new(format!("{name} must be at least 1"))),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    }
}

fn limits(raw: &RawEnv) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let positive = |value: Option<&str>, name: &str, default: usize| -> Result<usize, ConfigError> {
        match parse_number::<usize>(value, name)? {
            Some(0) => Err(ConfigError::new(format!("{name} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    Ok(Limits {
        description_timeout: seconds(
            raw.description_timeout_seconds.as_deref(),
            "DESCRIPTION_TIMEOUT_SECONDS",
            d.description_timeout,
        )?,
        image_timeout: seconds(
            raw.image_timeout_seconds.as_deref(),
            "IMAGE_TIMEOUT_SECONDS",
            d.image_timeout,
        )?,
        description_attempt_timeout: seconds(
            raw.description_attempt_timeout_seconds.as_deref(),
            "DESCRIPTION_ATTEMPT_TIMEOUT_SECONDS",
            d.description_attempt_timeout,
        )?,
        image_attempt_timeout: seconds(
            raw.image_attempt_timeout_seconds.as_deref(),
            "IMAGE_ATTEMPT_TIMEOUT_SECONDS",
            d.image_attempt_timeout,
        )?,
        connect_timeout: seconds(
            raw.upstream_connect_timeout_seconds.as_deref(),
            "UPSTREAM_CONNECT_TIMEOUT_SECONDS",
            d.connect_timeout,
        )?,
        max_retries: parse_number(raw.upstream_max_retries.as_deref(), "UPSTREAM_MAX_RETRIES")?
            .unwrap_or(d.max_retries),
        max_body_bytes: positive(raw.max_body_bytes.as_deref(), "MAX_BODY_BYTES", d.max_body_bytes)?,
        max_concurrent_descriptions: positive(
            raw.max_concurrent_descriptions.as_deref(),
            "MAX_CONCURRENT_DESCRIPTIONS",
            d.max_concurrent_descriptions,
        )?,
        max_concurrent_images: positive(
            raw.max_concurrent_images.as_deref(),
            "MAX_CONCURRENT_IMAGES",
            d.max_concurrent_images,
        )?,
        shutdown_grace: seconds(
            raw.shutdown_grace_seconds.as_deref(),
            "SHUTDOWN_GRACE_SECONDS",
            d.shutdown_grace,
        )?,
    })
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_source(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_traces_endpoint_comes_from_the_standard_variables_and_is_off_without_one() {
        assert!(settings(&[]).unwrap().telemetry.traces_endpoint.is_none());
        let base = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318")]).unwrap();
        assert_eq!(
            base.telemetry.traces_endpoint.unwrap().as_str(),
            "http://otel-collector:4318/v1/traces"
        );
        // A base with a path keeps it; the signal's own variable is taken as it is, and wins.
        let prefixed = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://ingest.example.com/otlp/")]).unwrap();
        assert_eq!(
            prefixed.telemetry.traces_endpoint.unwrap().as_str(),
            "https://ingest.example.com/otlp/v1/traces"
        );
        let full = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/custom"),
        ])
        .unwrap();
        assert_eq!(
            full.telemetry.traces_endpoint.unwrap().as_str(),
            "http://collector:4318/custom"
        );
        let disabled = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert!(disabled.telemetry.traces_endpoint.is_none());
        assert!(disabled.summary().contains("traces=off"));
    }

    #[test]
    fn a_bad_traces_setting_stops_startup_naming_its_variable() {
        for (vars, named) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://collector:4317")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
        ] {
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
    }

    #[test]
    fn the_startup_line_shows_the_collector_without_credentials() {
        let s = settings(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://user:secret-pass@ingest.example.com?key=secret-key",
            ),
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
        ])
        .unwrap();
        let line = s.summary();
        assert!(
            line.contains("traces=otlp-http:https://ingest.example.com/v1/traces"),
            "{line}"
        );
        assert!(line.contains("capture_message_content=true"), "{line}");
        assert!(!line.contains("secret"), "{line}");
    }

    #[test]
    fn nothing_configured_selects_the_offline_generator() {
        let s = settings(&[]).unwrap();
        assert!(matches!(s.backend, Backend::Offline));
        assert_eq!(s.port, 5001);
        assert_eq!(s.host, None);
        assert_eq!(s.app_version, "0.1.0");
        assert_eq!(s.capabilities(), vec!["description", "image"]);
    }

    #[test]
    fn host_takes_one_ip_address_and_names_itself_when_it_is_not_one() {
        assert_eq!(
            settings(&[("HOST", "127.0.0.1")]).unwrap().host,
            Some([127, 0, 0, 1].into())
        );
        assert_eq!(
            settings(&[("HOST", "[::1]")]).unwrap().host,
            Some(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(settings(&[("HOST", "")]).unwrap().host, None);
        for bad in ["localhost", "127.0.0.1:5001", "300.1.1.1"] {
            let err = settings(&[("HOST", bad)]).unwrap_err().to_string();
            assert!(err.contains("HOST must be an IP address") && err.contains(bad), "{err}");
        }
    }

    /// Settings from `vars` plus a TOML file with `toml` (kept alive by the returned guard).
    fn with_file(vars: &[(&str, &str)], toml: &str) -> (Result<Settings, ConfigError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ai-service.toml");
        std::fs::write(&path, toml).unwrap();
        let mut all: Vec<(&str, &str)> = vars.to_vec();
        let path = path.to_str().unwrap().to_owned();
        all.push(("AI_SERVICE_CONFIG", &path));
        (settings(&all), dir)
    }

    const KEYED: [(&str, &str); 2] = [("USE_AZURE_OPENAI", "True"), ("AZURE_OPENAI_API_KEY", "k")];

    #[test]
    fn the_file_alone_may_define_both_pools_after_the_drop_in_deployment() {
        let toml = r#"
            [[chat]]
            endpoint = "https://shop-eastus.openai.azure.com/"
            deployment = "gpt-5-mini"
            api_version = "v1"

            [[chat]]
            endpoint = "https://shop-swedencentral.openai.azure.com/"
            deployment = "gpt-5-mini"

            [[image]]
            endpoint = "https://shop-eastus.openai.azure.com/"
            deployment = "gpt-image-1"

            [routing]
            circuit_failures = 5
            cooldown_seconds = 3
        "#;
        let (s, _dir) = with_file(&KEYED, toml);
        let s = s.unwrap();
        let Backend::Azure(azure) = &s.backend else { panic!() };
        let chat: Vec<(String, String)> = azure
            .chat
            .iter()
            .map(|d| (d.endpoint_label(), d.api_version.to_string()))
            .collect();
        assert_eq!(
            chat,
            [
                ("shop-eastus.openai.azure.com:443".to_owned(), "v1".to_owned()),
                (
                    "shop-swedencentral.openai.azure.com:443".to_owned(),
                    DEFAULT_API_VERSION.to_owned()
                )
            ]
        );
        assert_eq!(s.image.len(), 1);
        assert_eq!(s.image[0].api_version.to_string(), DEFAULT_IMAGE_API_VERSION);
        assert_eq!(s.capabilities(), vec!["description", "image"]);
        assert_eq!(s.routing.circuit_failures, 5);
        assert_eq!(s.routing.default_cooldown, Duration::from_secs(3));
        assert_eq!(s.routing.circuit_open, Duration::from_secs(30));

        // With the drop-in variables, their deployment comes first.
        let mut vars = KEYED.to_vec();
        vars.extend([
            ("AZURE_OPENAI_ENDPOINT", "https://primary.openai.azure.com/"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "primary"),
        ]);
        let (s, _dir) = with_file(&vars, toml);
        let Backend::Azure(azure) = &s.unwrap().backend else {
            panic!()
        };
        let names: Vec<&str> = azure.chat.iter().map(|d| d.deployment.as_str()).collect();
        assert_eq!(names, ["primary", "gpt-5-mini", "gpt-5-mini"]);
    }

    #[test]
    fn a_variable_wins_over_the_same_single_value_in_the_file() {
        let toml = "temperature = 0.2\nazure_openai_api_version = \"2024-10-21\"\n[[chat]]\nendpoint = \"https://a.openai.azure.com/\"\ndeployment = \"d\"\n";
        let mut vars = KEYED.to_vec();
        vars.push(("TEMPERATURE", "0.7"));
        let (s, _dir) = with_file(&vars, toml);
        let s = s.unwrap();
        assert_eq!(s.temperature, 0.7);
        let Backend::Azure(azure) = &s.backend else { panic!() };
        assert_eq!(azure.primary().api_version.to_string(), "2024-10-21");
    }

    #[test]
    fn a_bad_file_stops_startup_naming_the_file_the_entry_and_the_key() {
        for (toml, expected) in [
            ("[[chat]\nendpoint = 1", "not valid TOML"),
            ("colour = \"blue\"\n", "unknown key `colour`"),
            (
                "[[chat]]\nendpoint = \"https://a.openai.azure.com/\"\ndeployment = \"d\"\nendpont = \"x\"\n",
                "[[chat]] entry 1, key `endpont`",
            ),
            ("[routing]\ncircuit_failure = 3\n", "[routing], key `circuit_failure`"),
            (
                "[[chat]]\ndeployment = \"d\"\n",
                "[[chat]] entry 1: `endpoint` is missing",
            ),
            (
                "[[chat]]\nendpoint = \"https://a.openai.azure.com/\"\ndeployment = \"d\"\n[[image]]\nendpoint = \"https://a.openai.azure.com/\"\n",
                "[[image]] entry 1: `deployment` is missing",
            ),
            (
                "[[chat]]\nendpoint = \"http://a.openai.azure.com/\"\ndeployment = \"d\"\n",
                "[[chat]] entry 1: `endpoint` must be an https URL",
            ),
            (
                "[[chat]]\nendpoint = \"https://a.openai.azure.com/\"\ndeployment = \"d\"\napi_key_env = \"NOPE\"\n",
                "`api_key_env` names NOPE, which is not set",
            ),
            ("[routing]\ncircuit_failures = \"many\"\n", "circuit_failures"),
        ] {
            let (result, dir) = with_file(&KEYED, toml);
            let err = result.unwrap_err().to_string();
            let file = dir.path().join("ai-service.toml");
            assert!(err.contains(expected), "{toml:?}: {err}");
            assert!(
                err.contains(&*file.to_string_lossy()),
                "{toml:?}: the file is not named: {err}"
            );
        }
        let err = settings(&[("AI_SERVICE_CONFIG", "/nonexistent/ai-service.toml")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("AI_SERVICE_CONFIG names /nonexistent/ai-service.toml"),
            "{err}"
        );
    }

    #[test]
    fn entra_mode_refuses_a_key_variable_in_an_entry() {
        let toml = "[[chat]]\nendpoint = \"https://a.openai.azure.com/\"\ndeployment = \"d\"\napi_key_env = \"K\"\n";
        let (result, _dir) = with_file(
            &[("USE_AZURE_OPENAI", "True"), ("USE_AZURE_AD", "True"), ("K", "x")],
            toml,
        );
        assert!(result.unwrap_err().to_string().contains("one Microsoft Entra token"));
    }

    #[test]
    fn the_seed_deployment_variables_select_azure_with_entra() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", "True"),
            ("USE_AZURE_AD", "TRUE"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "gpt-5-mini"),
            ("AZURE_OPENAI_ENDPOINT", "https://myaoai.openai.azure.com/"),
        ])
        .unwrap();
        let Backend::Azure(azure) = &s.backend else {
            panic!("not azure: {:?}", s.backend)
        };
        assert_eq!(azure.chat.len(), 1);
        assert_eq!(
            azure.primary().api_version,
            ApiVersion::Dated(DEFAULT_API_VERSION.to_owned())
        );
        let AzureAuth::Entra(entra) = &azure.auth else {
            panic!("not entra")
        };
        assert_eq!(entra.scope, COGNITIVE_SERVICES_SCOPE);
        assert!(entra.workload_identity.is_none());
        assert!(!entra.managed_identity);
        assert_eq!(s.capabilities(), vec!["description"]);
    }

    #[test]
    fn openai_api_key_wins_over_the_azure_key() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", "true"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "d"),
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
            ("AZURE_OPENAI_API_KEY", "azure-key"),
            ("OPENAI_API_KEY", "openai-key"),
        ])
        .unwrap();
        let Backend::Azure(azure) = &s.backend else { panic!() };
        let AzureAuth::ApiKey(Some(key)) = &azure.auth else {
            panic!()
        };
        assert_eq!(key.expose_secret(), "openai-key");
    }

    #[test]
    fn local_llm_takes_precedence() {
        let s = settings(&[
            ("USE_LOCAL_LLM", "True"),
            ("LOCAL_LLM_ENDPOINT", "http://workspace-phi/v1"),
            ("USE_AZURE_OPENAI", "True"),
        ])
        .unwrap();
        assert!(matches!(s.backend, Backend::Local { model: None, .. }));
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", ""),
            ("AZURE_OPENAI_ENDPOINT", ""),
            ("TEMPERATURE", ""),
        ])
        .unwrap();
        assert!(matches!(s.backend, Backend::Offline));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn a_partial_configuration_names_the_missing_variable() {
        let err = settings(&[("USE_AZURE_OPENAI", "True"), ("AZURE_OPENAI_DEPLOYMENT_NAME", "d")]).unwrap_err();
        assert!(err.to_string().contains("AZURE_OPENAI_ENDPOINT"), "{err}");
        let err = settings(&[("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/")]).unwrap_err();
        assert!(err.to_string().contains("USE_AZURE_OPENAI"), "{err}");
        let err = settings(&[
            ("USE_AZURE_OPENAI", "True"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "d"),
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("AZURE_OPENAI_API_KEY"), "{err}");
        let err = settings(&[("USE_LOCAL_LLM", "true")]).unwrap_err();
        assert!(err.to_string().contains("LOCAL_LLM_ENDPOINT"), "{err}");
    }

    #[test]
    fn a_bad_temperature_falls_back_to_one_with_a_warning() {
        let s = settings(&[("TEMPERATURE", "warm")]).unwrap();
        assert_eq!(s.temperature, 1.0);
        assert!(s.warnings.iter().any(|w| w.contains("TEMPERATURE")));
        assert_eq!(settings(&[("TEMPERATURE", "0.7")]).unwrap().temperature, 0.7);
    }

    #[test]
    fn deprecated_dalle_names_are_accepted_with_a_warning() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", "True"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "chat"),
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
            ("AZURE_OPENAI_API_KEY", "k"),
            ("AZURE_OPENAI_DALLE_DEPLOYMENT_NAME", "dalle-3"),
            ("AZURE_OPENAI_DALLE_ENDPOINT", "https://img.openai.azure.com/"),
        ])
        .unwrap();
        let [image] = s.image.as_slice() else {
            panic!("{:?}", s.image)
        };
        assert_eq!(image.deployment, "dalle-3");
        assert_eq!(image.endpoint.as_str(), "https://img.openai.azure.com/");
        assert_eq!(
            image.api_version,
            ApiVersion::Dated(DEFAULT_IMAGE_API_VERSION.to_owned())
        );
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert_eq!(s.capabilities(), vec!["description", "image"]);
    }

    #[test]
    fn workload_identity_variables_are_read_and_the_authority_keeps_its_slash() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", "True"),
            ("USE_AZURE_AD", "True"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "d"),
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
            ("AZURE_CLIENT_ID", "client"),
            ("AZURE_TENANT_ID", "tenant"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_AUTHORITY_HOST", "https://login.example.com/base"),
        ])
        .unwrap();
        let Backend::Azure(azure) = &s.backend else { panic!() };
        let AzureAuth::Entra(entra) = &azure.auth else { panic!() };
        let wi = entra.workload_identity.as_ref().unwrap();
        assert_eq!(wi.authority_host.as_str(), "https://login.example.com/base/");
        assert_eq!(wi.client_id, "client");
    }

    #[test]
    fn the_summary_and_debug_never_show_a_key() {
        let s = settings(&[
            ("USE_AZURE_OPENAI", "True"),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", "d"),
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
            ("AZURE_OPENAI_API_KEY", "super-secret-key-value"),
        ])
        .unwrap();
        assert!(!s.summary().contains("super-secret-key-value"));
        assert!(s.summary().contains("api_key=set"));
        assert!(!format!("{s:?}").contains("super-secret-key-value"));
    }

    #[test]
    fn bad_numbers_and_formats_are_rejected_with_the_name() {
        assert!(settings(&[("PORT", "http")]).unwrap_err().to_string().contains("PORT"));
        assert!(
            settings(&[("LOG_FORMAT", "xml")])
                .unwrap_err()
                .to_string()
                .contains("LOG_FORMAT")
        );
        assert!(settings(&[("LOG_FORMAT", "JSON")]).unwrap().log_format == LogFormat::Json);
        assert!(
            settings(&[("IMAGE_TIMEOUT_SECONDS", "0")])
                .unwrap_err()
                .to_string()
                .contains("IMAGE_TIMEOUT_SECONDS")
        );
    }
}
