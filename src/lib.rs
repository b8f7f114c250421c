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
pub mod services;
pub mod state;
pub mod telemetry;

use std::{future::Future, io, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{self, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{
    LatencyUnit,
    cors::CorsLayer,
    map_response_body::MapResponseBodyLayer,
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

pub use services::{Dependencies, Services, StartupError, build_services, http_client};
pub use state::AppState;

use crate::error::AppError;

/// A version 4 UUID for each request without one, from a fast per-thread generator:
/// `tower_http`'s `MakeRequestUuid` asks the kernel (`getrandom`) for every request, a
/// system call on the hot path for an id that only has to be unique in the logs.
#[derive(Debug, Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let value = HeaderValue::from_str(&uuid_v4(fastrand::u128(..))).ok()?;
        Some(RequestId::new(value))
    }
}

/// `bits` as a version 4, variant 1 UUID in its hyphenated form.
fn uuid_v4(bits: u128) -> String {
    let bits = (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xFFFF,
        (bits >> 64) & 0xFFFF,
        (bits >> 48) & 0xFFFF,
        bits & 0xFFFF_FFFF_FFFF
    )
}

/// The whole HTTP API: routes, `/metrics`, CORS open to any origin, request ids and tracing.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    // One ServiceBuilder rather than five `Router::layer` calls: each of those boxes and
    // clones the whole stack per route, which `make bench` measured as ~7% of the
    // instructions of a request. The first layer here is the outermost.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CorsLayer::permissive())
        // CORS wants a body with a default (for its preflight answers); the trace layer's has none.
        .layer(MapResponseBodyLayer::new(axum::body::Body::new))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::make_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(middleware::from_fn_with_state(state.clone(), observe_request));
    routes::router()
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(layers)
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

/// The request's metrics (count, duration, in flight) and, when spans are exported, its
/// SERVER span.
async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = tokio::time::Instant::now();
    // A guard, not inc/await/dec: when a client disconnects, hyper drops this future at
    // the await and only a destructor still runs.
    let _in_flight = InFlight::enter(state.metrics.in_flight());
    let server = telemetry::ServerSpan::start(&request, &route);
    let response = match &server {
        // The request's trace is current while its work runs: the spans it starts are children.
        Some(server) => opentelemetry::context::FutureExt::with_context(next.run(request), server.context()).await,
        None => next.run(request).await,
    };
    if let Some(server) = server {
        server.end(&response);
    }
    state
        .metrics
        .http_request(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Counts one request in flight for as long as it lives.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn enter(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
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

#[cfg(test)]
mod tests {
    use super::uuid_v4;

    #[test]
    fn request_ids_are_version_4_uuids_whatever_the_random_bits() {
        assert_eq!(uuid_v4(0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4(u128::MAX), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(
            uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            "01234567-89ab-4def-8123-456789abcdef"
        );
    }
}
