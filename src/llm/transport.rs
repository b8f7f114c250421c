//! One upstream attempt: send the request, read the answer within a size cap, and
//! say what happened; plus the hints and waits the pool uses between attempts.
//!
//! # Timeouts
//!
//! They nest, each inside the one before:
//!
//! 1. the **route budget** (`DESCRIPTION_TIMEOUT_SECONDS` 40 s, `IMAGE_TIMEOUT_SECONDS`
//!    230 s; below the store-admin's 45 s and 240 s) bounds the whole request: every
//!    attempt, every wait for a cooldown, every backoff (`routes::Generation`);
//! 2. the **attempt timeout** (`DESCRIPTION_ATTEMPT_TIMEOUT_SECONDS` 20 s,
//!    `IMAGE_ATTEMPT_TIMEOUT_SECONDS` 115 s) bounds one attempt on one deployment, after
//!    which the pool tries the next (`pool::Pool`). The Microsoft Entra token is taken
//!    inside the attempt, so a slow token endpoint counts against it, and the token is
//!    fresh for every attempt, however long the request waited before it;
//! 3. the **connect timeout** (`UPSTREAM_CONNECT_TIMEOUT_SECONDS` 5 s) bounds TCP and TLS
//!    set-up inside an attempt (the client, built once in `services`).
//!
//! A token fetch that does reach Entra has its own limits inside all of these
//! (`credential`: 8 s for Entra and IMDS, 10 s for the CLI).

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};

use super::UpstreamError;
use crate::metrics::Metrics;

/// Largest upstream body we read: a 1024x1024 PNG in base64 is about 2-3 MB.
const MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;
/// First backoff delay; doubled each retry, with jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff between two attempts when the upstream gives no hint.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Longest `retry-after` hint believed: anything longer is as good as "not within any budget",
/// and capping keeps absurd values (`1e300`, year 9999) from overflowing a deadline computation.
const MAX_RETRY_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// What one request carries down to the upstream call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the caller's budget runs out.
    pub deadline: tokio::time::Instant,
    /// The caller's `x-request-id`, forwarded upstream.
    pub request_id: Option<String>,
    /// The request's trace, the parent of each model call's span (empty when not exported).
    pub trace: opentelemetry::Context,
}

impl CallContext {
    /// A context with `budget` from now, in the current span's trace.
    pub fn with_budget(budget: Duration, request_id: Option<String>) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + budget,
            request_id,
            trace: crate::telemetry::current_context(),
        }
    }
}

/// `x-ratelimit-remaining-requests` and `x-ratelimit-remaining-tokens` of one answer
/// (Azure OpenAI and OpenAI send both; a local server usually neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    /// Requests left in the current window.
    pub requests: Option<i64>,
    /// Tokens left in the current window.
    pub tokens: Option<i64>,
}

impl Headroom {
    fn from_headers(headers: &HeaderMap) -> Self {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        Self {
            requests: number("x-ratelimit-remaining-requests"),
            tokens: number("x-ratelimit-remaining-tokens"),
        }
    }
}

/// The one HTTP client of all model calls, and their per-attempt metrics. (Not azure_core's
/// `Transport`, which carries the Entra credential's requests.)
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: reqwest::Client,
    metrics: Metrics,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The upstream answered; its body is read.
    Answered {
        /// HTTP status.
        status: StatusCode,
        /// Body bytes (at most 16 MiB).
        body: Vec<u8>,
        /// `retry-after-ms` / `retry-after`, when the answer had one.
        retry_after: Option<Duration>,
        /// The quota headroom the answer reported.
        headroom: Headroom,
    },
    /// The connection failed or broke: another deployment (or a later try) may work.
    Broken(UpstreamError),
    /// Trying again cannot help: the request could not be built, or the answer is too large.
    Refused(&'static str, UpstreamError),
}

impl Attempt {
    /// How the attempt ended, as a bounded metric label: the status, or why there was none.
    pub fn label(&self) -> &'static str {
        match self {
            Attempt::Answered { status, .. } => status_label(*status),
            Attempt::Broken(_) => "connect_error",
            Attempt::Refused(label, _) => label,
        }
    }
}

impl UpstreamClient {
    /// Wraps the client built at startup (with its connect timeout).
    pub fn new(client: reqwest::Client, metrics: Metrics) -> Self {
        Self { client, metrics }
    }

    /// The underlying client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The metrics the pools report to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends one request and reads the answer; counts it under `backend` in the metrics.
    pub async fn attempt(&self, backend: &'static str, request: RequestBuilder) -> Attempt {
        let attempt = self.send(request).await;
        self.metrics.upstream_request(backend, attempt.label());
        attempt
    }

