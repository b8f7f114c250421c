//! Property-based fuzzing of everything that reads outside input.
//!
//! - Request decoding: arbitrary bytes, arbitrary JSON and near-valid bodies POSTed to both
//!   generate routes of the real router (offline backend, no network): 200 or a 4xx with
//!   `{"detail": ...}`, never a 5xx, never a panic; and exactly the valid bodies succeed.
//! - Response parsing: arbitrary and structured upstream bodies and headers through
//!   `parse_chat_completion`, `parse_image_generation`, `classify_bad_request`,
//!   `parse_error_body`, `one_line`, `retry_after` and the error mapping: never a panic;
//!   valid completions and images round-trip.
//!
//! Bounded: `FUZZ_CASES` cases per property (default 256, so `make test` stays quick;
//! `make fuzz` sets FUZZ_CASES=100000).

use std::{sync::OnceLock, time::Duration};

use ai_service::{
    AppState, Dependencies, app, build_services,
    config::Settings,
    error::{AppError, Operation},
    llm::{
        GeneratedImage, UpstreamError, classify_bad_request, one_line, parse_chat_completion, parse_error_body,
        parse_image_generation, transport::retry_after,
    },
};
use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, HeaderValue, Request, StatusCode},
    response::IntoResponse,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// The real router with the offline backend: every valid request succeeds without a network.
fn router() -> Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER
        .get_or_init(|| {
            let settings = Settings::from_source(Default::default()).expect("the empty configuration is valid");
            let services = build_services(&settings, Dependencies::default()).expect("offline services build");
            app(AppState::new(&settings, services))
        })
        .clone()
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

const ROUTES: [&str; 2] = ["/generate/description", "/generate/image"];

/// POSTs `body` to `path` through the router; returns the status and the body bytes.
fn post(path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let mut request = Request::post(path);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let request = request.body(Body::from(body)).unwrap();
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let response = router().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            (status, bytes.to_vec())
        })
    })
}

/// The decoding contract: 200 with the route's field, or a 4xx with `detail`; never 5xx.
fn check_answer(path: &str, status: StatusCode, body: &[u8]) -> Result<Value, TestCaseError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("{status}: the body is not JSON ({e}): {body:?}")))?;
    if status == StatusCode::OK {
        let field = if path.ends_with("description") {
            "description"
        } else {
            "image"
        };
        prop_assert!(json[field].is_string(), "200 without `{field}`: {json}");
    } else {
        prop_assert!(status.is_client_error(), "{status}: {json}");
        prop_assert!(
            json["detail"].is_string() || json["detail"].is_array(),
            "{status} without detail: {json}"
        );
    }
    Ok(json)
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A string of about `0..=max` characters, sometimes exotic.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..=max).prop_map(|c| c.into_iter().collect()),
        (0..=max).prop_map(|n| "a".repeat(n)),
        Just(String::new()),
        Just(" ".to_owned()),
        Just("é".repeat(max)),
        Just("x".repeat(max + 1)),
    ]
}

