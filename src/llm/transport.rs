//! Sending one upstream request within the caller's budget: retries with backoff
//! and jitter on 429, 5xx and connection failures, honouring `retry-after-ms`
//! and `retry-after` (plus a little spread), never past the deadline, and a cap
//! on the body size.

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use tokio::time::Instant;

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
    pub deadline: Instant,
    /// The caller's `x-request-id`, forwarded upstream.
    pub request_id: Option<String>,
}

impl CallContext {
    /// A context with `budget` from now.
    pub fn with_budget(budget: Duration, request_id: Option<String>) -> Self {
        Self {
            deadline: Instant::now() + budget,
            request_id,
        }
    }
}

/// A buffered upstream answer.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes (at most 16 MiB).
    pub body: Vec<u8>,
}

/// The shared HTTP client of all upstream calls, with its retry policy.
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    max_retries: u32,
    metrics: Metrics,
}

enum Attempt {
    /// An answer for the caller to interpret.
    Done(UpstreamResponse),
    /// A failure worth another attempt (429, 5xx, connection failure).
    Retry {
        wait: Option<Duration>,
        last: UpstreamError,
    },
    /// A failure that another attempt would not change, with its metrics label.
    Fail(&'static str, UpstreamError),
}

impl Transport {
    /// Wraps a client built at startup (with its connect timeout).
    pub fn new(client: reqwest::Client, max_retries: u32, metrics: Metrics) -> Self {
        Self {
            client,
            max_retries,
            metrics,
        }
    }

    /// The underlying client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request built by `build` until it succeeds, fails for good, or the budget runs out.
    /// Any status other than 429 and 5xx is returned to the caller to interpret.
    pub async fn send(
        &self,
        backend: &'static str,
        ctx: &CallContext,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut request = build();
            if let Some(id) = &ctx.request_id {
                request = request.header("x-request-id", id);
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout_at(ctx.deadline, self.attempt(request)).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let (wait, last) = match outcome {
                Err(_) => {
                    self.metrics.upstream_request(backend, "timeout");
                    tracing::debug!(backend, attempt, elapsed_ms, "upstream call timed out");
                    return Err(UpstreamError::Timeout);
                }
                Ok(Attempt::Fail(label, error)) => {
                    self.metrics.upstream_request(backend, label);
                    tracing::debug!(backend, attempt, elapsed_ms, error = %error, "upstream attempt failed for good");
                    return Err(error);
                }
                Ok(Attempt::Done(response)) => {
                    self.metrics.upstream_request(backend, response.status.as_str());
                    tracing::debug!(
                        backend,
                        attempt,
                        status = response.status.as_u16(),
                        elapsed_ms,
                        "upstream answered"
                    );
                    return Ok(response);
                }
                Ok(Attempt::Retry { wait, last }) => {
                    let label = match &last {
                        UpstreamError::Throttled { .. } => "429",
                        UpstreamError::Status { status } => status_label(*status),
                        _ => "connect_error",
                    };
                    self.metrics.upstream_request(backend, label);
                    tracing::debug!(backend, attempt, outcome = label, elapsed_ms, "upstream attempt failed");
                    (wait, last)
                }
            };
            if attempt > self.max_retries {
                return Err(last);
            }
            let wait = match wait {
                // Never earlier than asked, but spread out so throttled callers do not return in lockstep.
                Some(hint) => hint + spread(hint),
                None => backoff(attempt),
            };
            let resume = Instant::now().checked_add(wait);
            if resume.is_none_or(|at| at >= ctx.deadline) {
                // Waiting would outlast the caller: answer now with what we know.
                return Err(last);
            }
            self.metrics.retry(backend);
            tracing::info!(
                backend,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying upstream call"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, request: RequestBuilder) -> Attempt {
        let mut response = match request.send().await {
            Ok(response) => response,
            // A request we could not even build fails the same way every time.
            Err(err) if err.is_builder() => {
                return Attempt::Fail("request_error", UpstreamError::Unreachable(describe(&err)));
            }
            Err(err) => {
                return Attempt::Retry {
                    wait: None,
                    last: UpstreamError::Unreachable(describe(&err)),
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let too_large = || {
            Attempt::Fail(
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
                Err(err) => {
                    return Attempt::Retry {
                        wait: None,
                        last: UpstreamError::Unreachable(describe(&err)),
                    };
                }
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry {
                wait: retry_after,
                last: UpstreamError::Throttled { retry_after },
            };
        }
        if status.is_server_error() {
            return Attempt::Retry {
                wait: retry_after,
                last: UpstreamError::Status {
                    status: status.as_u16(),
                },
            };
        }
        Attempt::Done(UpstreamResponse { status, body })
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "5xx",
    }
}

/// Exponential backoff with full jitter between half and all of the step.
fn backoff(attempt: u32) -> Duration {
    let step = BASE_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_BACKOFF);
    step.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Up to 10% (at most 1 s) on top of an upstream's hint.
fn spread(hint: Duration) -> Duration {
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
