//! Chat backends. Each kind speaks its own wire format in its own file and returns Warden's
//! types ([`ChatCompletion`], a stream of [`ChatChunk`]s); nothing outside that file knows the
//! format. [`pool`] picks a backend for a model, spreads load and fails over.

pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod pool;

use axum::http::StatusCode;
use futures_util::stream::BoxStream;
use std::time::Duration;

use crate::config::{BackendConfig, BackendKind};
use crate::types::{ChatChunk, ChatCompletion, ChatRequest};

pub type ChunkStream = BoxStream<'static, Result<ChatChunk, UpstreamError>>;

/// What is sent to a backend: the client's request with the upstream model name in `model`
/// and Warden's own options removed.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub body: ChatRequest,
    pub request_id: String,
}

pub enum Backend {
    Ollama(ollama::OllamaBackend),
    OpenAi(openai::OpenAiBackend),
}

impl Backend {
    pub fn new(config: &BackendConfig) -> Result<Backend, String> {
        let client = http_client(config)?;
        Ok(match config.kind {
            BackendKind::Ollama => Backend::Ollama(ollama::OllamaBackend::new(config, client)),
            BackendKind::Openai => Backend::OpenAi(openai::OpenAiBackend::new(config, client)),
        })
    }

    pub async fn chat(&self, request: &UpstreamRequest) -> Result<ChatCompletion, UpstreamError> {
        match self {
            Backend::Ollama(b) => b.chat(request).await,
            Backend::OpenAi(b) => b.chat(request).await,
        }
    }

    /// Starts a streamed completion; the stream ends after the last chunk, or with an error.
    pub async fn chat_stream(
        &self,
        request: &UpstreamRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        match self {
            Backend::Ollama(b) => b.chat_stream(request).await,
            Backend::OpenAi(b) => b.chat_stream(request).await,
        }
    }

    /// A raw text completion (no chat template applied), greedy: what the guard uses.
    pub async fn complete_raw(
        &self,
        model: &str,
        prompt: &str,
        max_tokens: u32,
        request_id: &str,
    ) -> Result<String, UpstreamError> {
        match self {
            Backend::Ollama(b) => b.complete_raw(model, prompt, max_tokens, request_id).await,
            Backend::OpenAi(b) => b.complete_raw(model, prompt, max_tokens, request_id).await,
        }
    }

    /// Checks that the backend answers; returns the model names it serves.
    pub async fn probe(&self, timeout: Duration) -> Result<Vec<String>, UpstreamError> {
        match self {
            Backend::Ollama(b) => b.probe(timeout).await,
            Backend::OpenAi(b) => b.probe(timeout).await,
        }
    }
}

fn http_client(config: &BackendConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(config.timeouts.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| {
            format!(
                "backend `{}`: cannot build an HTTP client: {err}",
                config.name
            )
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    FirstToken,
    Idle,
    Total,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstToken => "first token",
            TimeoutPhase::Idle => "idle between chunks",
            TimeoutPhase::Total => "total",
        })
    }
}

/// A failure to get an answer from a backend. `Display` is for logs (it names the backend);
/// [`UpstreamError::client_envelope`] is what the client sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("backend `{backend}` could not be reached: {message}")]
    Connect { backend: String, message: String },
    #[error("backend `{backend}` timed out ({phase})")]
    Timeout {
        backend: String,
        phase: TimeoutPhase,
    },
    #[error("backend `{backend}` answered HTTP {status}: {message}")]
    Status {
        backend: String,
        status: u16,
        message: String,
        kind: Option<String>,
        code: Option<String>,
        param: Option<String>,
        retry_after: Option<String>,
    },
    #[error("backend `{backend}` sent a response Warden cannot read: {message}")]
    Protocol { backend: String, message: String },
    /// The backend reported an error itself (an error line or event); its message is passed on.
    #[error("backend `{backend}` failed during generation: {message}")]
    Generation { backend: String, message: String },
    /// The connection broke or the stream ended early; details stay in the log.
    #[error("backend `{backend}` stream broke: {message}")]
    Broken { backend: String, message: String },
    #[error("{message}")]
    Unsupported {
        backend: String,
        message: String,
        param: Option<String>,
    },
}

