use axum::Extension;
use axum::extract::State;
use axum::response::Response;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::pipeline;
use crate::state::AppState;
use crate::types::ChatRequest;

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    pipeline::chat(state, caller, request).await
}
