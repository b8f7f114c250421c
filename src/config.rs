//! Typed settings, parsed and validated once at startup from the environment.
//!
//! The contract's rules live here and nowhere else: an empty value means unset,
//! booleans are `true` in any letter case, a local LLM takes precedence over
//! Azure OpenAI, which takes precedence over the public OpenAI API, and
//! `OPENAI_API_KEY` wins over `AZURE_OPENAI_API_KEY`. A partial configuration
//! is an error that names the missing variable; no configuration at all selects
//! the embedded offline generator.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, time::Duration};

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
    /// Image generation on Azure OpenAI, when an image deployment is configured.
    pub image: Option<ImageSettings>,
    /// Sampling temperature sent upstream (`TEMPERATURE`, default 1.0).
    pub temperature: f32,
    /// Deadlines, retries and limits.
    pub limits: Limits,
    /// Warnings found while parsing, logged once telemetry is up.
    pub warnings: Vec<String>,
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

/// An Azure OpenAI resource and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// Resource endpoint, e.g. `https://myaoai.openai.azure.com/`.
    pub endpoint: Url,
    /// Chat deployment name.
    pub deployment: String,
    /// `api-version` query parameter.
    pub api_version: String,
    /// Key or Entra token.
    pub auth: AzureAuth,
}

/// How requests to Azure OpenAI are authenticated.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// `api-key` header.
    ApiKey(SecretString),
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

/// Image generation on an Azure OpenAI deployment.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// Endpoint (`AZURE_OPENAI_IMAGE_ENDPOINT`, default the chat endpoint).
    pub endpoint: Url,
    /// Image deployment name.
    pub deployment: String,
    /// `api-version` for image requests.
    pub api_version: String,
}

/// Deadlines, retries and resource limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Total budget of a description request; below the UI's 45 s.
    pub description_timeout: Duration,
    /// Total budget of an image request; below the UI's 240 s.
    pub image_timeout: Duration,
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

/// The raw variables, all strings: `config` lower-cases the names.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
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
    upstream_connect_timeout_seconds: Option<String>,
    upstream_max_retries: Option<String>,
    max_body_bytes: Option<String>,
    max_concurrent_descriptions: Option<String>,
    max_concurrent_images: Option<String>,
    shutdown_grace_seconds: Option<String>,
}

impl Settings {
    /// Reads the process environment (after `.env` was loaded by `main`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(std::env::vars().collect())
    }

    /// Parses settings from a map of variables; tests use this instead of the process env.
    pub fn from_source(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let raw: RawEnv = config::Config::builder()
            .add_source(
                config::Environment::default()
                    .source(Some(vars.into_iter().map(|(k, v)| (k, v.trim().to_owned())).collect()))
                    .ignore_empty(true)
                    .try_parsing(false),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|err| ConfigError::new(format!("could not read the environment: {err}")))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEnv) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let backend = backend(&raw, &mut warnings)?;
        let image = image(&raw, &backend, &mut warnings)?;
        let temperature = temperature(raw.temperature.as_deref(), &mut warnings);
        let limits = limits(&raw)?;
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
            temperature,
            limits,
            warnings,
        })
    }

    /// The names of what `/health` advertises.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let mut capabilities = vec!["description"];
        if self.image.is_some() || matches!(self.backend, Backend::Offline) {
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
                parts.push(format!("endpoint={}", azure.endpoint));
                parts.push(format!("deployment={}", azure.deployment));
                parts.push(format!("api_version={}", azure.api_version));
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
        match &self.image {
            Some(image) => parts.push(format!(
                "image_endpoint={} image_deployment={} image_api_version={}",
                image.endpoint, image.deployment, image.api_version
            )),
            None if matches!(self.backend, Backend::Offline) => parts.push("image=offline-placeholder".to_owned()),
            None => parts.push("image=unset".to_owned()),
        }
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

fn backend(raw: &RawEnv, warnings: &mut Vec<String>) -> Result<Backend, ConfigError> {
    if is_true(raw.use_local_llm.as_deref()) {
        let endpoint = required(&raw.local_llm_endpoint, "LOCAL_LLM_ENDPOINT", "when USE_LOCAL_LLM=True")?;
        return Ok(Backend::Local {
            endpoint: parse_url(endpoint, "LOCAL_LLM_ENDPOINT")?,
            model: raw.local_llm_model.clone(),
        });
    }
    if is_true(raw.use_azure_openai.as_deref()) {
        let why = "when USE_AZURE_OPENAI=True";
        let endpoint = parse_url(
            required(&raw.azure_openai_endpoint, "AZURE_OPENAI_ENDPOINT", why)?,
            "AZURE_OPENAI_ENDPOINT",
        )?;
        let deployment = required(&raw.azure_openai_deployment_name, "AZURE_OPENAI_DEPLOYMENT_NAME", why)?.to_owned();
        let auth = if is_true(raw.use_azure_ad.as_deref()) {
            if raw.azure_openai_api_key.is_some() || raw.openai_api_key.is_some() {
                warnings.push(
                    "USE_AZURE_AD=True: the API key variables are set but ignored; remove them from the pod".to_owned(),
                );
            }
            AzureAuth::Entra(Box::new(entra(raw)?))
        } else {
            let key = raw
                .openai_api_key
                .clone()
                .or_else(|| raw.azure_openai_api_key.clone())
                .ok_or_else(|| {
                    ConfigError::new(
                        "AZURE_OPENAI_API_KEY is not set; it is required when USE_AZURE_OPENAI=True \
                     and USE_AZURE_AD is not True (or set USE_AZURE_AD=True for passwordless Entra auth)",
                    )
                })?;
            AzureAuth::ApiKey(SecretString::from(key))
        };
        return Ok(Backend::Azure(Box::new(AzureSettings {
            endpoint,
            deployment,
            api_version: raw
                .azure_openai_api_version
                .clone()
                .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
            auth,
        })));
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

fn image(raw: &RawEnv, backend: &Backend, warnings: &mut Vec<String>) -> Result<Option<ImageSettings>, ConfigError> {
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
    let Some(deployment) = deployment else {
        return Ok(None);
    };
    let Backend::Azure(azure) = backend else {
        return Err(ConfigError::new(
            "AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME is set but USE_AZURE_OPENAI is not True; \
             image generation runs on Azure OpenAI with the same authentication as descriptions",
        ));
    };
    Ok(Some(ImageSettings {
        endpoint: endpoint.unwrap_or_else(|| azure.endpoint.clone()),
        deployment,
        api_version: raw
            .azure_openai_image_api_version
            .clone()
            .or_else(|| raw.azure_openai_api_version.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE_API_VERSION.to_owned()),
    }))
}

fn temperature(value: Option<&str>, warnings: &mut Vec<String>) -> f32 {
    let Some(value) = value else { return 1.0 };
    match value.parse::<f32>() {
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
        assert_eq!(azure.api_version, DEFAULT_API_VERSION);
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
        let AzureAuth::ApiKey(key) = &azure.auth else { panic!() };
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
        let image = s.image.as_ref().unwrap();
        assert_eq!(image.deployment, "dalle-3");
        assert_eq!(image.endpoint.as_str(), "https://img.openai.azure.com/");
        assert_eq!(image.api_version, DEFAULT_IMAGE_API_VERSION);
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
