//! Every path Warden serves and its handler. This file should stay a list: logic lives in the
//! handlers and the pipeline.

use axum::Router;
use axum::routing::{delete, get, post};

use crate::server::handlers::{
    admin, chat, collections, console, embeddings, fallback, health, models, moderations, responses,
};
use crate::server::state::SharedState;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/moderations", post(moderations::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route(
            "/v1/collections",
            get(collections::list).post(collections::create),
        )
        .route(
            "/v1/collections/{name}",
            delete(collections::drop_collection),
        )
        .route(
            "/v1/collections/{name}/documents",
            get(collections::list_documents).post(collections::add_document),
        )
        .route("/v1/collections/{name}/files", post(collections::upload))
        .route(
            "/v1/collections/{name}/documents/{doc_id}",
            delete(collections::delete_document),
        )
        .route("/v1/admin/audit", get(admin::audit))
        .route("/v1/admin/policies", get(admin::policies))
        .route("/console", get(console::page))
        .route("/console/{file}", get(console::file))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(fallback::not_found)
        .method_not_allowed_fallback(fallback::method_not_allowed)
}
