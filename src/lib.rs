//! ai-service: a drop-in Rust replacement for the aks-store-demo `ai-service`.
//!
//! [`app`] builds the router from an explicit [`AppState`], and [`serve`] runs
//! it on a listener the caller bound, until the shutdown future resolves, so
//! tests start the real app on a random port.

#![warn(missing_docs)]

pub mod commands;
pub mod config;
pub mod credential;
pub mod error;
pub mod extract;
pub mod listener;
pub mod llm;
pub mod metrics;
pub mod routes;
pub mod runtime;
pub mod telemetry;

use std::{future::Future, io, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use azure_identity::Executor;
use tokio::{net::TcpListener, sync::Semaphore};
use tower_http::{
    LatencyUnit,
    cors::CorsLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{
    config::{AzureAuth, Backend, Limits, Settings},
    credential::{CredentialOptions, SharedTokenCache, TokenProvider},
    error::AppError,
    llm::{
        ChatModel, ImageModel, Transport,
        azure::{AzureChat, AzureCredential, AzureImage},
        offline::OfflineGenerator,
        openai::OpenAiCompatible,
    },
    metrics::Metrics,
};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Writes descriptions.
    pub chat: Arc<dyn ChatModel>,
    /// Draws images, when configured.
    pub image: Option<Arc<dyn ImageModel>>,
    /// Reported by `/health`.
    pub version: Arc<str>,
    /// The active backend's name.
    pub backend: &'static str,
    /// What `/health` advertises.
    pub capabilities: Arc<[&'static str]>,
    /// Sampling temperature.
    pub temperature: f32,
    /// Deadlines and limits.
    pub limits: Arc<Limits>,
    /// Free description slots; none left means 503.
    pub description_slots: Arc<Semaphore>,
    /// Free image slots; none left means 503.
    pub image_slots: Arc<Semaphore>,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

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
    let transport = Transport::new(
        http_client(&settings.limits, &deps, None)?,
        settings.limits.max_retries,
        metrics.clone(),
    );
    let mut tokens: Option<Arc<dyn TokenProvider>> = None;
    let mut credentials = Vec::new();
    let mut azure_credential = None;
    let chat: Arc<dyn ChatModel> = match &settings.backend {
        Backend::Offline => Arc::new(OfflineGenerator),
        Backend::Local { endpoint, model } => Arc::new(OpenAiCompatible::local(
            transport.clone(),
            endpoint.clone(),
            model.clone(),
        )),
        Backend::OpenAi {
            api_key,
            organization,
            base_url,
        } => Arc::new(OpenAiCompatible::openai(
            transport.clone(),
            base_url.clone(),
            api_key.clone(),
            organization.clone(),
            config::OPENAI_MODEL,
        )),
        Backend::Azure(azure) => {
            let credential = match &azure.auth {
                AzureAuth::ApiKey(key) => AzureCredential::ApiKey(key.clone()),
                AzureAuth::Entra(entra) => {
                    let provider: Arc<dyn TokenProvider> = match &deps.token_provider {
                        Some(provider) => provider.clone(),
                        None => {
                            // Entra calls get a total timeout too: a hung token endpoint must fail in seconds.
                            let http = http_client(&settings.limits, &deps, Some(Duration::from_secs(10)))?;
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
                    AzureCredential::Entra(provider)
                }
            };
            azure_credential = Some(credential.clone());
            Arc::new(AzureChat::new(
                transport.clone(),
                &azure.endpoint,
                &azure.deployment,
                &azure.api_version,
                credential,
            ))
        }
    };
    let image: Option<Arc<dyn ImageModel>> = match (&settings.image, azure_credential) {
        (Some(image), Some(credential)) => Some(Arc::new(AzureImage::new(
            transport,
            &image.endpoint,
            &image.deployment,
            &image.api_version,
            credential,
        ))),
        _ if matches!(settings.backend, Backend::Offline) => Some(Arc::new(OfflineGenerator)),
        _ => None,
    };
    Ok(Services {
        chat,
        image,
        tokens,
        credentials,
        metrics,
    })
}

impl AppState {
    /// The state for `settings`, with its models built.
    pub fn new(settings: &Settings, services: Services) -> Self {
        Self {
            chat: services.chat,
            image: services.image,
            version: settings.app_version.as_str().into(),
            backend: settings.backend.name(),
            capabilities: settings.capabilities().into(),
            temperature: settings.temperature,
            limits: Arc::new(settings.limits.clone()),
            description_slots: Arc::new(Semaphore::new(settings.limits.max_concurrent_descriptions)),
            image_slots: Arc::new(Semaphore::new(settings.limits.max_concurrent_images)),
            metrics: services.metrics,
        }
    }
}

/// The whole HTTP API: routes, `/metrics`, CORS open to any origin, request ids and tracing.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    routes::router()
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::make_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(CorsLayer::permissive())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = tokio::time::Instant::now();
    state.metrics.in_flight().inc();
    let response = next.run(request).await;
    state.metrics.in_flight().dec();
    state
        .metrics
        .http_request(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for at most `grace` before returning.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new connections, draining in-flight requests"
        );
        let _ = draining_tx.send(true);
    };
    // Small JSON answers must not wait for the client's delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let grace_expired = async move {
        if draining_rx.wait_for(|draining| *draining).await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = grace_expired => {
            tracing::warn!("grace period over; abandoning the requests still in flight");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
