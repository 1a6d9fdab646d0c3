//! `x-request-id`: taken from the client when it sent a usable one, else made here. It is set on
//! every response, forwarded upstream, and carried in a task-local so that errors and logs can
//! name it without threading it through every function.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, or `"-"` outside a request.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// A fresh id; the same shape OpenAI uses for its own (`req_` + 32 hex digits).
pub fn generate() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// A client's id is kept only if it is short printable ASCII, so it is safe in headers and logs.
fn from_client(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let usable =
        !text.is_empty() && text.len() <= MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
    usable.then(|| text.to_owned())
}

pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(from_client)
        .unwrap_or_else(generate);
    let header_value = HeaderValue::from_str(&id).ok();
    if let Some(value) = &header_value {
        request.headers_mut().insert(HEADER, value.clone());
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    // Filled in by the stages as they run (see pipeline.rs), so the closing line of a request
    // carries who asked, what was decided and where the time went, and never any content.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        %method,
        %path,
        key = tracing::field::Empty,
        model = tracing::field::Empty,
        input = tracing::field::Empty,
        output = tracing::field::Empty,
        sources = tracing::field::Empty,
        backend = tracing::field::Empty,
        guard_input_us = tracing::field::Empty,
        retrieval_us = tracing::field::Empty,
        upstream_us = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    );
    let mut response = REQUEST_ID
        .scope(id, next.run(request))
        .instrument(span.clone())
        .await;
    if let Some(value) = header_value {
        response.headers_mut().insert(HEADER, value);
    }
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "response head sent"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_printable_and_short() {
        assert_eq!(
            from_client(&HeaderValue::from_static("abc-123")),
            Some("abc-123".to_owned())
        );
        assert_eq!(from_client(&HeaderValue::from_static("has space")), None);
        assert_eq!(from_client(&HeaderValue::from_static("")), None);
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(from_client(&HeaderValue::from_str(&long).unwrap()), None);
    }

    #[test]
    fn generated_ids_are_unique_and_prefixed() {
        let a = generate();
        let b = generate();
        assert!(a.starts_with("req_") && a.len() == 36);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn current_reads_the_scoped_id() {
        assert_eq!(current(), "-");
        let seen = REQUEST_ID
            .scope("req_x".to_owned(), async { current() })
            .await;
        assert_eq!(seen, "req_x");
    }
}
