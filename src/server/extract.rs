//! Request extractors whose rejections use the OpenAI error envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body parsed strictly: a bad field is a 400 that names it, an oversized body a 413.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or_default();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::invalid(
                        format!("could not read the request body: {rejection}"),
                        None,
                    )
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The configured body limit, put in the request extensions so that the 413 can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid(
                format!(
                    "We could not parse the JSON body of your request: {inner}. \
                     The body must be a JSON object."
                ),
                None,
            );
        }
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let param = param_path(&path, &message);
        let message = match &param {
            Some(param) => format!("Invalid value for '{param}': {message}"),
            None => format!("Invalid request body: {message}"),
        };
        ApiError::invalid(message, param)
    })?;
    deserializer.end().map_err(|err| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {err}"),
            None,
        )
    })?;
    Ok(value)
}

/// serde names a missing field at its parent; the param is the field itself.
fn param_path(path: &str, message: &str) -> Option<String> {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let parent = if path == "." { "" } else { path };
    match missing {
        Some(field) if parent.is_empty() => Some(field.to_owned()),
        Some(field) => Some(format!("{parent}.{field}")),
        None if parent.is_empty() => None,
        None => Some(parent.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatRequest;

    fn param_of(body: &str) -> Option<String> {
        match parse_json::<ChatRequest>(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(param_of(r#"{"messages": []}"#).as_deref(), Some("model"));
        assert_eq!(
            param_of(r#"{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}"#)
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(r#"{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}"#)
                .as_deref(),
            Some("stream")
        );
        assert_eq!(param_of("{not json"), None);
        assert_eq!(param_of(r#"{"model": "m", "messages": []} trailing"#), None);
    }
}
