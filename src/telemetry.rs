//! Logging: one `init`, text or JSON lines, and the span every request runs in.

use std::io::IsTerminal;

use axum::{extract::MatchedPath, http::Request};
use tracing::Span;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

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

/// Installs the global subscriber writing to stdout.
pub fn init(format: LogFormat) {
    init_with(format, "info", std::io::stdout);
}

/// Installs the global subscriber with a writer; tests capture logs this way.
/// A second call is a no-op (the first subscriber stays).
pub fn init_with<W>(format: LogFormat, default_filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter(default_filter));
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
                    .with_writer(writer),
            )
            .try_init(),
        // Colours only on a terminal: `kubectl logs` and files get plain text.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
    };
    // Already installed (tests start several apps in one process): keep the first.
    let _ = result;
}

/// The span of one HTTP request: method, matched route and request id.
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
    tracing::info_span!("request", method = %request.method(), route, request_id)
}
