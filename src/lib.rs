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
    http::{HeaderName, StatusCode, header},
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
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, OnResponse, TraceLayer},
};
use tracing::Level;

pub use services::{Dependencies, Services, StartupError, build_services, http_client};
pub use state::AppState;

use crate::error::AppError;

/// The whole HTTP API: routes, `/metrics`, CORS open to any origin, request ids and tracing.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    // One ServiceBuilder rather than five `Router::layer` calls: each of those boxes and
    // clones the whole stack per route, which `make bench` measured as ~7% of the
    // instructions of a request. The first layer here is the outermost.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CorsLayer::permissive())
        // CORS wants a body with a default (for its preflight answers); the trace layer's has none.
        .layer(MapResponseBodyLayer::new(axum::body::Body::new))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::make_span)
                .on_response(|response: &Response, latency: Duration, span: &tracing::Span| {
                    telemetry::record_response(response, span);
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis)
                        .on_response(response, latency, span);
                }),
        )
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics));
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

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = tokio::time::Instant::now();
    // A guard, not inc/await/dec: when a client disconnects, hyper drops this future at
    // the await and only a destructor still runs.
    let _in_flight = InFlight::enter(state.metrics.in_flight());
    let response = next.run(request).await;
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
