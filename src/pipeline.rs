//! The request path of `POST /v1/chat/completions`, stage by stage. This doc and `chat` below
//! read in the same order:
//!
//! 1. **parse + validate** — the [`JsonBody`](crate::extract::JsonBody) extractor and
//!    [`validate`]: malformed JSON or a bad field is a 400 naming the field, a body over the
//!    limit a 413.
//! 2. **resolve the model** — the client-facing id to its route of backends: 404
//!    `model_not_found` when unknown.
//! 3. **pre-dispatch checks** — the input guard and retrieval run here, concurrently, and
//!    nothing is sent upstream before both are done (they arrive with the guard and
//!    retrieval issues; today this stage strips Warden's own `warden` options only).
//! 4. **dispatch** — [`Pool`](crate::backends::pool::Pool) picks a backend, fails over before
//!    the first byte, and waits for the first chunk so that an early failure is a real HTTP
//!    error.
//! 5. **relay** — [`relay`](crate::relay) turns upstream chunks into OpenAI SSE events (the
//!    output guard sits between the two), or returns the whole completion.
//!
//! No task is spawned per request: the response body pulls from the upstream stream, so
//! backpressure is natural and a client that goes away drops the upstream request with it.

use axum::Json;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::relay::{self, StreamIdentity};
use crate::request_id;
use crate::state::{AppState, unix_now};
use crate::types::{ChatRequest, MessageContent};

pub async fn chat(state: AppState, mut request: ChatRequest) -> Result<Response, ApiError> {
    // 1. parse + validate
    validate(&request)?;

    // 2. resolve the model
    let route = state
        .pool
        .route(&request.model)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: request.model.clone(),
        })?;

    // 3. pre-dispatch checks
    request.warden = None;

    // 4. dispatch, and 5. relay
    let request_id = request_id::current();
    let identity = StreamIdentity::new(&route.id);
    if request.is_stream() {
        let include_usage = request.wants_usage_chunk();
        let started = state.pool.stream(&route, request, &request_id).await?;
        tracing::debug!(backend = %started.backend, "stream started");
        Ok(relay::sse(
            started,
            identity,
            include_usage,
            request_id,
            state.config.server.sse_keep_alive,
        ))
    } else {
        let (mut completion, backend) = state.pool.complete(&route, request, &request_id).await?;
        tracing::debug!(%backend, "completion received");
        completion.id = identity.id;
        completion.created = identity.created;
        completion.model = identity.model;
        Ok(Json(completion).into_response())
    }
}

/// Checks that serde cannot express, with OpenAI's wording where it has one.
pub fn validate(request: &ChatRequest) -> Result<(), ApiError> {
    if request.model.trim().is_empty() {
        return Err(ApiError::invalid(
            "you must provide a model parameter",
            Some("model".to_owned()),
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            Some("messages".to_owned()),
        ));
    }
    if request.stream_options.is_some() && !request.is_stream() {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options".to_owned()),
        ));
    }
    for (i, message) in request.messages.iter().enumerate() {
        if let Some(MessageContent::Parts(parts)) = &message.content {
            for (j, part) in parts.iter().enumerate() {
                let complete = match part.kind.as_str() {
                    "text" => part.text.is_some(),
                    "image_url" => part.image_url.is_some(),
                    _ => true,
                };
                if !complete {
                    return Err(ApiError::invalid(
                        format!(
                            "content part of type '{}' is missing its '{}' field",
                            part.kind, part.kind
                        ),
                        Some(format!("messages[{i}].content[{j}]")),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Warden's own chat completion ids, the shape OpenAI uses.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

impl StreamIdentity {
    pub fn new(model: &str) -> StreamIdentity {
        StreamIdentity {
            id: completion_id(),
            created: unix_now(),
            model: model.to_owned(),
        }
    }
}