    async fn send(&self, request: RequestBuilder) -> Attempt {
        let mut response = match request.send().await {
            Ok(response) => response,
            // A request we could not even build fails the same way every time.
            Err(err) if err.is_builder() => {
                return Attempt::Refused("request_error", UpstreamError::Unreachable(describe(&err)));
            }
            Err(err) => return Attempt::Broken(UpstreamError::Unreachable(describe(&err))),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let headroom = Headroom::from_headers(response.headers());
        let too_large = || {
            Attempt::Refused(
                "too_large",
                UpstreamError::InvalidResponse(format!(
                    "the answer (status {}) is larger than {} MiB",
                    status.as_u16(),
                    MAX_UPSTREAM_BODY / (1024 * 1024)
                )),
            )
        };
        // Refuse a declared oversize body before reading any of it.
        if response.content_length().is_some_and(|n| n > MAX_UPSTREAM_BODY as u64) {
            return too_large();
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_UPSTREAM_BODY {
                        return too_large();
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => return Attempt::Broken(UpstreamError::Unreachable(describe(&err))),
            }
        }
        Attempt::Answered {
            status,
            body,
            retry_after,
            headroom,
        }
    }
}

/// A bounded set of metric labels: the statuses the pool acts on by name, the rest by class.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        201..=299 => "2xx",
        300..=399 => "3xx",
        501..=599 => "5xx",
        _ => "4xx",
    }
}

/// Exponential backoff with full jitter between half and all of the step.
pub fn backoff(attempt: u32) -> Duration {
    let step = BASE_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_BACKOFF);
    step.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Up to 10% (at most 1 s) on top of an upstream's hint, so callers that waited for the
/// same hint do not return in lockstep.
pub fn spread(hint: Duration) -> Duration {
    hint.mul_f64(fastrand::f64() / 10.0).min(Duration::from_secs(1))
}

/// `retry-after-ms` first (Azure's precise hint), then `retry-after` in seconds or as an HTTP date.
/// A hint is capped at [`MAX_RETRY_HINT`]; a negative, NaN or unreadable one is ignored; a date in
/// the past means "now".
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(wait) = seconds_hint(ms / 1000.0) {
            return Some(wait);
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return seconds_hint(seconds);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_HINT),
    )
}

/// A hint in (fractional) seconds as a duration: `None` when negative or NaN, capped when huge.
/// (`Duration::from_secs_f64` panics on values it cannot represent, and upstream headers are input.)
fn seconds_hint(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).map_or(MAX_RETRY_HINT, |d| d.min(MAX_RETRY_HINT)))
}

/// A sentence about a transport failure, without the URL's query or any header.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "connection failed"
    } else if err.is_timeout() {
        "timed out"
    } else if err.is_body() || err.is_decode() {
        "the connection broke while reading the answer"
    } else {
        "request failed"
    };
    let host = err.url().and_then(|u| u.host_str()).unwrap_or("the upstream");
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        format!("{kind} to {host}")
    } else {
        format!("{kind} to {host}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds_then_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let mut headers = HeaderMap::new();
        let in_two_minutes = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        headers.insert("retry-after", HeaderValue::from_str(&in_two_minutes).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(115) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn absurd_retry_hints_are_capped_or_ignored_never_a_panic() {
        for (name, value, expected) in [
            ("retry-after-ms", "1e300", Some(MAX_RETRY_HINT)),
            ("retry-after-ms", "inf", Some(MAX_RETRY_HINT)),
            ("retry-after-ms", "-5", None),
            ("retry-after-ms", "NaN", None),
            ("retry-after", "18446744073709551616", Some(MAX_RETRY_HINT)),
            ("retry-after", "-1", None),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", Some(MAX_RETRY_HINT)),
            ("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert_eq!(retry_after(&headers), expected, "{name}: {value}");
        }
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..20 {
            let wait = backoff(attempt);
            assert!(wait >= BASE_BACKOFF / 2 && wait <= MAX_BACKOFF, "{attempt}: {wait:?}");
        }
        assert!(backoff(4) > backoff(1));
    }

    #[test]
    fn the_spread_on_a_hint_is_small_and_bounded() {
        for _ in 0..100 {
            assert!(spread(Duration::from_millis(100)) <= Duration::from_millis(10));
            assert!(spread(MAX_RETRY_HINT) <= Duration::from_secs(1));
        }
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }
}