/// A field value: usually of the right type, sometimes not.
fn field(right: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => right.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

/// A description request body that is often valid, often just wrong.
fn description_body() -> impl Strategy<Value = Value> {
    let name = text(210).prop_map(Value::String).boxed();
    let tags = prop::collection::vec(text(110).prop_map(Value::String), 0..55)
        .prop_map(Value::Array)
        .boxed();
    (field(name), field(tags), prop::option::weighted(0.1, any_json())).prop_map(|(name, tags, extra)| {
        let mut body = Map::new();
        if let Some(name) = name {
            body.insert("name".to_owned(), name);
        }
        if let Some(tags) = tags {
            body.insert("tags".to_owned(), tags);
        }
        if let Some(extra) = extra {
            body.insert("price".to_owned(), extra);
        }
        Value::Object(body)
    })
}

/// An image request body that is often valid, often just wrong.
fn image_body() -> impl Strategy<Value = Value> {
    let name = text(210).prop_map(Value::String).boxed();
    let description = text(3600).prop_map(Value::String).boxed();
    (field(name), field(description), prop::option::weighted(0.1, any_json())).prop_map(|(name, description, extra)| {
        let mut body = Map::new();
        if let Some(name) = name {
            body.insert("name".to_owned(), name);
        }
        if let Some(description) = description {
            body.insert("description".to_owned(), description);
        }
        if let Some(extra) = extra {
            body.insert("size".to_owned(), extra);
        }
        Value::Object(body)
    })
}

fn chars_within(value: &Value, min: usize, max: usize) -> bool {
    value.as_str().is_some_and(|s| (min..=max).contains(&s.chars().count()))
}

/// What the validation must accept: the oracle for the structured bodies (unknown fields are ignored).
fn is_valid(path: &str, body: &Value) -> bool {
    if !body.is_object() {
        return false;
    }
    if path.ends_with("description") {
        chars_within(&body["name"], 1, 200)
            && body["tags"]
                .as_array()
                .is_some_and(|tags| tags.len() <= 50 && tags.iter().all(|t| chars_within(t, 0, 100)))
    } else {
        chars_within(&body["name"], 1, 200) && chars_within(&body["description"], 1, 3500)
    }
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("APPLICATION/JSON"),
        Some("application/merge-patch+json"),
        Some("text/plain"),
        Some(""),
        Some(";;;"),
        Some("application/json;;"),
        None,
    ])
}

