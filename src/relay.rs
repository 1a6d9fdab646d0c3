//! Upstream chunks → OpenAI SSE events for the client, with the output guard in between.
//!
//! What the OpenAI SDKs rely on, and this module guarantees: every chunk carries the same
//! `id`, `created` and (client-facing) `model`; usage is sent once, as a chunk with
//! `choices: []` just before `[DONE]`, and only when the client asked with
//! `stream_options.include_usage`; keep-alives are SSE comments; an error after the stream
//! began is a `data: {"error": ...}` event followed by `data: [DONE]`.
//!
//! Output moderation, when the policy checks output:
//! - `buffered`: chunks are held until the text they carry was judged safe, a window at a
//!   time; at the end the rest is judged before anything else goes out.
//! - `stream_first`: chunks go out at once, checks run beside the stream, and the last chunk
//!   (the one with `finish_reason`) waits for the final check.
//!
//! On an unsafe verdict the stream ends with a chunk whose `finish_reason` is
//! `content_filter`, then `[DONE]`, and the upstream request is dropped (cancelled).

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;

use crate::backends::pool::StartedStream;
use crate::backends::{ChunkStream, UpstreamError};
use crate::error::ApiError;
use crate::guard::Decision;
use crate::guard::output::{CheckFuture, OutputModerator, released_logprobs};
use crate::guard::policy::StreamMode;
use crate::metrics::{Metrics, StreamGauge};
use crate::note::Note;
use crate::types::{ChatChunk, ChunkChoice, Delta, Usage, chunk_object};
use std::sync::Arc;
use std::time::Instant;

/// The id, creation time and model name shared by every chunk of one response.
#[derive(Debug, Clone)]
pub struct StreamIdentity {
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub struct RelayOptions {
    pub identity: StreamIdentity,
    pub include_usage: bool,
    pub request_id: String,
    pub keep_alive: Duration,
    pub moderator: Option<OutputModerator>,
    /// The `warden` object: all of it on the first chunk, the guard's verdicts on the last.
    pub note: Option<Note>,
    pub metrics: Arc<Metrics>,
    /// When the request arrived, for the time to first token.
    pub started: Instant,
    pub audit: Option<crate::audit::Context>,
    /// The caller's key name, for the token counts.
    pub key: String,
    /// The key's token budget, settled with the reported usage at the end.
    pub limits: Arc<crate::limits::Limits>,
    pub estimate: u32,
    /// The request's span: the stream's closing line is logged in it.
    pub span: tracing::Span,
}

/// While output is held for judgement nothing else is written, and a server only notices a
/// client that left when a write fails: a comment at least this often while a moderator holds
/// text makes that happen within a second, which drops the upstream request and guard calls.
pub const HOLD_HEARTBEAT: Duration = Duration::from_millis(250);

pub fn sse(started: StartedStream, options: RelayOptions) -> Response {
    let keep_alive = match &options.moderator {
        Some(_) => options.keep_alive.min(HOLD_HEARTBEAT),
        None => options.keep_alive,
    };
    sse_response(events(started.first, started.rest, options), keep_alive)
}

fn sse_response<S>(events: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // Proxies such as nginx buffer responses unless told not to.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A refused request, streamed: the refusal, a `content_filter` finish, usage if asked, `[DONE]`.
pub fn refusal_sse(
    identity: StreamIdentity,
    refusal: &str,
    warden: Value,
    include_usage: bool,
) -> Response {
    let mut first = chunk(
        &identity,
        Delta {
            role: Some("assistant".to_owned()),
            content: Some(refusal.to_owned()),
            ..Delta::default()
        },
        None,
    );
    first.warden = Some(warden);
    let mut events = vec![
        json_event(&first),
        json_event(&chunk(&identity, Delta::default(), Some("content_filter"))),
    ];
    if include_usage {
        events.push(json_event(&usage_chunk(&identity, Usage::default())));
    }
    events.push(Event::default().data("[DONE]"));
    sse_response(
        futures_util::stream::iter(events.into_iter().map(Ok)),
        Duration::from_secs(15),
    )
}

fn chunk(identity: &StreamIdentity, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
    ChatChunk {
        id: identity.id.clone(),
        object: chunk_object(),
        created: identity.created,
        model: identity.model.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish_reason.map(str::to_owned),
            ..Default::default()
        }],
        usage: None,
        ..Default::default()
    }
}

