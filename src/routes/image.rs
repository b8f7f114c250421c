//! `POST /generate/image`: a studio product photo from a name and description.

use axum::{Json, extract::State, http::HeaderMap};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    error::{AppError, Failure, Operation, ValidationIssue},
    extract::{AppJson, Fields, FromJsonBody},
    llm::ProductFacts,
    routes::{ErrorBody, Generation, ValidationErrorBody, description::MAX_NAME_CHARS, request_id},
    state::AppState,
};

/// Longest accepted description, in characters: the prompt must stay under DALL-E 3's 4,000.
pub const MAX_DESCRIPTION_CHARS: usize = 3500;

/// The product to picture.
#[derive(Debug, ToSchema)]
pub struct ImageRequest {
    /// Product name.
    #[schema(example = "Catnip Carnival", min_length = 1, max_length = 200)]
    pub name: String,
    /// Product description.
    #[schema(
        example = "A feather wand that turns any afternoon into a chase.",
        min_length = 1,
        max_length = 3500
    )]
    pub description: String,
}

impl FromJsonBody for ImageRequest {
    fn from_json(body: &Value) -> Result<Self, Vec<ValidationIssue>> {
        let mut fields = Fields::new(body, &["name", "description"]);
        let name = fields.string("name", 1, MAX_NAME_CHARS);
        let description = fields.string("description", 1, MAX_DESCRIPTION_CHARS);
        fields.finish(|| {
            Some(Self {
                name: name?,
                description: description?,
            })
        })
    }
}

/// The generated image.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageResponse {
    /// `data:image/png;base64,…`, or an https URL (DALL-E); either goes in `<img src>`.
    #[schema(example = "data:image/png;base64,iVBORw0KGgo...")]
    pub image: String,
}

/// The image prompt, worded as in the original.
pub fn image_prompt(name: &str, description: &str) -> String {
    format!(
        "Create a clean studio product photo for an online pet supply store. Show the product named '{name}' using this description: '{description}'. Use a plain background and retail packaging. No people, animals, or text overlays."
    )
}

/// Generates a product image.
#[utoipa::path(
    post,
    path = "/generate/image",
    tag = "generate",
    request_body = ImageRequest,
    responses(
        (status = 200, description = "The generated image", body = ImageResponse),
        (status = 400, description = "The image model rejected the request (its message)", body = ErrorBody),
        (status = 413, description = "The body is larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "The body does not validate (FastAPI's list form), or the safety system blocked the prompt (a sentence)", body = ValidationErrorBody),
        (status = 501, description = "No image deployment is configured", body = ErrorBody),
        (status = 502, description = "The model API failed or refused the credentials", body = ErrorBody),
        (status = 503, description = "Busy, throttled upstream, or no Microsoft Entra token (with Retry-After when retrying helps)", body = ErrorBody),
        (status = 504, description = "The model did not answer within the budget", body = ErrorBody),
    )
)]
pub async fn generate_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(request): AppJson<ImageRequest>,
) -> Result<Json<ImageResponse>, AppError> {
    let model = state.image.clone().ok_or_else(|| {
        AppError::generation(
            Operation::Image,
            request_id(&headers).as_deref(),
            Failure::ImageNotConfigured,
        )
    })?;
    let prompt = image_prompt(&request.name, &request.description);
    let facts = ProductFacts {
        name: request.name,
        tags: Vec::new(),
    };
    let call = Generation {
        slots: &state.image_slots,
        budget: state.limits.image_timeout,
        headers: &headers,
        operation: Operation::Image,
    };
    let image = call
        .run(|ctx| async move { model.generate(&prompt, &facts, &ctx).await })
        .await?;
    Ok(Json(ImageResponse {
        image: image.into_src(),
    }))
}
