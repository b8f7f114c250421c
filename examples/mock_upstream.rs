//! A stand-in for Azure OpenAI and the Microsoft Entra token endpoint, over
//! HTTPS with a CA it makes at startup, for `make bench`.
//!
//! Environment: `MOCK_LATENCY_MS` (chat latency, default 100), `MOCK_CA_OUT`
//! (where to write the CA certificate), `MOCK_PORT_OUT` (where to write the
//! port), `MOCK_TOKEN_LIFETIME` (seconds, default 3600), `MOCK_JITTER_MS` (each
//! chat answer waits the latency plus up to this much more, uniformly; default 0).
//! `GET /stats` returns the request counts; `PUT /latency/{ms}` changes the latency.
//! Image generations answer a ~2 MB PNG as `b64_json` (as gpt-image does) after
//! `MOCK_IMAGE_LATENCY_MS` (default 1000). A chat deployment whose name starts with
//! `throttled` answers 429 at once with `retry-after-ms: 0`. `POST /v1/traces` is an
//! OTLP/HTTP collector that counts the exports and their bytes and keeps nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::{get, post, put},
};
use serde_json::{Value, json};

#[derive(Default)]
struct Counters {
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    token_requests: AtomicU64,
    chat_requests: AtomicU64,
    throttled_requests: AtomicU64,
    token_lifetime: AtomicU64,
    trace_exports: AtomicU64,
    trace_bytes: AtomicU64,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counters = Arc::new(Counters::default());
    counters
        .latency_ms
        .store(env_number("MOCK_LATENCY_MS", 100), Ordering::Relaxed);
    counters
        .jitter_ms
        .store(env_number("MOCK_JITTER_MS", 0), Ordering::Relaxed);
    counters
        .token_lifetime
        .store(env_number("MOCK_TOKEN_LIFETIME", 3600), Ordering::Relaxed);

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ai-service bench CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    if let Ok(path) = std::env::var("MOCK_CA_OUT") {
        std::fs::write(path, ca.pem())?;
    }

    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/openai/deployments/{deployment}/chat/completions", post(chat))
        .route("/openai/deployments/{deployment}/images/generations", post(image))
        .route("/v1/traces", post(traces))
        .route("/stats", get(stats))
        .route("/latency/{ms}", put(set_latency))
        .route("/jitter/{ms}", put(set_jitter))
        .with_state(counters);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    if let Ok(path) = std::env::var("MOCK_PORT_OUT") {
        std::fs::write(path, port.to_string())?;
    }
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem(leaf.pem().into_bytes(), leaf_key.serialize_pem().into_bytes())
            .await?;
    axum_server::from_tcp_rustls(listener, tls)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn token(State(counters): State<Arc<Counters>>) -> Json<Value> {
    let n = counters.token_requests.fetch_add(1, Ordering::Relaxed);
    let lifetime = counters.token_lifetime.load(Ordering::Relaxed);
    Json(
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": format!("bench-token-{n}")}),
    )
}

async fn chat(State(counters): State<Arc<Counters>>, Path(deployment): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if deployment.starts_with("throttled") {
        // A deployment out of quota, as Azure answers it: at once, with a hint of 0 ms so
        // that every request tries it first and fails over (bench/failover.sh).
        counters.throttled_requests.fetch_add(1, Ordering::Relaxed);
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after-ms", "0")],
            Json(json!({"error": {"code": "429", "message": "Rate limit is exceeded."}})),
        )
            .into_response();
    }
    counters.chat_requests.fetch_add(1, Ordering::Relaxed);
    let jitter = counters.jitter_ms.load(Ordering::Relaxed);
    let latency = counters.latency_ms.load(Ordering::Relaxed) + if jitter > 0 { fastrand::u64(0..=jitter) } else { 0 };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    Json(json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-5-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "refusal": null,
                                 "content": "A squeaky, bouncy, tail-wagging good time for every good dog."}}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80}
    }))
    .into_response()
}

async fn image() -> axum::response::Response {
    use axum::response::IntoResponse;
    // 2 MB of pseudo-random bytes encode to ~2.8 MB of base64, the size of a 1024x1024 PNG.
    static BODY: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let bytes: Vec<u8> = (0..2 * 1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
        axum::body::Bytes::from(json!({"created": 1_700_000_000, "data": [{"b64_json": encoded}]}).to_string())
    });
    tokio::time::sleep(Duration::from_millis(env_number("MOCK_IMAGE_LATENCY_MS", 1000))).await;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

async fn stats(State(counters): State<Arc<Counters>>) -> Json<Value> {
    Json(json!({
        "token_requests": counters.token_requests.load(Ordering::Relaxed),
        "chat_requests": counters.chat_requests.load(Ordering::Relaxed),
        "throttled_requests": counters.throttled_requests.load(Ordering::Relaxed),
        "trace_exports": counters.trace_exports.load(Ordering::Relaxed),
        "trace_bytes": counters.trace_bytes.load(Ordering::Relaxed),
    }))
}

/// An OTLP/HTTP collector: accepts every export (an empty `ExportTraceServiceResponse`).
async fn traces(State(counters): State<Arc<Counters>>, body: axum::body::Bytes) -> impl axum::response::IntoResponse {
    counters.trace_exports.fetch_add(1, Ordering::Relaxed);
    counters.trace_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        axum::body::Bytes::new(),
    )
}

async fn set_jitter(State(counters): State<Arc<Counters>>, Path(ms): Path<u64>) -> &'static str {
    counters.jitter_ms.store(ms, Ordering::Relaxed);
    "ok"
}

async fn set_latency(State(counters): State<Arc<Counters>>, Path(ms): Path<u64>) -> &'static str {
    counters.latency_ms.store(ms, Ordering::Relaxed);
    "ok"
}
