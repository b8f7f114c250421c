//! `GET|HEAD /health`: liveness and what the service can do. Never calls an upstream,
//! so a long generation cannot fail the pod's probes.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// The health document; `status`, `version` and `capabilities` keep the original's meaning.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `APP_VERSION`, or 0.1.0.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// What the store-admin may offer: `description`, and `image` when an image model is configured.
    #[schema(example = json!(["description", "image"]))]
    pub capabilities: Vec<&'static str>,
    /// The active model backend: `azure-openai`, `openai`, `local` or `offline`.
    #[schema(example = "azure-openai")]
    pub backend: &'static str,
}

/// Reports that the service is up, its version and its capabilities.
#[utoipa::path(
    method(get, head),
    path = "/health",
    tag = "health",
    responses((status = 200, description = "The service is up", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: state.version.to_string(),
        capabilities: state.capabilities.to_vec(),
        backend: state.backend,
    })
}
