//! The API's routes and its OpenAPI document, generated from the handlers.

pub mod description;
pub mod docs;
pub mod health;
pub mod image;

use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, header},
    routing::get,
};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{
    error::{AppError, Failure, Operation},
    llm::{CallContext, UpstreamError},
    state::AppState,
};

/// An error answered with a sentence.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A sentence the store-admin shows to a person.
    #[schema(
        example = "the model is receiving too many requests right now; try again in about 12 seconds (request 6ed9b964)."
    )]
    pub detail: String,
}

/// One validation problem, in FastAPI's form.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationIssueBody {
    /// pydantic's error type, e.g. `missing`, `string_type`, `json_invalid`, `string_too_long`.
    #[serde(rename = "type")]
    #[schema(example = "missing")]
    pub kind: String,
    /// Where the problem is, e.g. `["body", "name"]`.
    #[schema(value_type = Vec<Object>, example = json!(["body", "name"]))]
    pub loc: Vec<serde_json::Value>,
    /// What is wrong.
    #[schema(example = "Field required")]
    pub msg: String,
    /// The offending input.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
}

/// A body that does not validate: FastAPI's list form. (A content-filter 422 carries a sentence instead.)
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationErrorBody {
    /// Every problem found.
    pub detail: Vec<ValidationIssueBody>,
}

/// The OpenAPI document's header; paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ai-service",
        description = "Generates product descriptions and images for the AKS Store Demo with Azure OpenAI, \
                       authenticating passwordlessly with Microsoft Entra Workload ID.",
        license(name = "MIT")
    ),
    tags(
        (name = "generate", description = "Product text and images"),
        (name = "health", description = "Liveness and capabilities")
    )
)]
pub struct ApiDoc;

/// The documented routes, as an OpenAPI router.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(description::generate_description))
        .routes(routes!(image::generate_image))
}

/// The OpenAPI document, as committed in `openapi.yaml`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The routes plus `/openapi.json` and the interactive `/docs` page (served from the binary, offline).
pub fn router() -> Router<AppState> {
    let (router, api) = api_router().split_for_parts();
    // Serialised once: axum clones every route's handler for each connection, and a
    // captured `OpenApi` value cost ~250 KB per open connection.
    let document = Bytes::from(api.to_json().unwrap_or_default());
    router
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
        )
        .merge(docs::router())
}

/// What both generation routes do around their one model call: take a slot (or shed
/// the request with 503), give the call the route's budget, and map its failure.
pub struct Generation<'a> {
    /// The route's concurrency limit.
    pub slots: &'a Arc<Semaphore>,
    /// The route's total budget.
    pub budget: Duration,
    /// The request's headers (for `x-request-id`).
    pub headers: &'a HeaderMap,
    /// Which route, for the error sentence.
    pub operation: Operation,
}

impl Generation<'_> {
    /// Runs `call` within the budget, holding a slot for its whole duration.
    pub async fn run<T, F>(self, call: impl FnOnce(CallContext) -> F) -> Result<T, AppError>
    where
        F: Future<Output = Result<T, UpstreamError>>,
    {
        let request_id = request_id(self.headers);
        let operation = self.operation;
        let fail = |failure: Failure| AppError::generation(operation, request_id.as_deref(), failure);
        let _slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| fail(Failure::Overloaded))?;
        let ctx = CallContext::with_budget(self.budget, request_id.clone());
        tokio::time::timeout_at(ctx.deadline, call(ctx.clone()))
            .await
            .map_err(|_| fail(Failure::Timeout))?
            .map_err(|source| fail(Failure::Upstream(source)))
    }
}

/// The request's `x-request-id` (set by the request-id layer when the caller sent none).
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