/// Bytes that are often almost JSON: a valid body with a few bytes overwritten, cut or inserted.
fn mangled_json() -> impl Strategy<Value = Vec<u8>> {
    (
        description_body(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(body, edits, cut)| {
            let mut bytes = serde_json::to_vec(&body).unwrap();
            for (at, byte) in edits {
                let at = at.index(bytes.len() + 1);
                if at < bytes.len() {
                    bytes[at] = byte;
                } else {
                    bytes.push(byte);
                }
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(bytes.len() / 2));
            bytes
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_or_answer_5xx(
        route in prop::sample::select(ROUTES.to_vec()),
        content_type in content_type(),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            mangled_json(),
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
    ) {
        let (status, answer) = post(route, content_type, body);
        check_answer(route, status, &answer)?;
    }

    #[test]
    fn exactly_the_valid_bodies_succeed(
        (route, body) in prop_oneof![
            description_body().prop_map(|b| (ROUTES[0], b)),
            image_body().prop_map(|b| (ROUTES[1], b)),
        ],
    ) {
        let (status, answer) = post(route, Some("application/json"), serde_json::to_vec(&body).unwrap());
        let json = check_answer(route, status, &answer)?;
        if is_valid(route, &body) {
            prop_assert_eq!(status, StatusCode::OK, "{} {}: {}", route, body, json);
        } else {
            prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{} {}: {}", route, body, json);
            prop_assert!(json["detail"].is_array(), "{}", json);
            // The echo of the input is shortened, whatever was sent.
            for issue in json["detail"].as_array().unwrap() {
                match &issue["input"] {
                    Value::String(s) => prop_assert!(s.chars().count() <= 201, "{}", issue),
                    Value::Array(items) => prop_assert!(items.len() <= 20, "{}", issue),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn upstream_bodies_never_panic_the_parsers(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1024),
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            completion_like().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            error_like().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
    ) {
        let _ = parse_chat_completion(&body);
        let _ = parse_image_generation(&body);
        let _ = parse_error_body(&body);
        // A 400 is one of three causes, each answered with its documented status, on both routes.
        for operation in [Operation::Description, Operation::Image] {
            let cause = classify_bad_request(&body);
            let expected = match (&cause, operation) {
                (UpstreamError::ContentFiltered, _) => StatusCode::UNPROCESSABLE_ENTITY,
                (UpstreamError::UnsupportedTemperature, _) => StatusCode::INTERNAL_SERVER_ERROR,
                (UpstreamError::BadRequest { .. }, Operation::Image) => StatusCode::BAD_REQUEST,
                (UpstreamError::BadRequest { .. }, Operation::Description) => StatusCode::BAD_GATEWAY,
                (other, _) => panic!("a 400 classified as {other:?}"),
            };
            let response = AppError::generation(operation, Some("0123456789"), cause).into_response();
            prop_assert_eq!(response.status(), expected);
        }
    }

    #[test]
    fn valid_completions_round_trip(content in any::<String>(), extra in any_json()) {
        let mut completion = json!({
            "id": "chatcmpl-fuzz",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        });
        completion["future_field"] = extra;
        let parsed = parse_chat_completion(&serde_json::to_vec(&completion).unwrap());
        if content.trim().is_empty() {
            prop_assert!(matches!(parsed, Err(UpstreamError::InvalidResponse(_))), "{:?}", parsed);
        } else {
            prop_assert_eq!(parsed.unwrap(), content.trim());
        }
    }

    #[test]
    fn valid_images_round_trip(b64 in "[A-Za-z0-9+/]{1,200}={0,2}", url in "https://[a-z]{1,20}\\.example/[a-z0-9]{0,20}") {
        let body = serde_json::to_vec(&json!({"created": 1, "data": [{"b64_json": b64, "revised_prompt": "x"}]})).unwrap();
        prop_assert_eq!(parse_image_generation(&body).unwrap(), GeneratedImage::Base64Png(b64));
        let body = serde_json::to_vec(&json!({"data": [{"url": url}]})).unwrap();
        prop_assert_eq!(parse_image_generation(&body).unwrap(), GeneratedImage::Url(url));
    }

    #[test]
    fn error_messages_are_cut_to_one_short_line(message in any::<String>(), max in 0usize..400) {
        let line = one_line(&message, max);
        prop_assert!(!line.contains('\n'));
        prop_assert!(line.chars().count() <= max + 1);
        let body = serde_json::to_vec(&json!({"error": {"code": "invalid_request_error", "message": message}})).unwrap();
        if let UpstreamError::BadRequest { message, .. } = classify_bad_request(&body) {
            prop_assert!(!message.contains('\n') && message.chars().count() <= 301, "{:?}", message);
        }
    }

    #[test]
    fn retry_hints_never_panic_and_stay_bounded(
        ms in retry_value(),
        seconds in retry_value(),
        throttled_for in prop::option::of(any::<u64>()),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(value) = ms.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert("retry-after-ms", value);
        }
        if let Some(value) = seconds.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert("retry-after", value);
        }
        if let Some(wait) = retry_after(&headers) {
            prop_assert!(wait <= Duration::from_secs(24 * 60 * 60), "{:?} from {:?}", wait, headers);
        }
        // Any hint maps to a Retry-After header of whole seconds.
        let source = UpstreamError::Throttled { retry_after: throttled_for.map(Duration::from_secs) };
        let response = AppError::generation(Operation::Description, None, source).into_response();
        prop_assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let header = response.headers().get("retry-after").unwrap().to_str().unwrap();
        prop_assert!(header.parse::<u64>().unwrap() >= 1);
    }
}

/// A `retry-after`/`retry-after-ms` value: numbers of every shape, dates, and junk.
fn retry_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (any::<i32>(), any::<i16>()).prop_map(|(m, e)| format!("{m}e{e}")),
        prop::sample::select(vec!["inf", "-inf", "NaN", "1e309", "", " 1 ", "0x10", "1_000"]).prop_map(str::to_owned),
        (0u64..253_402_300_800).prop_map(|s| httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(s))),
        "[ -~]{0,40}",
    ])
}

/// Chat completions with the right skeleton and random flesh.
fn completion_like() -> impl Strategy<Value = Value> {
    let choice = (
        prop::option::of(prop::sample::select(vec!["stop", "length", "content_filter", "tool_calls"])),
        prop::option::of(any_json()),
        prop::option::of(any_json()),
    )
        .prop_map(|(finish_reason, content, refusal)| {
            json!({"finish_reason": finish_reason, "message": {"role": "assistant", "content": content, "refusal": refusal}})
        });
    prop::collection::vec(choice, 0..3).prop_map(|choices| json!({"choices": choices}))
}

/// Error bodies with the right skeleton and random flesh.
fn error_like() -> impl Strategy<Value = Value> {
    (any_json(), any_json(), any_json(), any_json()).prop_map(|(code, message, param, inner)| {
        json!({"error": {"code": code, "message": message, "param": param, "innererror": {"code": inner}}})
    })
}