/// The parts of the OpenAI error envelope for an upstream failure.
pub struct Envelope {
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl UpstreamError {
    pub fn backend(&self) -> &str {
        match self {
            UpstreamError::Connect { backend, .. }
            | UpstreamError::Timeout { backend, .. }
            | UpstreamError::Status { backend, .. }
            | UpstreamError::Protocol { backend, .. }
            | UpstreamError::Generation { backend, .. }
            | UpstreamError::Broken { backend, .. }
            | UpstreamError::Unsupported { backend, .. } => backend,
        }
    }

    /// A short name of the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Generation { .. } => "generation",
            UpstreamError::Broken { .. } => "broken",
            UpstreamError::Unsupported { .. } => "unsupported",
        }
    }

    /// Whether another backend may succeed where this one failed before sending anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } => true,
            UpstreamError::Timeout { phase, .. } => *phase == TimeoutPhase::Connect,
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub fn client_status(&self) -> StatusCode {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::Generation { .. }
            | UpstreamError::Broken { .. } => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Unsupported { .. } => StatusCode::BAD_REQUEST,
            UpstreamError::Status { status, .. } => match *status {
                // The backend refused Warden's own credentials: not the client's fault.
                401 | 403 => StatusCode::BAD_GATEWAY,
                400..=499 => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// What the client is told. Upstream 4xx messages are passed on (they are about the
    /// client's request); other failures are described without backend internals.
    pub fn client_envelope(&self) -> Envelope {
        let server = |code: &str, message: String| Envelope {
            kind: "server_error",
            message,
            param: None,
            code: Some(code.to_owned()),
        };
        match self {
            UpstreamError::Connect { .. } => server(
                "upstream_unreachable",
                "the model backend could not be reached".to_owned(),
            ),
            UpstreamError::Timeout { phase, .. } => server(
                "upstream_timeout",
                format!("the model backend did not answer in time ({phase} timeout)"),
            ),
            UpstreamError::Protocol { .. } => server(
                "upstream_protocol_error",
                "the model backend sent a response that could not be read".to_owned(),
            ),
            UpstreamError::Generation { message, .. } => server(
                "upstream_error",
                format!("the model backend failed during generation: {message}"),
            ),
            UpstreamError::Broken { .. } => server(
                "upstream_error",
                "the connection to the model backend broke before the answer was complete"
                    .to_owned(),
            ),
            UpstreamError::Unsupported { message, param, .. } => Envelope {
                kind: "invalid_request_error",
                message: message.clone(),
                param: param.clone(),
                code: Some("unsupported_parameter".to_owned()),
            },
            UpstreamError::Status {
                status,
                message,
                kind,
                code,
                param,
                ..
            } => match *status {
                401 | 403 => server(
                    "upstream_auth_error",
                    format!("the model backend refused Warden's credentials (HTTP {status})"),
                ),
                400..=499 => Envelope {
                    kind: if *status == 429 {
                        "rate_limit_error"
                    } else {
                        "invalid_request_error"
                    },
                    message: message.clone(),
                    param: param.clone(),
                    code: code.clone(),
                }
                .with_kind(kind.as_deref()),
                _ => server(
                    "upstream_error",
                    format!("the model backend failed (HTTP {status})"),
                ),
            },
        }
    }
}

impl Envelope {
    fn with_kind(mut self, upstream_kind: Option<&str>) -> Envelope {
        // Keep the upstream's own type when it is one of OpenAI's well-known ones.
        if let Some(kind) = upstream_kind {
            for known in [
                "invalid_request_error",
                "not_found_error",
                "rate_limit_error",
            ] {
                if kind == known {
                    self.kind = known;
                }
            }
        }
        self
    }
}

/// Sends a request to a backend with its key (when it has one); a failure to send and a
/// non-2xx answer both become the matching [`UpstreamError`].
pub async fn send(
    backend: &str,
    builder: reqwest::RequestBuilder,
    api_key: Option<&crate::config::Secret>,
) -> Result<reqwest::Response, UpstreamError> {
    let builder = match api_key {
        Some(key) => builder.bearer_auth(key.expose()),
        None => builder,
    };
    let response = builder
        .send()
        .await
        .map_err(|err| send_error(backend, &err))?;
    if !response.status().is_success() {
        return Err(status_error(backend, response).await);
    }
    Ok(response)
}

/// Sends a request and reads its JSON body; `what` names the body in a protocol error.
pub async fn send_json(
    backend: &str,
    builder: reqwest::RequestBuilder,
    api_key: Option<&crate::config::Secret>,
    what: &str,
) -> Result<serde_json::Value, UpstreamError> {
    let response = send(backend, builder, api_key).await?;
    response
        .json()
        .await
        .map_err(|err| UpstreamError::Protocol {
            backend: backend.to_owned(),
            message: format!("{what}: {err}"),
        })
}

/// Turns a reqwest error from sending a request into the matching [`UpstreamError`].
/// A tool call id of OpenAI's shape, for a backend (or a translation) that gives none.
pub fn tool_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

pub fn send_error(backend: &str, err: &reqwest::Error) -> UpstreamError {
    if err.is_timeout() {
        UpstreamError::Timeout {
            backend: backend.to_owned(),
            phase: TimeoutPhase::Connect,
        }
    } else if err.is_connect() {
        UpstreamError::Connect {
            backend: backend.to_owned(),
            message: error_chain(err),
        }
    } else {
        UpstreamError::Broken {
            backend: backend.to_owned(),
            message: error_chain(err),
        }
    }
}

/// An error and its sources on one line, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads the body of a non-2xx response into a [`UpstreamError::Status`]. Both OpenAI
/// (`{"error": {"message", ...}}`) and Ollama (`{"error": "..."}`) shapes are understood.
pub async fn status_error(backend: &str, response: reqwest::Response) -> UpstreamError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let message = match error {
        Some(serde_json::Value::String(message)) => message.clone(),
        Some(_) => field("message").unwrap_or_default(),
        None => text.chars().take(500).collect(),
    };
    let message = if message.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    UpstreamError::Status {
        backend: backend.to_owned(),
        status,
        message,
        kind: field("type"),
        code: field("code"),
        param: field("param"),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> UpstreamError {
        UpstreamError::Status {
            backend: "b".into(),
            status,
            message: "bad temperature".into(),
            kind: Some("invalid_request_error".into()),
            code: None,
            param: Some("temperature".into()),
            retry_after: None,
        }
    }

    #[test]
    fn statuses_follow_the_cause() {
        assert_eq!(status(400).client_status(), StatusCode::BAD_REQUEST);
        assert_eq!(status(404).client_status(), StatusCode::NOT_FOUND);
        assert_eq!(status(429).client_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(500).client_status(), StatusCode::BAD_GATEWAY);
        assert_eq!(status(401).client_status(), StatusCode::BAD_GATEWAY);
        let timeout = UpstreamError::Timeout {
            backend: "b".into(),
            phase: TimeoutPhase::FirstToken,
        };
        assert_eq!(timeout.client_status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!timeout.is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
    }

    #[test]
    fn client_messages_pass_4xx_details_and_hide_5xx_ones() {
        let four = status(400).client_envelope();
        assert_eq!(four.message, "bad temperature");
        assert_eq!(four.param.as_deref(), Some("temperature"));
        let five = UpstreamError::Status {
            backend: "secret-host".into(),
            status: 500,
            message: "stack trace at /srv/model.py".into(),
            kind: None,
            code: None,
            param: None,
            retry_after: None,
        }
        .client_envelope();
        assert!(!five.message.contains("secret-host"));
        assert!(!five.message.contains("model.py"));
    }
}
