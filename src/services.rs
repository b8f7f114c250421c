//! Building what the service talks to, once at startup: the HTTP client, the Entra
//! credential chain and the model pools, from the typed settings.

use std::{sync::Arc, time::Duration};

use azure_identity::Executor;

use crate::{
    config::{self, AzureAuth, Backend, Limits, Settings},
    credential::{self, CredentialOptions, SharedTokenCache, TokenProvider},
    llm::{
        ChatModel, ImageModel, UpstreamClient,
        azure::{self, AzureChat, AzureImage},
        offline::OfflineGenerator,
        openai::OpenAiCompatible,
        pool::{Auth, Capability, Pool, PoolOptions},
    },
    metrics::Metrics,
};

/// What the state is built from besides the settings. Tests inject their test CA,
/// a fake `az` runner or a fixed token here; production uses the defaults.
#[derive(Clone, Default)]
pub struct Dependencies {
    /// Extra trusted roots for every upstream (the platform's roots stay trusted).
    pub extra_root_certificates: Vec<reqwest::Certificate>,
    /// How `az`/`azd` are run.
    pub executor: Option<Arc<dyn Executor>>,
    /// A token provider to use instead of the credential chain.
    pub token_provider: Option<Arc<dyn TokenProvider>>,
}

/// The models built from the settings, before they go into an [`AppState`].
pub struct Services {
    /// Writes descriptions.
    pub chat: Arc<dyn ChatModel>,
    /// Draws images.
    pub image: Option<Arc<dyn ImageModel>>,
    /// The Entra token cache, when Azure OpenAI uses Entra auth.
    pub tokens: Option<Arc<dyn TokenProvider>>,
    /// The credentials in the chain, in order (for the startup log).
    pub credentials: Vec<&'static str>,
    /// Metrics shared by the models and the routes.
    pub metrics: Metrics,
    /// Every deployment of both pools on its own (one for a backend without pools), for `check`.
    pub probes: Vec<Probe>,
}

/// One deployment, to be called on its own.
pub struct Probe {
    /// Which pool it belongs to.
    pub capability: Capability,
    /// What it is, for a person: the deployment and its endpoint.
    pub target: String,
    /// A model that calls only this deployment.
    pub model: ProbeModel,
}

/// The model of a [`Probe`].
pub enum ProbeModel {
    /// A chat deployment.
    Chat(Arc<dyn ChatModel>),
    /// An image deployment.
    Image(Arc<dyn ImageModel>),
}

impl Probe {
    fn new(deployment: &config::DeploymentSettings, model: ProbeModel) -> Self {
        Self {
            capability: match model {
                ProbeModel::Chat(_) => Capability::Chat,
                ProbeModel::Image(_) => Capability::Image,
            },
            target: format!(
                "Azure OpenAI deployment `{}` at {} (api {})",
                deployment.deployment, deployment.endpoint, deployment.api_version
            ),
            model,
        }
    }
}

/// What a backend without pools calls, for a person.
fn describe_backend(backend: &Backend) -> String {
    match backend {
        Backend::Local { endpoint, .. } => format!("the local model server at {endpoint}"),
        Backend::OpenAi { base_url, .. } => format!("the OpenAI API at {base_url}"),
        Backend::Offline => "the built-in offline generator (no model configured)".to_owned(),
        Backend::Azure(_) => "Azure OpenAI".to_owned(),
    }
}