fn usage_chunk(identity: &StreamIdentity, usage: Usage) -> ChatChunk {
    ChatChunk {
        id: identity.id.clone(),
        object: chunk_object(),
        created: identity.created,
        model: identity.model.clone(),
        choices: Vec::new(),
        usage: Some(usage),
        ..Default::default()
    }
}

struct Moderation {
    moderator: OutputModerator,
    mode: StreamMode,
    /// Chunks not released yet: all of them in `buffered` mode, the finishing one in
    /// `stream_first`.
    held: Vec<ChatChunk>,
    /// A `stream_first` check running beside the stream.
    check: Option<CheckFuture>,
}

struct Relay {
    upstream: ChunkStream,
    pending: Option<ChatChunk>,
    identity: StreamIdentity,
    include_usage: bool,
    usage: Option<Usage>,
    request_id: String,
    note: Option<Note>,
    first_sent: bool,
    metrics: Arc<Metrics>,
    started: Instant,
    audit: Option<crate::audit::Context>,
    key: String,
    limits: Arc<crate::limits::Limits>,
    estimate: u32,
    /// Counts the stream as in flight until the relay is dropped.
    _gauge: StreamGauge,
    moderation: Option<Moderation>,
    done: bool,
    span: tracing::Span,
    first_token_us: Option<u64>,
    /// The closing line was logged.
    logged: bool,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the server is stopping).
        self.log_end("client_gone", None);
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value at a time, on the stack of `step`; boxing would allocate per chunk"
)]
enum Next {
    Upstream(Option<Result<ChatChunk, UpstreamError>>),
    Checked((crate::guard::Judgement, usize)),
}

/// The event stream: the first chunk (already received), the rest, then usage and `[DONE]`.
pub fn events(
    first: ChatChunk,
    rest: ChunkStream,
    options: RelayOptions,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let moderation = options.moderator.map(|moderator| Moderation {
        mode: moderator.policy.stream_mode,
        moderator,
        held: Vec::new(),
        check: None,
    });
    let relay = Relay {
        upstream: rest,
        pending: Some(first),
        identity: options.identity,
        include_usage: options.include_usage,
        usage: None,
        request_id: options.request_id,
        note: options.note,
        first_sent: false,
        _gauge: options.metrics.stream_started(),
        metrics: options.metrics,
        started: options.started,
        audit: options.audit,
        key: options.key,
        limits: options.limits,
        estimate: options.estimate,
        moderation,
        done: false,
        span: options.span,
        first_token_us: None,
        logged: false,
    };
    futures_util::stream::unfold(relay, |mut relay| async move {
        loop {
            if relay.done {
                return None;
            }
            let events = relay.step().await;
            if !events.is_empty() {
                return Some((events, relay));
            }
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok)))
}

impl Relay {
    /// Advances by one upstream chunk or one finished check; returns what may go out now.
    async fn step(&mut self) -> Vec<Event> {
        let next = if let Some(chunk) = self.pending.take() {
            Next::Upstream(Some(Ok(chunk)))
        } else {
            let Relay {
                upstream,
                moderation,
                ..
            } = self;
            match moderation.as_mut().and_then(|m| m.check.as_mut()) {
                Some(check) => tokio::select! {
                    checked = check => Next::Checked(checked),
                    item = upstream.next() => Next::Upstream(item),
                },
                None => Next::Upstream(upstream.next().await),
            }
        };
        match next {
            Next::Checked((judgement, upto)) => {
                let Some(moderation) = self.moderation.as_mut() else {
                    return Vec::new();
                };
                moderation.check = None;
                let decision = moderation.moderator.finish_check(judgement, upto);
                if !decision.lets_through() {
                    return self.cut(decision);
                }
                self.start_background_check();
                Vec::new()
            }
            Next::Upstream(Some(Ok(chunk))) => self.on_chunk(chunk).await,
            Next::Upstream(Some(Err(err))) => {
                self.done = true;
                self.metrics.upstream_error(err.backend(), err.kind());
                self.span
                    .in_scope(|| tracing::warn!(error = %err, "stream failed after it began"));
                self.log_end("upstream_failed", None);
                // Held text was never judged: it is dropped with the stream.
                let body = ApiError::Upstream(err).body(&self.request_id);
                vec![json_event(&body), Event::default().data("[DONE]")]
            }
            Next::Upstream(None) => self.on_end().await,
        }
    }

