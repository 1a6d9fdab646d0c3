use axum::extract::Path;
use axum::{Extension, Json};

use crate::server::auth::Caller;

use crate::error::ApiError;
use crate::server::state::AppState;
use crate::types::{ModelEntry, ModelList};

fn entry(state: &AppState, id: &str) -> ModelEntry {
    ModelEntry {
        id: id.to_owned(),
        object: "model".to_owned(),
        created: state.started_at,
        owned_by: "warden".to_owned(),
    }
}

/// The models this caller may use.
pub async fn list(state: AppState, Extension(caller): Extension<Caller>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".to_owned(),
        data: state
            .pool
            .model_ids()
            .iter()
            .filter(|id| caller.may_use_model(id))
            .map(|id| entry(&state, id))
            .collect(),
    })
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`). Ids may contain `/`.
pub async fn retrieve(
    state: AppState,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ModelEntry>, ApiError> {
    state
        .pool
        .route(&id)
        .filter(|route| caller.may_use_model(&route.id))
        .map(|route| Json(entry(&state, &route.id)))
        .ok_or(ApiError::ModelNotFound { model: id })
}
