//! What every handler can reach: the models, the limits and the metrics.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::{
    config::{Limits, Settings},
    llm::{ChatModel, ImageModel},
    metrics::Metrics,
    services::Services,
};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Writes descriptions.
    pub chat: Arc<dyn ChatModel>,
    /// Draws images, when configured.
    pub image: Option<Arc<dyn ImageModel>>,
    /// Reported by `/health`.
    pub version: Arc<str>,
    /// The active backend's name.
    pub backend: &'static str,
    /// What `/health` advertises.
    pub capabilities: Arc<[&'static str]>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Deadlines and limits.
    pub limits: Arc<Limits>,
    /// Free description slots; none left means 503.
    pub description_slots: Arc<Semaphore>,
    /// Free image slots; none left means 503.
    pub image_slots: Arc<Semaphore>,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

impl AppState {
    /// The state for `settings`, with its models built.
    pub fn new(settings: &Settings, services: Services) -> Self {
        Self {
            chat: services.chat,
            image: services.image,
            version: settings.app_version.as_str().into(),
            backend: settings.backend.name(),
            capabilities: settings.capabilities().into(),
            temperature: settings.temperature,
            limits: Arc::new(settings.limits.clone()),
            description_slots: Arc::new(Semaphore::new(settings.limits.max_concurrent_descriptions)),
            image_slots: Arc::new(Semaphore::new(settings.limits.max_concurrent_images)),
            metrics: services.metrics,
        }
    }
}
