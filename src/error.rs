//! The one error type of the request path and its mapping to the OpenAI error envelope.
//!
//! Every failure a client can see is an [`ApiError`]. Its status is chosen by the cause:
//! client input → 4xx, upstream failure → 502, upstream timeout → 504, dependency down → 503,
//! our own bug → 500 (with the details in the log and only the request id for the client).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backends::UpstreamError;
use crate::server::request_id;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// A resource named in the request does not exist (404), e.g. a collection.
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("The model `{model}` does not exist or you do not have access to it.")]
    ModelNotFound { model: String },
    #[error("Missing or invalid bearer token.")]
    Unauthorized,
    #[error("{message}")]
    RateLimited { message: String },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{message}")]
    Unavailable { message: String, code: &'static str },
    #[error("The request was blocked by the safety policy (categories: {}).", categories.join(", "))]
    ContentFilter { categories: Vec<String> },
    /// Our own bug or an unexpected condition; `detail` is logged, never sent.
    #[error("internal error")]
    Internal { detail: String },
}

/// The body of an OpenAI error: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::ContentFilter { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ModelNotFound { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Upstream(err) => err.client_status(),
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The envelope sent to the client. `request_id` goes into the message of internal errors so
    /// that an operator can find the logged details.
    pub fn body(&self, request_id: &str) -> ErrorBody {
        let (kind, param, code, message) = match self {
            ApiError::InvalidRequest { param, code, .. } => (
                "invalid_request_error",
                param.clone(),
                code.map(str::to_owned),
                self.to_string(),
            ),
            ApiError::NotFound { param, code, .. } => (
                "invalid_request_error",
                param.clone(),
                Some((*code).to_owned()),
                self.to_string(),
            ),
            ApiError::ContentFilter { .. } => (
                "invalid_request_error",
                Some("messages".to_owned()),
                Some("content_filter".to_owned()),
                self.to_string(),
            ),
            ApiError::PayloadTooLarge { .. } => (
                "invalid_request_error",
                None,
                Some("payload_too_large".to_owned()),
                self.to_string(),
            ),
            ApiError::ModelNotFound { .. } => (
                "invalid_request_error",
                Some("model".to_owned()),
                Some("model_not_found".to_owned()),
                self.to_string(),
            ),
            ApiError::RouteNotFound { .. } => (
                "invalid_request_error",
                None,
                Some("unknown_url".to_owned()),
                self.to_string(),
            ),
            ApiError::RateLimited { .. } => (
                "requests",
                None,
                Some("rate_limit_exceeded".to_owned()),
                self.to_string(),
            ),
            ApiError::Unauthorized => (
                "authentication_error",
                None,
                Some("invalid_api_key".to_owned()),
                self.to_string(),
            ),
            ApiError::Forbidden { .. } => (
                "permission_error",
                None,
                Some("forbidden".to_owned()),
                self.to_string(),
            ),
            ApiError::MethodNotAllowed { .. } => (
                "invalid_request_error",
                None,
                Some("method_not_allowed".to_owned()),
                self.to_string(),
            ),
            ApiError::Upstream(err) => {
                let envelope = err.client_envelope();
                (
                    envelope.kind,
                    envelope.param,
                    envelope.code,
                    envelope.message,
                )
            }
            ApiError::Unavailable { code, .. } => (
                "server_error",
                None,
                Some((*code).to_owned()),
                self.to_string(),
            ),
            ApiError::Internal { .. } => (
                "server_error",
                None,
                Some("internal_error".to_owned()),
                format!("internal error (request id {request_id})"),
            ),
        };
        ErrorBody {
            error: ErrorObject {
                message,
                kind: kind.to_owned(),
                param,
                code,
            },
        }
    }

    fn log(&self, request_id: &str) {
        match self {
            ApiError::Internal { detail } => {
                tracing::error!(request_id, detail = %detail, "internal error");
            }
            ApiError::Upstream(err) => {
                tracing::warn!(request_id, error = %err, "upstream error");
            }
            other => tracing::debug!(request_id, error = %other, "request rejected"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = request_id::current();
        self.log(&request_id);
        let mut response = (self.status(), Json(self.body(&request_id))).into_response();
        if let ApiError::Upstream(UpstreamError::Status {
            retry_after: Some(retry_after),
            ..
        }) = &self
            && let Ok(value) = HeaderValue::from_str(retry_after)
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
