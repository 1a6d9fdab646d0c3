//! Upstream chunks → OpenAI SSE events for the client.
//!
//! What the OpenAI SDKs rely on, and this module guarantees: every chunk carries the same
//! `id`, `created` and (client-facing) `model`; usage is sent once, as a chunk with
//! `choices: []` just before `[DONE]`, and only when the client asked with
//! `stream_options.include_usage`; keep-alives are SSE comments; an error after the stream
//! began is a `data: {"error": ...}` event followed by `data: [DONE]`.

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;

use crate::backends::pool::StartedStream;
use crate::backends::{ChunkStream, UpstreamError};
use crate::error::ApiError;
use crate::types::{ChatChunk, Usage, chunk_object};

/// The id, creation time and model name shared by every chunk of one response.
#[derive(Debug, Clone)]
pub struct StreamIdentity {
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub fn sse(
    started: StartedStream,
    identity: StreamIdentity,
    include_usage: bool,
    request_id: String,
    keep_alive: Duration,
) -> Response {
    let events = events(
        started.first,
        started.rest,
        identity,
        include_usage,
        request_id,
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // Proxies such as nginx buffer responses unless told not to.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

enum Phase {
    Relaying,
    Done,
}

struct Relay {
    upstream: ChunkStream,
    pending: Option<ChatChunk>,
    identity: StreamIdentity,
    include_usage: bool,
    usage: Option<Usage>,
    request_id: String,
    phase: Phase,
}

/// The event stream: the first chunk (already received), the rest, then usage and `[DONE]`.
pub fn events(
    first: ChatChunk,
    rest: ChunkStream,
    identity: StreamIdentity,
    include_usage: bool,
    request_id: String,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let relay = Relay {
        upstream: rest,
        pending: Some(first),
        identity,
        include_usage,
        usage: None,
        request_id,
        phase: Phase::Relaying,
    };
    futures_util::stream::unfold(relay, |mut relay| async move {
        loop {
            if let Phase::Done = relay.phase {
                return None;
            }
            let next = match relay.pending.take() {
                Some(chunk) => Some(Ok(chunk)),
                None => relay.upstream.next().await,
            };
            let events = match next {
                Some(Ok(chunk)) => match relay.chunk_event(chunk) {
                    Some(event) => vec![event],
                    None => continue,
                },
                Some(Err(err)) => {
                    relay.phase = Phase::Done;
                    relay.error_events(err)
                }
                None => {
                    relay.phase = Phase::Done;
                    relay.closing_events()
                }
            };
            return Some((events, relay));
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok)))
}

impl Relay {
    /// Normalises one upstream chunk; `None` when it carried only usage.
    fn chunk_event(&mut self, mut chunk: ChatChunk) -> Option<Event> {
        if let Some(usage) = chunk.usage.take() {
            self.usage = Some(usage);
        }
        if chunk.choices.is_empty() {
            return None;
        }
        chunk.id.clone_from(&self.identity.id);
        chunk.created = self.identity.created;
        chunk.model.clone_from(&self.identity.model);
        chunk.object = chunk_object();
        Some(json_event(&chunk))
    }

    fn closing_events(&mut self) -> Vec<Event> {
        let mut events = Vec::with_capacity(2);
        if self.include_usage
            && let Some(usage) = self.usage
        {
            let chunk = ChatChunk {
                id: self.identity.id.clone(),
                object: chunk_object(),
                created: self.identity.created,
                model: self.identity.model.clone(),
                choices: Vec::new(),
                usage: Some(usage),
                extra: Default::default(),
            };
            events.push(json_event(&chunk));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn error_events(&mut self, err: UpstreamError) -> Vec<Event> {
        tracing::warn!(request_id = %self.request_id, error = %err, "stream failed after it began");
        let body = ApiError::Upstream(err).body(&self.request_id);
        vec![json_event(&body), Event::default().data("[DONE]")]
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(text) => Event::default().data(text),
        // Serializing plain data structs cannot fail; say so on the wire if it ever does.
        Err(_) => Event::default().data(r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#),
    }
}
