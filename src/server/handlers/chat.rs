use axum::Extension;
use axum::response::{IntoResponse, Response};

use crate::chat::pipeline;
use crate::error::ApiError;
use crate::server::auth::Caller;
use crate::server::extract::JsonBody;
use crate::server::state::AppState;
use crate::types::ChatRequest;

pub async fn completions(
    state: AppState,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let model = super::model_label(&state, Some(&request.model));
    let mut response = match pipeline::chat(state, caller, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(model);
    Ok(response)
}
