//! `AppJson<T>`: the JSON body extractor that owns its rejections, so bad input
//! gets FastAPI's error shapes instead of axum's plain text.
//!
//! Bodies are decoded into a `serde_json::Value` first and then checked field by
//! field, which lets one answer list every problem with pydantic's `type`,
//! `loc`, `msg` and `input`, as the original service does.

use std::time::Duration;

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{FromRequest, Request},
    http::header,
};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::{
    error::{AppError, ValidationIssue},
    state::AppState,
};

/// A request body type that validates itself from JSON.
pub trait FromJsonBody: Sized {
    /// Builds the value or lists every problem.
    fn from_json(body: &Value) -> Result<Self, Vec<ValidationIssue>>;
}

/// A validated JSON body.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T: FromJsonBody> FromRequest<AppState> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let essence = essence.to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(AppError::UnsupportedMediaType);
            }
        }
        let bytes = read_body(request.into_body(), state.limits.max_body_bytes).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|err| {
            AppError::Validation(vec![ValidationIssue {
                kind: "json_invalid",
                loc: vec![json!("body"), json!(byte_offset(&bytes, err.line(), err.column()))],
                msg: "JSON decode error".to_owned(),
                input: json!({}),
                ctx: Some(json!({ "error": decode_error_kind(&err) })),
            }])
        })?;
        T::from_json(&body).map(AppJson).map_err(AppError::Validation)
    }
}

/// After a 413, at most this much more of the body is read and thrown away...
const DISCARD_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// ...for at most this long in all...
const DISCARD_MAX_TIME: Duration = Duration::from_secs(10);
/// ...and at most this long waiting for the next piece.
const DISCARD_IDLE_TIME: Duration = Duration::from_secs(2);

/// Reads the whole body, or answers 413 once it passes `limit` bytes.
///
/// On a 413 the rest of the body is read and discarded in the background, within
/// [`DISCARD_MAX_BYTES`], [`DISCARD_MAX_TIME`] and [`DISCARD_IDLE_TIME`], while the answer goes
/// out with `Connection: close`. Closing at once would reset the connection under a client
/// that writes its whole body before it reads (Python's `http.client`), which then never
/// sees the 413; nginx's lingering close does the same for the same reason.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, AppError> {
    let too_large = |body: Body| {
        tokio::spawn(discard(body));
        AppError::PayloadTooLarge { limit }
    };
    // A declared Content-Length over the limit is refused before reading any of it.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(body));
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| AppError::BodyUnreadable)?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                return Err(too_large(body));
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(bytes))
}

/// Reads and drops what is left of `body` within the bounds above; dropping it then closes
/// the connection (the 413 said `Connection: close`).
async fn discard(mut body: Body) {
    let give_up = Instant::now() + DISCARD_MAX_TIME;
    let mut discarded: u64 = 0;
    loop {
        let wait_until = give_up.min(Instant::now() + DISCARD_IDLE_TIME);
        match tokio::time::timeout_at(wait_until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
                if discarded > DISCARD_MAX_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    tracing::debug!(discarded, "stopped reading the rest of an oversized body");
}

fn decode_error_kind(err: &serde_json::Error) -> &'static str {
    match err.classify() {
        serde_json::error::Category::Eof => "Unexpected end of input",
        serde_json::error::Category::Io | serde_json::error::Category::Data => "Invalid data",
        serde_json::error::Category::Syntax => {
            if err.to_string().contains("invalid unicode") || err.to_string().contains("UTF-8") {
                "Invalid UTF-8"
            } else {
                "Expecting value"
            }
        }
    }
}

/// serde_json reports line and column (1-based); FastAPI reports a byte position.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = bytes
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// Shortens a long string before it is echoed back in an error.
fn echo(value: &Value) -> Value {
    const MAX_ECHO: usize = 200;
    match value {
        Value::String(s) if s.chars().count() > MAX_ECHO => {
            Value::String(format!("{}…", s.chars().take(MAX_ECHO).collect::<String>()))
        }
        Value::Array(items) if items.len() > 20 => Value::String(format!("[{} items]", items.len())),
        other => other.clone(),
    }
}

/// Field-by-field validation of one JSON object.
pub struct Fields<'a> {
    object: Option<&'a Map<String, Value>>,
    body: &'a Value,
    issues: Vec<ValidationIssue>,
}

