//! Every path Warden serves and its handler. This file should stay a list: logic lives in the
//! handlers and the pipeline.

use axum::Router;
use axum::routing::{get, post};

use crate::handlers::{chat, fallback, health, models, moderations};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/moderations", post(moderations::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(fallback::not_found)
        .method_not_allowed_fallback(fallback::method_not_allowed)
}
