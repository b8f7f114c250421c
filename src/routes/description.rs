//! `POST /generate/description`: a witty product description from a name and tags.

use axum::{Json, extract::State, http::HeaderMap};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    error::{AppError, Operation, ValidationIssue},
    extract::{AppJson, Fields, FromJsonBody},
    llm::{ChatPrompt, ProductFacts},
    routes::{ErrorBody, Generation, ValidationErrorBody},
    state::AppState,
};

/// Kept verbatim from the original so descriptions keep their style.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant that generates product descriptions using a witty and engaging tone, but make sure to not include any of the tags or the product name in the description.";

/// Longest accepted product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most tags accepted.
pub const MAX_TAGS: usize = 50;
/// Longest accepted tag, in characters.
pub const MAX_TAG_CHARS: usize = 100;

/// The product to describe.
#[derive(Debug, ToSchema)]
pub struct DescriptionRequest {
    /// Product name.
    #[schema(example = "Catnip Carnival", min_length = 1, max_length = 200)]
    pub name: String,
    /// Tags that characterise the product.
    #[schema(example = json!(["cat", "toy", "catnip"]), max_items = 50)]
    pub tags: Vec<String>,
}

impl FromJsonBody for DescriptionRequest {
    fn from_json(body: &Value) -> Result<Self, Vec<ValidationIssue>> {
        let mut fields = Fields::new(body, &["name", "tags"]);
        let name = fields.string("name", 1, MAX_NAME_CHARS);
        let tags = fields.string_list("tags", MAX_TAGS, MAX_TAG_CHARS);
        fields.finish(|| {
            Some(Self {
                name: name?,
                tags: tags?,
            })
        })
    }
}

/// The generated description.
#[derive(Debug, Serialize, ToSchema)]
pub struct DescriptionResponse {
    /// The description text.
    pub description: String,
}

/// The user message, worded as in the original.
pub fn user_prompt(name: &str, tags: &[String]) -> String {
    format!(
        "Generate a product description for the product '{name}' with the following tags: '{}'.",
        tags.join(", ")
    )
}

/// Generates a product description.
#[utoipa::path(
    post,
    path = "/generate/description",
    tag = "generate",
    request_body = DescriptionRequest,
    responses(
        (status = 200, description = "The generated description", body = DescriptionResponse),
        (status = 413, description = "The body is larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "The body does not validate (FastAPI's list form), or the content filter blocked the request (a sentence)", body = ValidationErrorBody),
        (status = 500, description = "The service is misconfigured for this model (e.g. TEMPERATURE)", body = ErrorBody),
        (status = 502, description = "The model API failed or refused the credentials", body = ErrorBody),
        (status = 503, description = "Busy, throttled upstream, or no Microsoft Entra token (with Retry-After when retrying helps)", body = ErrorBody),
        (status = 504, description = "The model did not answer within the budget", body = ErrorBody),
    )
)]
pub async fn generate_description(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(request): AppJson<DescriptionRequest>,
) -> Result<Json<DescriptionResponse>, AppError> {
    let prompt = ChatPrompt {
        system: SYSTEM_PROMPT.to_owned(),
        user: user_prompt(&request.name, &request.tags),
        temperature: state.temperature,
    };
    let facts = ProductFacts {
        name: request.name,
        tags: request.tags,
    };
    let call = Generation {
        slots: &state.description_slots,
        budget: state.limits.description_timeout,
        headers: &headers,
        operation: Operation::Description,
    };
    let description = call
        .run(|ctx| async move { state.chat.complete(&prompt, &facts, &ctx).await })
        .await?;
    Ok(Json(DescriptionResponse { description }))
}