impl<'a> Fields<'a> {
    /// Starts validating `body`, which must be an object; fields other than `known` are ignored.
    pub fn new(body: &'a Value, known: &[&str]) -> Self {
        let mut fields = Self {
            object: body.as_object(),
            body,
            issues: Vec::new(),
        };
        match fields.object {
            None => fields.issues.push(ValidationIssue {
                kind: "model_attributes_type",
                loc: vec![json!("body")],
                msg: "Input should be a valid dictionary or object to extract fields from".to_owned(),
                input: echo(body),
                ctx: None,
            }),
            Some(object) => {
                // Unknown fields are ignored, as the original (pydantic's default) ignores them: the
                // store-admin evolves on its own schedule, and one more field must not break a button.
                let unknown: Vec<&str> = object
                    .keys()
                    .map(String::as_str)
                    .filter(|key| !known.contains(key))
                    .collect();
                if !unknown.is_empty() {
                    tracing::debug!(fields = ?unknown, "ignoring unknown request body fields");
                }
            }
        }
        fields
    }

    fn get(&mut self, name: &str) -> Option<&'a Value> {
        let object = self.object?;
        let value = object.get(name);
        if value.is_none() {
            self.issues.push(ValidationIssue {
                kind: "missing",
                loc: vec![json!("body"), json!(name)],
                msg: "Field required".to_owned(),
                input: echo(self.body),
                ctx: None,
            });
        }
        value
    }

    fn check_string(&mut self, value: &Value, loc: Vec<Value>, min: usize, max: usize) -> Option<String> {
        let Some(text) = value.as_str() else {
            self.issues.push(ValidationIssue {
                kind: "string_type",
                loc,
                msg: "Input should be a valid string".to_owned(),
                input: echo(value),
                ctx: None,
            });
            return None;
        };
        let length = text.chars().count();
        if length < min {
            self.issues.push(ValidationIssue {
                kind: "string_too_short",
                loc,
                msg: format!(
                    "String should have at least {min} character{}",
                    if min == 1 { "" } else { "s" }
                ),
                input: echo(value),
                ctx: Some(json!({ "min_length": min })),
            });
            return None;
        }
        if length > max {
            self.issues.push(ValidationIssue {
                kind: "string_too_long",
                loc,
                msg: format!("String should have at most {max} characters"),
                input: echo(value),
                ctx: Some(json!({ "max_length": max })),
            });
            return None;
        }
        Some(text.to_owned())
    }

    /// A required string of `min..=max` characters.
    pub fn string(&mut self, name: &str, min: usize, max: usize) -> Option<String> {
        let value = self.get(name)?;
        self.check_string(value, vec![json!("body"), json!(name)], min, max)
    }

    /// A required list of at most `max_items` strings of at most `max_len` characters each.
    pub fn string_list(&mut self, name: &str, max_items: usize, max_len: usize) -> Option<Vec<String>> {
        let value = self.get(name)?;
        let Some(items) = value.as_array() else {
            self.issues.push(ValidationIssue {
                kind: "list_type",
                loc: vec![json!("body"), json!(name)],
                msg: "Input should be a valid list".to_owned(),
                input: echo(value),
                ctx: None,
            });
            return None;
        };
        if items.len() > max_items {
            self.issues.push(ValidationIssue {
                kind: "too_long",
                loc: vec![json!("body"), json!(name)],
                msg: format!(
                    "List should have at most {max_items} items after validation, not {}",
                    items.len()
                ),
                input: echo(value),
                ctx: Some(json!({ "field_type": "List", "max_length": max_items, "actual_length": items.len() })),
            });
            return None;
        }
        let before = self.issues.len();
        let strings: Vec<String> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.check_string(item, vec![json!("body"), json!(name), json!(i)], 0, max_len))
            .collect();
        (self.issues.len() == before).then_some(strings)
    }

    /// The issues found, or `Ok` with the value built from the fields.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Vec<ValidationIssue>> {
        if !self.issues.is_empty() {
            return Err(self.issues);
        }
        build().ok_or(self.issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_offsets_follow_lines() {
        assert_eq!(byte_offset(b"{\n  x", 2, 3), 4);
        assert_eq!(byte_offset(b"", 1, 1), 0);
    }

    #[test]
    fn every_problem_is_listed_and_unknown_fields_are_not_one() {
        let body = json!({"name": 5, "tags": ["a", 3], "price": 1});
        let mut fields = Fields::new(&body, &["name", "tags"]);
        let name = fields.string("name", 1, 10);
        let tags = fields.string_list("tags", 5, 10);
        let issues = fields.finish(|| Some((name?, tags?))).unwrap_err();
        let kinds: Vec<_> = issues.iter().map(|i| (i.kind, i.loc.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                ("string_type", vec![json!("body"), json!("name")]),
                ("string_type", vec![json!("body"), json!("tags"), json!(1)]),
            ]
        );
    }
}
