//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Label values come from a fixed set (matched routes, backend names, status
//! codes, configured deployments and the models they answer with), so the number
//! of series stays bounded whatever callers send.
//!
//! The GenAI figures carry the names the OpenTelemetry GenAI semantic conventions
//! give them once translated to Prometheus (`gen_ai_client_token_usage`,
//! `gen_ai_client_operation_duration_seconds`), so dashboards written for those
//! conventions read them as they are; everything else is `ai_service_*`.

use std::sync::{Arc, Mutex};

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

use crate::llm::transport::Headroom;

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
struct RateLimitLabels {
    deployment: String,
    kind: &'static str,
}

/// The labels of one GenAI call, as the conventions name them; `error_type` only on failures,
/// hence a list rather than a struct.
type GenAiLabels = Vec<(&'static str, String)>;

/// One upstream model call, as the GenAI metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct GenAiCall<'a> {
    /// `chat` or `generate_content`.
    pub operation: &'static str,
    /// `azure.ai.openai`, `openai`, or the local server's name.
    pub provider: &'a str,
    /// The deployment or model asked for.
    pub request_model: &'a str,
    /// The answer's `model`; empty when there was no usable answer.
    pub response_model: &'a str,
    /// Why the call failed (`429`, `timeout`, ...), `None` when it succeeded.
    pub error_type: Option<&'a str>,
}

impl GenAiCall<'_> {
    fn labels(&self) -> GenAiLabels {
        let mut labels = vec![
            ("gen_ai_operation_name", self.operation.to_owned()),
            ("gen_ai_provider_name", self.provider.to_owned()),
            ("gen_ai_request_model", self.request_model.to_owned()),
            ("gen_ai_response_model", self.response_model.to_owned()),
        ];
        if let Some(error) = self.error_type {
            labels.push(("error_type", error.to_owned()));
        }
        labels
    }
}

/// One deployment's GenAI series, kept between its calls: building the labels and looking
/// them up (five strings, hashed) for every call was a tenth of a request's instructions.
#[derive(Debug, Default)]
pub struct GenAiSeriesCache(Mutex<CachedSeries>);

impl GenAiSeriesCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedSeries> {
        // Plain handles: a panic elsewhere cannot leave them half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct CachedSeries {
    calls: Option<GenAiSeries>,
    headroom: Option<HeadroomGauges>,
}

/// The series of a deployment's successful calls for one pair of models.
#[derive(Debug)]
struct GenAiSeries {
    request_model: String,
    response_model: String,
    duration: Histogram,
    /// Input and output, made at the first answer that reports usage.
    tokens: Option<[Histogram; 2]>,
}

