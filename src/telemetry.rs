//! Logging and tracing: one `init`, text or JSON log lines, OpenTelemetry spans over
//! OTLP/HTTP when an endpoint is configured, and the span every request runs in.
//!
//! With no endpoint there is no OpenTelemetry layer and no tracer: no span is started
//! for OpenTelemetry (the token spans, DEBUG level, are disabled at their callsites), no
//! `traceparent` is read or written, and the request span is the plain one the logs
//! always had.

use std::{
    io::IsTerminal,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::MatchedPath,
    http::{Request, Response},
};
use bytes::Bytes;
use opentelemetry::{
    KeyValue,
    propagation::TextMapPropagator,
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing::{Level, Span, field::Empty};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterFn, filter_fn},
    fmt::MakeWriter,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, TelemetrySettings};

/// The tracer of the SERVER and model-call spans, set by `init` when spans are exported.
/// Those spans start through the OpenTelemetry API rather than `tracing`: through
/// `tracing-opentelemetry` every field of theirs went through each layer of the subscriber
/// and every poll entered and left them, which callgrind counted as most of what tracing
/// cost per request (README, "Performance"). The token spans, rarer, stay `tracing` spans.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer for spans started directly; `None` when spans are not exported.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The request's trace (its SERVER span, attached while the request is polled), for spans
/// started directly to take as their parent; empty when nothing is exported.
pub fn current_context() -> opentelemetry::Context {
    if TRACER.get().is_some() {
        opentelemetry::Context::current()
    } else {
        opentelemetry::Context::new()
    }
}

/// The filter: `RUST_LOG` when set, else `info`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(tracing::level_filters::LevelFilter::INFO.into())
        .parse_lossy(
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned()),
        )
}

/// What the exporter's layer sees: the `tracing` spans that say what they are to
/// OpenTelemetry (the token fetches' CLIENT spans, declaring `otel.kind`). Decided from each
/// callsite's metadata alone, so it is cached: the other spans and the log lines cost the
/// exporter nothing (`make bench` measured the unfiltered layer at +46% CPU per request).
/// The SERVER and model-call spans do not go through `tracing` at all (see [`TRACER`]);
/// warnings and errors reach the SERVER span through [`SpanEvents`].
fn export_filter() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + Clone> {
    filter_fn(|meta: &tracing::Metadata<'_>| meta.is_span() && meta.fields().field("otel.kind").is_some())
}

/// Warnings and errors logged while a request runs, as events of its SERVER span (the
/// request's trace is the current OpenTelemetry context while its future is polled). An
/// error also marks the span failed. Lines outside any request go to the log only.
struct SpanEvents;

impl<S: tracing::Subscriber> Layer<S> for SpanEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let context = opentelemetry::Context::current();
        let span = context.span();
        if !span.is_recording() {
            return;
        }
        let meta = event.metadata();
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let message = fields.message.unwrap_or_else(|| meta.name().to_owned());
        fields.attributes.push(KeyValue::new("level", meta.level().as_str()));
        fields.attributes.push(KeyValue::new("target", meta.target()));
        if *meta.level() == Level::ERROR {
            span.set_status(Status::error(message.clone()));
        }
        span.add_event(message, fields.attributes);
    }
}

/// An event's message and its other fields as attributes.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl tracing::field::Visit for EventFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes.push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.attributes
            .push(KeyValue::new(field.name(), i64::try_from(value).unwrap_or(i64::MAX)));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// The tracer provider, kept to flush the last spans at shutdown.
#[derive(Debug, Default)]
#[must_use = "dropping it without `shutdown` may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by the export timeout), then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The export runs on this runtime (`ExportClient`), so the blocking flush must
            // not hold a runtime thread while it waits.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber writing to stdout, with the exporter when `telemetry`
/// names an endpoint. Call it inside the runtime: the exporter sends on it.
pub fn init(format: LogFormat, telemetry: Option<&TelemetrySettings>) -> Telemetry {
    init_with(format, "info", std::io::stdout, telemetry)
}

/// Installs the global subscriber with a writer; tests capture logs this way.
/// A second call is a no-op (the first subscriber stays).
pub fn init_with<W>(
    format: LogFormat,
    default_filter: &str,
    writer: W,
    telemetry: Option<&TelemetrySettings>,
) -> Telemetry
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let provider = telemetry.and_then(tracer_provider);
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ai-service"))
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            // No span's OpenTelemetry context is activated on every poll of its future: a token
            // span, with no exported `tracing` ancestor, takes the current OpenTelemetry
            // context as its parent, the request's, which `observe_request` attaches.
            .with_context_activation(false)
            .with_filter(export_filter())
            // A filter function, not a `LevelFilter`: a level's hint would be combined with
            // the others' and turn off the DEBUG token spans at their callsites.
            .and_then(SpanEvents.with_filter(filter_fn(|meta| meta.is_event() && *meta.level() <= Level::WARN)))
    });
    let registry = tracing_subscriber::registry().with(otel);
    let result = match format {
        // One JSON object per line with `timestamp`, `level` and a top-level `message`:
        // the shape Azure Monitor Container Insights parses.
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(writer)
                    .with_filter(filter(default_filter)),
            )
            .try_init(),
        // Colours only on a terminal: `kubectl logs` and files get plain text.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer)
                    .with_filter(filter(default_filter)),
            )
            .try_init(),
    };
    // Already installed (tests start several apps in one process): keep the first.
    if result.is_err() {
        return Telemetry::default();
    }
    if let Some(provider) = &provider {
        let _ = TRACER.set(provider.tracer("ai-service"));
    }
    Telemetry { provider }
}

