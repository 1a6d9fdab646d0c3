use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};

use crate::chat::responses;
use crate::error::ApiError;
use crate::server::auth::Caller;
use crate::server::extract::JsonBody;
use crate::server::state::AppState;

/// `POST /v1/responses`: the Responses API over the chat pipeline.
pub async fn create(
    state: AppState,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Response {
    let model = super::model_label(
        &state,
        body.get("model").and_then(serde_json::Value::as_str),
    );
    let mut response = match responses::create(state, caller, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(model);
    response
}

/// `GET /v1/responses/{id}`: a response this key stored.
pub async fn retrieve(
    state: AppState,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    responses::retrieve(&state, &caller, &id).map(Json)
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    state: AppState,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    responses::delete(&state, &caller, &id).map(Json)
}