    async fn on_chunk(&mut self, mut chunk: ChatChunk) -> Vec<Event> {
        if let Some(usage) = chunk.usage.take() {
            self.usage = Some(usage);
        }
        if chunk.choices.is_empty() {
            return Vec::new();
        }
        chunk.id.clone_from(&self.identity.id);
        chunk.created = self.identity.created;
        chunk.model.clone_from(&self.identity.model);
        chunk.object = chunk_object();
        let Some(moderation) = self.moderation.as_mut() else {
            return vec![self.emit(chunk)];
        };
        // One answer is moderated (`n` > 1 is refused while output is checked): a choice an
        // upstream sends beyond it is not judged, so it is not relayed.
        chunk.choices.retain(|c| c.index == 0);
        if chunk.choices.is_empty() {
            return Vec::new();
        }
        for choice in &mut chunk.choices {
            choice.logprobs = choice.logprobs.take().and_then(|logprobs| {
                released_logprobs(
                    &logprobs,
                    choice.delta.content.as_deref(),
                    choice.delta.refusal.as_deref(),
                )
            });
        }
        moderation.moderator.observe(&chunk);
        match moderation.mode {
            StreamMode::Buffered => {
                moderation.held.push(chunk);
                if !moderation.moderator.window_ready() {
                    return Vec::new();
                }
                let (judgement, upto) = moderation.moderator.start_check().await;
                let decision = moderation.moderator.finish_check(judgement, upto);
                if !decision.lets_through() {
                    return self.cut(decision);
                }
                self.release_held()
            }
            StreamMode::StreamFirst => {
                let finishing = chunk.choices.iter().any(|c| c.finish_reason.is_some());
                let events = if finishing {
                    moderation.held.push(chunk);
                    Vec::new()
                } else {
                    vec![self.emit(chunk)]
                };
                self.start_background_check();
                events
            }
        }
    }

    fn start_background_check(&mut self) {
        if let Some(moderation) = self.moderation.as_mut()
            && moderation.check.is_none()
            && moderation.moderator.window_ready()
        {
            moderation.check = Some(moderation.moderator.start_check());
        }
    }

    async fn on_end(&mut self) -> Vec<Event> {
        let mut output = None;
        if let Some(moderation) = self.moderation.as_mut() {
            if let Some(check) = moderation.check.take() {
                let (judgement, upto) = check.await;
                let decision = moderation.moderator.finish_check(judgement, upto);
                if !decision.lets_through() {
                    return self.cut(decision);
                }
            }
            let decision = moderation.moderator.check_rest().await;
            if !decision.lets_through() {
                return self.cut(decision);
            }
            let categories = moderation.moderator.judgement.categories();
            record_output(
                &self.metrics,
                self.audit.as_ref(),
                &moderation.moderator,
                decision,
                &categories,
                moderation.moderator.text(),
            );
            if let Some(note) = self.note.as_mut() {
                note.set_output(decision, categories);
            }
            output = Some(decision.label());
        }
        let mut events = self.release_held();
        self.done = true;
        // Counted once, at the end: the last usage an upstream sent is the total.
        if let Some(usage) = &self.usage {
            self.metrics.tokens(&self.key, usage);
            self.limits
                .settle_tokens(&self.key, self.estimate, usage.total_tokens);
        }
        if self.include_usage
            && let Some(usage) = self.usage
        {
            events.push(json_event(&usage_chunk(&self.identity, usage)));
        }
        events.push(Event::default().data("[DONE]"));
        // After the release: the first token of a buffered stream leaves only now.
        self.log_end("completed", output);
        events
    }