/// The provider exporting to `settings.traces_endpoint`, batching as the `OTEL_BSP_*`
/// variables say; `None` without an endpoint, or when the exporter cannot be built (logged
/// when the subscriber is up: the caller reports nothing, the service runs without traces).
fn tracer_provider(settings: &TelemetrySettings) -> Option<SdkTracerProvider> {
    let endpoint = settings.traces_endpoint.as_ref()?;
    let client = ExportClient::new(settings.export_timeout)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.as_str())
        .with_timeout(settings.export_timeout)
        .build()
        .ok()?;
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut resource = Resource::builder();
    if !named {
        resource = resource.with_service_name("ai-service");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// Sends the exporter's requests with the service's reqwest on the service's runtime.
///
/// The SDK's batch processor exports from its own thread, where an async client finds no
/// runtime; this client hands each request to the runtime it was built on and waits for the
/// answer. Failures (collector down, slow, refusing) are counted and logged at most once a
/// minute, so a dead collector cannot flood the log; the queue in front of it is the SDK's,
/// bounded by `OTEL_BSP_MAX_QUEUE_SIZE` (spans beyond it are dropped, never waited for).
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    warnings: ExportWarnings,
}

impl ExportClient {
    fn new(timeout: Duration) -> Option<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .ok()?;
        Some(Self {
            client,
            runtime: tokio::runtime::Handle::try_current().ok()?,
            warnings: ExportWarnings::default(),
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::new(body);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, reqwest::Error>(answer)
        });
        let result: Result<Response<Bytes>, HttpError> = match sent.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(Box::new(err)),
            Err(err) => Err(Box::new(err)),
        };
        match &result {
            Ok(answer) if answer.status().is_success() => self.warnings.succeeded(),
            Ok(answer) => self
                .warnings
                .failed(&format!("the collector answered {}", answer.status())),
            Err(err) => self.warnings.failed(&describe(err.as_ref())),
        }
        result
    }
}

/// The innermost cause, which says what went wrong (refused, timed out, ...).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// At most one warning a minute about failed exports, with the count since the last one.
#[derive(Debug, Default)]
struct ExportWarnings {
    last: Mutex<Option<Instant>>,
    failures: AtomicU64,
}

impl ExportWarnings {
    const EVERY: Duration = Duration::from_secs(60);

    fn failed(&self, cause: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.failures.store(0, Ordering::Relaxed);
        drop(last);
        tracing::warn!(
            failed_exports = failures,
            "could not send spans to the OpenTelemetry collector: {cause}; answers are not \
             affected, spans are dropped when the queue is full (next warning in a minute at the earliest)"
        );
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

/// The span of one HTTP request in the logs, with the ids of its trace when spans are
/// exported. (Not itself exported: that is [`ServerSpan`].)
pub fn make_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if TRACER.get().is_none() {
        return tracing::info_span!("request", method = %request.method(), route, request_id);
    }
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        request_id,
        trace_id = Empty,
        span_id = Empty,
    )
}

/// The SERVER span of one request (`POST /generate/description`), continuing the caller's
/// `traceparent`; started only when spans are exported.
#[derive(Debug)]
pub struct ServerSpan {
    /// The trace with this span current: the parent of the spans of the request's work.
    context: opentelemetry::Context,
}

impl ServerSpan {
    /// Starts the span of `request` on `route`, and puts its ids on the log's request span
    /// (the current one), so the log lines of a request lead to its trace.
    pub fn start<B>(request: &Request<B>, route: &str) -> Option<Self> {
        let tracer = TRACER.get()?;
        let parent = propagator().extract(&HeaderExtractor(request.headers()));
        let method = request.method().as_str().to_owned();
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", route.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        let ids = span.span_context().clone();
        if ids.is_valid() {
            let logged = Span::current();
            logged.record("trace_id", tracing::field::display(ids.trace_id()));
            logged.record("span_id", tracing::field::display(ids.span_id()));
        }
        Some(Self {
            context: parent.with_span(span),
        })
    }

    /// The request's trace, to attach while its future is polled.
    pub fn context(&self) -> opentelemetry::Context {
        self.context.clone()
    }

    /// Ends the span with the answer's status (a 5xx marks it failed).
    pub fn end<B>(self, response: &Response<B>) {
        let span = self.context.span();
        let status = response.status();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_status(Status::error(status.as_str().to_owned()));
        }
        span.end();
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_failures_warn_once_a_minute_with_the_count() {
        let warnings = ExportWarnings::default();
        warnings.failed("connection refused");
        assert!(warnings.last.lock().unwrap().is_some());
        for _ in 0..5 {
            warnings.failed("connection refused");
        }
        // The five after the first were counted, not logged.
        assert_eq!(warnings.failures.load(Ordering::Relaxed), 5);
        *warnings.last.lock().unwrap() = Some(Instant::now() - ExportWarnings::EVERY);
        warnings.failed("connection refused");
        assert_eq!(warnings.failures.load(Ordering::Relaxed), 0);
    }
}
