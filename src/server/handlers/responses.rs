use axum::Extension;
use axum::response::{IntoResponse, Response};

use crate::chat::responses;
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
