use axum::Extension;
use axum::response::{IntoResponse, Response};

use crate::chat::responses;
use crate::server::auth::Caller;
use crate::server::extract::JsonBody;
use crate::server::metrics::ModelLabel;
use crate::server::state::AppState;

/// `POST /v1/responses`: the Responses API over the chat pipeline.
pub async fn create(
    state: AppState,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Response {
    let model = body
        .get("model")
        .and_then(serde_json::Value::as_str)
        .and_then(|id| state.pool.route(id))
        .map_or_else(|| "unknown".to_owned(), |route| route.id.clone());
    let mut response = match responses::create(state, caller, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    response.extensions_mut().insert(ModelLabel(model));
    response
}