/// The service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The HTTP client could not be built (e.g. no TLS roots).
    #[error(
        "could not build the HTTP client (check that SSL_CERT_FILE or SSL_CERT_DIR, if set, name a readable PEM bundle): {0:?}"
    )]
    HttpClient(#[from] reqwest::Error),
    /// The credential chain could not be built.
    #[error("could not set up the Microsoft Entra credential: {0}")]
    Credential(#[from] azure_core::Error),
}

/// Builds the HTTP client for upstream calls: one per process, with a connect timeout.
pub fn http_client(
    limits: &Limits,
    deps: &Dependencies,
    total_timeout: Option<Duration>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        // HTTP/1.1 with a pool, not one multiplexed HTTP/2 connection: measured with
        // `make bench`, the single h2 connection capped throughput at 73% of the bound at
        // concurrency 256 (the server's stream limit) and put a 400 ms p99 on fast answers.
        .http1_only()
        .connect_timeout(limits.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("ai-service/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(deps.extra_root_certificates.iter().cloned());

    if let Some(timeout) = total_timeout {
        builder = builder.timeout(timeout);
    }
    builder.build()
}

/// Builds the models for `settings`.
pub fn build_services(settings: &Settings, deps: Dependencies) -> Result<Services, StartupError> {
    let metrics = Metrics::new(&settings.app_version, settings.backend.name());
    let transport = UpstreamClient::new(http_client(&settings.limits, &deps, None)?, metrics.clone());
    let limits = &settings.limits;
    let provider = match &settings.backend {
        Backend::Azure(_) | Backend::Offline => "azure.ai.openai".to_owned(),
        Backend::OpenAi { .. } => "openai".to_owned(),
        // A server in the cluster is known by its service's name.
        Backend::Local { endpoint, .. } => endpoint.host_str().unwrap_or("local").to_owned(),
    };
    let options = |capability: Capability, backend: &'static str| PoolOptions {
        capability,
        backend,
        provider: provider.clone(),
        capture_content: settings.telemetry.capture_content,
        routing: settings.routing.clone(),
        max_retries: limits.max_retries,
        attempt_timeout: match capability {
            Capability::Chat => limits.description_attempt_timeout,
            Capability::Image => limits.image_attempt_timeout,
        },
    };
    let mut tokens: Option<Arc<dyn TokenProvider>> = None;
    let mut credentials = Vec::new();
    let mut image: Option<Arc<dyn ImageModel>> = None;
    let mut probes = Vec::new();
    let chat: Arc<dyn ChatModel> = match &settings.backend {
        Backend::Offline => {
            image = Some(Arc::new(OfflineGenerator));
            Arc::new(OfflineGenerator)
        }
        Backend::Local { endpoint, model } => {
            let target = OpenAiCompatible::target(endpoint, None, Auth::None);
            let pool = Pool::new(
                vec![target],
                transport,
                options(Capability::Chat, settings.backend.name()),
            );
            Arc::new(OpenAiCompatible::local(pool, endpoint, model.clone()))
        }
        Backend::OpenAi {
            api_key,
            organization,
            base_url,
        } => {
            let auth = Auth::OpenAi {
                key: api_key.clone(),
                organization: organization.clone(),
            };
            let target = OpenAiCompatible::target(base_url, Some(config::OPENAI_MODEL), auth);
            let pool = Pool::new(
                vec![target],
                transport,
                options(Capability::Chat, settings.backend.name()),
            );
            Arc::new(OpenAiCompatible::openai(pool, base_url, config::OPENAI_MODEL))
        }
        Backend::Azure(azure_settings) => {
            let auth = match &azure_settings.auth {
                // Settings refuse a deployment without any key; one with its own key overrides this.
                AzureAuth::ApiKey(key) => key.clone().map_or(Auth::None, Auth::ApiKey),
                AzureAuth::Entra(entra) => {
                    let provider: Arc<dyn TokenProvider> = match &deps.token_provider {
                        Some(provider) => provider.clone(),
                        None => {
                            // Entra calls get a total timeout too: a hung token endpoint must fail in seconds.
                            let http = http_client(limits, &deps, Some(Duration::from_secs(10)))?;
                            let options = CredentialOptions {
                                http: Some(http),
                                executor: deps.executor.clone(),
                            };
                            let cache: Arc<SharedTokenCache> =
                                credential::token_provider(entra, options, metrics.clone())?;
                            credentials = cache.credential_names();
                            cache
                        }
                    };
                    tokens = Some(provider.clone());
                    Auth::Entra(provider)
                }
            };
            let pool = |deployments: &[config::DeploymentSettings], operation: &str, capability| {
                let targets = deployments.iter().map(|d| azure::target(d, operation, &auth)).collect();
                Pool::new(targets, transport.clone(), options(capability, settings.backend.name()))
            };
            // `check` calls each deployment on its own, outside the routing.
            for deployment in &azure_settings.chat {
                let model = AzureChat(pool(
                    std::slice::from_ref(deployment),
                    "chat/completions",
                    Capability::Chat,
                ));
                probes.push(Probe::new(deployment, ProbeModel::Chat(Arc::new(model))));
            }
            for deployment in &settings.image {
                let model = AzureImage(pool(
                    std::slice::from_ref(deployment),
                    "images/generations",
                    Capability::Image,
                ));
                probes.push(Probe::new(deployment, ProbeModel::Image(Arc::new(model))));
            }
            if !settings.image.is_empty() {
                image = Some(Arc::new(AzureImage(pool(
                    &settings.image,
                    "images/generations",
                    Capability::Image,
                ))));
            }
            Arc::new(AzureChat(pool(
                &azure_settings.chat,
                "chat/completions",
                Capability::Chat,
            )))
        }
    };
    if probes.is_empty() {
        probes.push(Probe {
            capability: Capability::Chat,
            target: describe_backend(&settings.backend),
            model: ProbeModel::Chat(chat.clone()),
        });
    }
    Ok(Services {
        chat,
        image,
        tokens,
        credentials,
        metrics,
        probes,
    })
}
