//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Label values come from a fixed set (matched routes, backend names, status
//! codes), so the number of series stays bounded whatever callers send.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    backend: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    credential: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    capability: String,
    endpoint: String,
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabels {
    capability: String,
}

/// What `ai_service_deployment_state` says of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// Takes requests (0).
    Ok = 0,
    /// Cooling down after a 429 (1).
    Cooling = 1,
    /// Circuit open, or set aside after 401/403/404 (2).
    Unavailable = 2,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    backend: String,
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    retries: Family<BackendLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    in_flight: Gauge,
    deployment_state: Family<DeploymentLabels, Gauge>,
    failovers: Family<CapabilityLabels, Counter>,
}

/// The service's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("0.0.0", "none")
    }
}

impl Metrics {
    /// A registry with every metric, labelled with the build version and backend.
    pub fn new(version: &str, backend: &str) -> Self {
        let mut registry = Registry::with_prefix("ai_service");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~65 s: covers /health as well as a slow image generation.
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route",
            http_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream model API attempts, by backend and status (or timeout/connect_error)",
            upstream_requests.clone(),
        );
        let retries = Family::<BackendLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Upstream attempts retried after 429, 5xx or a connection failure",
            retries.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_acquisitions",
            "Microsoft Entra token acquisitions, by credential and outcome",
            tokens.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            in_flight.clone(),
        );
        let deployment_state = Family::<DeploymentLabels, Gauge>::default();
        registry.register(
            "deployment_state",
            "State of each deployment of a pool: 0 ok, 1 cooling after a 429, 2 circuit open or set aside",
            deployment_state.clone(),
        );
        let failovers = Family::<CapabilityLabels, Counter>::default();
        registry.register(
            "failovers",
            "Attempts sent to another deployment of the pool than the request's previous attempt",
            failovers.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
                backend: backend.to_owned(),
            })
            .set(1);
        registry.register("build_info", "Build version and active backend", build);
        Self(Arc::new(Inner {
            registry,
            http_requests,
            http_duration,
            upstream_requests,
            retries,
            tokens,
            in_flight,
            deployment_state,
            failovers,
        }))
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        self.0
            .http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.0
            .http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The in-flight gauge, raised for the life of a request.
    pub fn in_flight(&self) -> &Gauge {
        &self.0.in_flight
    }

    /// Counts one upstream attempt.
    pub fn upstream_request(&self, backend: &str, status: &str) {
        self.0
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                backend: backend.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts one retry.
    pub fn retry(&self, backend: &str) {
        self.0
            .retries
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
            })
            .inc();
    }

    /// Sets what `ai_service_deployment_state` reports for one deployment.
    pub fn deployment_state(&self, capability: &str, endpoint: &str, deployment: &str, state: DeploymentState) {
        self.0
            .deployment_state
            .get_or_create(&DeploymentLabels {
                capability: capability.to_owned(),
                endpoint: endpoint.to_owned(),
                deployment: deployment.to_owned(),
            })
            .set(state as i64);
    }

    /// Counts one failover to another deployment.
    pub fn failover(&self, capability: &str) {
        self.0
            .failovers
            .get_or_create(&CapabilityLabels {
                capability: capability.to_owned(),
            })
            .inc();
    }

    /// Counts one token acquisition.
    pub fn token(&self, credential: &str, outcome: &str) {
        self.0
            .tokens
            .get_or_create(&TokenLabels {
                credential: credential.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.0.registry);
        text
    }
}
