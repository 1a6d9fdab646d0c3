//! Thin HTTP handlers: extract, call the pipeline or the component, answer.

pub mod admin;
pub mod chat;
pub mod collections;
pub mod console;
pub mod embeddings;
pub mod fallback;
pub mod health;
pub mod models;
pub mod moderations;
pub mod responses;

use crate::server::metrics::ModelLabel;
use crate::server::state::AppState;

/// The metrics label of a requested model: its configured id, or `unknown` (a label per
/// made-up name would grow without bound).
fn model_label(state: &AppState, requested: Option<&str>) -> ModelLabel {
    ModelLabel(
        requested
            .and_then(|id| state.pool.route(id))
            .map_or_else(|| "unknown".to_owned(), |route| route.id.clone()),
    )
}