    /// The stream's closing line, once: how it ended, the output verdict, the tokens and the
    /// times (the request's span adds who asked, the model and the input stages).
    fn log_end(&mut self, outcome: &'static str, output: Option<&'static str>) {
        if self.logged {
            return;
        }
        self.logged = true;
        let total_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (prompt_tokens, completion_tokens) = match &self.usage {
            Some(usage) => (Some(usage.prompt_tokens), Some(usage.completion_tokens)),
            None => (None, None),
        };
        self.span.in_scope(|| {
            tracing::info!(
                outcome,
                output,
                prompt_tokens,
                completion_tokens,
                first_token_us = self.first_token_us,
                total_us,
                "stream finished"
            )
        });
    }

    /// Releases held chunks; the output verdict rides on the one that finishes the answer.
    fn release_held(&mut self) -> Vec<Event> {
        let held = match self.moderation.as_mut() {
            Some(moderation) => std::mem::take(&mut moderation.held),
            None => Vec::new(),
        };
        let mut events = Vec::with_capacity(held.len());
        for mut chunk in held {
            let finishing = chunk.choices.iter().any(|c| c.finish_reason.is_some());
            if finishing
                && let Some(note) = &self.note
                && note.has_output()
            {
                chunk.warden = Some(note.json_last());
            }
            events.push(self.emit(chunk));
        }
        events
    }

    /// Serializes a chunk; the first one carries the input verdict.
    fn emit(&mut self, mut chunk: ChatChunk) -> Event {
        if !self.first_sent {
            self.first_sent = true;
            let elapsed = self.started.elapsed();
            self.metrics.first_token(&self.identity.model, elapsed);
            self.first_token_us = Some(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
            if let Some(note) = &self.note
                && chunk.warden.is_none()
            {
                chunk.warden = Some(note.json());
            }
        }
        json_event(&chunk)
    }

    /// Ends the stream after an unsafe verdict (or a guard failure that fails closed); held
    /// text is dropped, and so is the upstream request.
    fn cut(&mut self, decision: Decision) -> Vec<Event> {
        self.done = true;
        let categories = self
            .moderation
            .as_ref()
            .map(|m| m.moderator.judgement.categories())
            .unwrap_or_default();
        if let Some(moderation) = self.moderation.as_mut() {
            moderation.held.clear();
            moderation.check = None;
            record_output(
                &self.metrics,
                self.audit.as_ref(),
                &moderation.moderator,
                decision,
                &categories,
                moderation.moderator.text(),
            );
        }
        // Dropping the upstream stream closes its connection: generation stops.
        self.upstream = futures_util::stream::empty().boxed();
        self.log_end("cut", Some(decision.label()));
        if decision == Decision::Unavailable {
            let error = ApiError::Unavailable {
                message: "the safety guard is unavailable and the policy fails closed".to_owned(),
                code: "guard_unavailable",
            };
            return vec![
                json_event(&error.body(&self.request_id)),
                Event::default().data("[DONE]"),
            ];
        }
        if let Some(note) = self.note.as_mut() {
            note.set_output(decision, categories);
        }
        let mut last = chunk(&self.identity, Delta::default(), Some("content_filter"));
        if let Some(note) = &self.note {
            last.warden = Some(note.json_last());
        }
        let mut events = vec![json_event(&last)];
        if self.include_usage
            && let Some(usage) = self.usage
        {
            events.push(json_event(&usage_chunk(&self.identity, usage)));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }
}

/// An output verdict, counted and (unless safe) written to the audit log with the judged text.
pub fn record_output(
    metrics: &Metrics,
    audit: Option<&crate::audit::Context>,
    moderator: &OutputModerator,
    decision: Decision,
    categories: &[String],
    content: &str,
) {
    let policy = &moderator.policy.name;
    metrics.guard_verdict(policy, "output", decision.label(), categories);
    if let Some(audit) = audit {
        audit.record(policy, "output", decision, categories, Some(content));
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(text) => Event::default().data(text),
        // Serializing plain data structs cannot fail; say so on the wire if it ever does.
        Err(_) => Event::default().data(
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#,
        ),
    }
}