#[derive(Debug)]
struct HeadroomGauges {
    deployment: String,
    requests: Gauge,
    tokens: Gauge,
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
    token_usage: Family<GenAiLabels, Histogram>,
    operation_duration: Family<GenAiLabels, Histogram>,
    ratelimit_remaining: Family<RateLimitLabels, Gauge>,
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
        let mut root = Registry::default();
        // The conventions' bucket boundaries: powers of 4 up to 64 Mi tokens, and
        // 10 ms doubling up to about 82 s.
        let token_usage = Family::<GenAiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 4.0, 14))
        });
        root.register(
            "gen_ai_client_token_usage",
            "Tokens per upstream call, as the answer's usage reported them, by input and output",
            token_usage.clone(),
        );
        let operation_duration = Family::<GenAiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        root.register(
            "gen_ai_client_operation_duration_seconds",
            "Duration of each upstream model call (one attempt), with error_type on failures",
            operation_duration.clone(),
        );
        let registry = root.sub_registry_with_prefix("ai_service");
        let ratelimit_remaining = Family::<RateLimitLabels, Gauge>::default();
        registry.register(
            "upstream_ratelimit_remaining",
            "The latest x-ratelimit-remaining-requests / -tokens header of each deployment",
            ratelimit_remaining.clone(),
        );
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
            registry: root,
            http_requests,
            http_duration,
            upstream_requests,
            retries,
            tokens,
            in_flight,
            deployment_state,
            failovers,
            token_usage,
            operation_duration,
            ratelimit_remaining,
        }))
    }

    /// Records one upstream model call: its duration, and the tokens it used when the
    /// answer said (`usage`), each as the upstream reported it. A successful call's series
    /// come from `cache` (the deployment's own) while its models stay the same.
    pub fn gen_ai_call(
        &self,
        cache: &GenAiSeriesCache,
        call: &GenAiCall<'_>,
        seconds: f64,
        tokens: Option<(u64, u64)>,
    ) {
        if call.error_type.is_some() {
            // Failures are rare and carry a label the cache does not: look them up.
            let labels = call.labels();
            self.0.operation_duration.get_or_create(&labels).observe(seconds);
            if let Some((input, output)) = tokens {
                self.observe_tokens(labels, input, output);
            }
            return;
        }
        let mut cached = cache.lock();
        let series = match cached.calls.take() {
            Some(series)
                if series.request_model == call.request_model && series.response_model == call.response_model =>
            {
                series
            }
            _ => GenAiSeries {
                request_model: call.request_model.to_owned(),
                response_model: call.response_model.to_owned(),
                duration: self.0.operation_duration.get_or_create(&call.labels()).clone(),
                tokens: None,
            },
        };
        let series = cached.calls.insert(series);
        series.duration.observe(seconds);
        if let Some((input, output)) = tokens {
            let [input_series, output_series] = series.tokens.get_or_insert_with(|| {
                ["input", "output"].map(|kind| {
                    let mut labels = call.labels();
                    labels.push(("gen_ai_token_type", kind.to_owned()));
                    self.0.token_usage.get_or_create(&labels).clone()
                })
            });
            input_series.observe(input as f64);
            output_series.observe(output as f64);
        }
    }

    fn observe_tokens(&self, mut labels: GenAiLabels, input: u64, output: u64) {
        for (kind, count) in [("input", input), ("output", output)] {
            labels.push(("gen_ai_token_type", kind.to_owned()));
            self.0.token_usage.get_or_create(&labels).observe(count as f64);
            labels.pop();
        }
    }

    /// Sets the quota headroom a deployment's answer reported, through the deployment's `cache`.
    pub fn ratelimit_remaining(&self, cache: &GenAiSeriesCache, deployment: &str, headroom: Headroom) {
        let mut cached = cache.lock();
        let gauges = match cached.headroom.take() {
            Some(gauges) if gauges.deployment == deployment => gauges,
            _ => {
                let gauge = |kind| {
                    self.0
                        .ratelimit_remaining
                        .get_or_create(&RateLimitLabels {
                            deployment: deployment.to_owned(),
                            kind,
                        })
                        .clone()
                };
                HeadroomGauges {
                    deployment: deployment.to_owned(),
                    requests: gauge("requests"),
                    tokens: gauge("tokens"),
                }
            }
        };
        let gauges = cached.headroom.insert(gauges);
        if let Some(remaining) = headroom.requests {
            gauges.requests.set(remaining);
        }
        if let Some(remaining) = headroom.tokens {
            gauges.tokens.set(remaining);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(response_model: &'a str, error_type: Option<&'a str>) -> GenAiCall<'a> {
        GenAiCall {
            operation: "chat",
            provider: "azure.ai.openai",
            request_model: "gpt-5-mini",
            response_model,
            error_type,
        }
    }

    /// The value of the sample named `name` whose labels include every one of `labels`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
        text.lines()
            .find(|line| line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l)))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} with {labels:?} in:\n{text}"))
    }

    #[test]
    fn a_deployment_s_cached_series_follow_the_model_it_answers_with() {
        let metrics = Metrics::new("test", "azure-openai");
        let cache = GenAiSeriesCache::default();
        metrics.gen_ai_call(&cache, &call("gpt-5-mini-2025-08-07", None), 0.5, Some((10, 100)));
        metrics.gen_ai_call(&cache, &call("gpt-5-mini-2025-08-07", None), 0.5, Some((20, 200)));
        // The deployment is upgraded: new series, and the old keep their sums.
        metrics.gen_ai_call(&cache, &call("gpt-5-mini-2025-10-01", None), 0.5, Some((3, 30)));
        metrics.gen_ai_call(&cache, &call("", Some("429")), 0.25, None);
        metrics.gen_ai_call(&cache, &call("gpt-5-mini-2025-10-01", None), 0.5, None);
        metrics.ratelimit_remaining(
            &cache,
            "gpt-5-mini",
            Headroom {
                requests: Some(9),
                tokens: Some(900),
            },
        );
        metrics.ratelimit_remaining(
            &cache,
            "gpt-5-mini",
            Headroom {
                requests: Some(8),
                tokens: None,
            },
        );
        let text = metrics.render();
        let old = r#"gen_ai_response_model="gpt-5-mini-2025-08-07""#;
        let new = r#"gen_ai_response_model="gpt-5-mini-2025-10-01""#;
        let input = r#"gen_ai_token_type="input""#;
        let output = r#"gen_ai_token_type="output""#;
        assert_eq!(sample(&text, "gen_ai_client_token_usage_sum", &[old, input]), 30.0);
        assert_eq!(sample(&text, "gen_ai_client_token_usage_sum", &[old, output]), 300.0);
        assert_eq!(sample(&text, "gen_ai_client_token_usage_sum", &[new, input]), 3.0);
        assert_eq!(sample(&text, "gen_ai_client_token_usage_count", &[new, output]), 1.0);
        assert_eq!(
            sample(&text, "gen_ai_client_operation_duration_seconds_count", &[old]),
            2.0
        );
        assert_eq!(
            sample(&text, "gen_ai_client_operation_duration_seconds_count", &[new]),
            2.0
        );
        assert_eq!(
            sample(
                &text,
                "gen_ai_client_operation_duration_seconds_sum",
                &[r#"error_type="429""#]
            ),
            0.25
        );
        let requests = r#"kind="requests""#;
        assert_eq!(
            sample(&text, "ai_service_upstream_ratelimit_remaining", &[requests]),
            8.0
        );
        assert_eq!(
            sample(&text, "ai_service_upstream_ratelimit_remaining", &[r#"kind="tokens""#]),
            900.0
        );
    }
}
