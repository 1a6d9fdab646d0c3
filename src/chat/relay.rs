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
//! Each choice (`n`) is an answer of its own, with its own moderator and held chunks. On an
//! unsafe verdict that choice ends with a chunk whose `finish_reason` is `content_filter` and
//! what the upstream still sends for it is dropped; once every choice was stopped the stream
//! ends (`[DONE]`) and the upstream request is dropped (cancelled). A guard failure under a
//! policy that fails closed ends the whole stream with an error event.

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;

use crate::backends::pool::StartedStream;
use crate::backends::{ChunkStream, UpstreamError};
use crate::chat::note::{ModerationReport, Note};
use crate::error::ApiError;
use crate::guard::Decision;
use crate::guard::output::{CheckFuture, OutputModerator, combined_verdict, released_logprobs};
use crate::guard::policy::StreamMode;
use crate::server::metrics::{Metrics, StreamGauge};
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
    /// How many choices the client asked for (`n`): one moderator each.
    pub choices: usize,
    /// The `warden` object: all of it on the first chunk, the guard's verdicts on the last.
    pub note: Option<Note>,
    /// OpenAI's `moderation` results, when asked: a chunk of their own before usage.
    pub report: Option<ModerationReport>,
    pub metrics: Arc<Metrics>,
    /// When the request arrived, for the time to first token.
    pub started: Instant,
    pub audit: Option<crate::server::audit::Context>,
    /// The caller's key name, for the token counts.
    pub key: String,
    /// The key's token budget, settled with the reported usage at the end.
    pub limits: Arc<crate::server::limits::Limits>,
    pub estimate: u32,
    /// The request's span: the stream's closing line is logged in it.
    pub span: tracing::Span,
}

/// While output is held for judgement nothing else is written, and a server only notices a
/// client that left when a write fails: a comment at least this often while a moderator holds
/// text makes that happen within a second, which drops the upstream request and guard calls.
pub const HOLD_HEARTBEAT: Duration = Duration::from_millis(250);

/// What the relay lets out, in order: chat chunks, an error that ended the stream, and the end.
/// [`sse`] writes them as chat completion SSE; the Responses API writes them as its own events.
#[derive(Debug)]
pub enum Frame {
    Chunk(Box<ChatChunk>),
    /// An error envelope (`{"error": ...}`): the stream failed after it began.
    Error(crate::error::ErrorBody),
    Done,
}

impl Frame {
    fn chunk(chunk: ChatChunk) -> Frame {
        Frame::Chunk(Box::new(chunk))
    }
}

pub type FrameStream = futures_util::stream::BoxStream<'static, Frame>;

/// How often a stream sends a keep-alive comment: more often while a moderator holds text.
pub fn keep_alive(configured: Duration, moderated: bool) -> Duration {
    if moderated {
        configured.min(HOLD_HEARTBEAT)
    } else {
        configured
    }
}

/// The relay's frames for one started stream.
pub fn frames(started: StartedStream, options: RelayOptions) -> FrameStream {
    events(started.first, started.rest, options).boxed()
}

/// Frames as chat completion SSE: each chunk a `data:` event, an error its envelope, the end
/// `data: [DONE]`.
pub fn sse(frames: FrameStream, keep_alive: Duration) -> Response {
    sse_response(
        frames.map(|frame| {
            Ok(match frame {
                Frame::Chunk(chunk) => json_event(&chunk),
                Frame::Error(body) => json_event(&body),
                Frame::Done => Event::default().data("[DONE]"),
            })
        }),
        keep_alive,
    )
}

/// An SSE response over any event stream, with the keep-alive and the header that stops proxies
/// from buffering it.
pub fn sse_response<S>(events: S, keep_alive: Duration) -> Response
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
pub fn refusal_frames(
    identity: &StreamIdentity,
    refusal: &str,
    warden: Value,
    moderation: Option<Value>,
    include_usage: bool,
) -> FrameStream {
    let mut first = chunk(
        identity,
        Delta {
            role: Some("assistant".to_owned()),
            content: Some(refusal.to_owned()),
            ..Delta::default()
        },
        None,
    );
    first.warden = Some(warden);
    let mut frames = vec![
        Frame::chunk(first),
        Frame::chunk(chunk(identity, Delta::default(), Some("content_filter"))),
    ];
    if let Some(moderation) = moderation {
        frames.push(Frame::chunk(moderation_chunk(identity, moderation)));
    }
    if include_usage {
        frames.push(Frame::chunk(usage_chunk(identity, Usage::default())));
    }
    frames.push(Frame::Done);
    futures_util::stream::iter(frames).boxed()
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

/// A chunk with no choices: what carries usage, or OpenAI's "moderation chunk".
fn choiceless_chunk(identity: &StreamIdentity) -> ChatChunk {
    ChatChunk {
        id: identity.id.clone(),
        object: chunk_object(),
        created: identity.created,
        model: identity.model.clone(),
        choices: Vec::new(),
        ..Default::default()
    }
}

fn moderation_chunk(identity: &StreamIdentity, moderation: Value) -> ChatChunk {
    ChatChunk {
        moderation: Some(moderation),
        ..choiceless_chunk(identity)
    }
}

fn usage_chunk(identity: &StreamIdentity, usage: Usage) -> ChatChunk {
    ChatChunk {
        usage: Some(usage),
        ..choiceless_chunk(identity)
    }
}

struct Moderation {
    mode: StreamMode,
    /// One per choice, by index.
    answers: Vec<Answer>,
}

/// One choice under moderation.
struct Answer {
    moderator: OutputModerator,
    /// Chunks (of this choice only) not released yet: in `buffered` mode all of them, and in
    /// both modes the finishing one, which waits for the final check.
    held: Vec<ChatChunk>,
    /// A `stream_first` check running beside the stream.
    check: Option<CheckFuture>,
    /// Stopped by the guard: what the upstream still sends for this choice is dropped.
    stopped: bool,
}

impl Answer {
    fn new(moderator: OutputModerator) -> Self {
        Answer {
            moderator,
            held: Vec::new(),
            check: None,
            stopped: false,
        }
    }
}

fn finishing(chunk: &ChatChunk) -> bool {
    chunk.choices.iter().any(|c| c.finish_reason.is_some())
}

/// The first check of any choice to finish, with the choice's index. Pending while none runs.
async fn next_check(answers: &mut [Answer]) -> (usize, (crate::guard::Judgement, usize)) {
    std::future::poll_fn(|cx| {
        for (index, answer) in answers.iter_mut().enumerate() {
            if let Some(check) = answer.check.as_mut()
                && let std::task::Poll::Ready(checked) = check.as_mut().poll(cx)
            {
                return std::task::Poll::Ready((index, checked));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

struct Relay {
    upstream: ChunkStream,
    pending: Option<ChatChunk>,
    identity: StreamIdentity,
    include_usage: bool,
    usage: Option<Usage>,
    request_id: String,
    note: Option<Note>,
    report: Option<ModerationReport>,
    first_sent: bool,
    metrics: Arc<Metrics>,
    started: Instant,
    audit: Option<crate::server::audit::Context>,
    key: String,
    limits: Arc<crate::server::limits::Limits>,
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
    Checked((usize, (crate::guard::Judgement, usize))),
}

/// The event stream: the first chunk (already received), the rest, then usage and `[DONE]`.
fn events(
    first: ChatChunk,
    rest: ChunkStream,
    options: RelayOptions,
) -> impl Stream<Item = Frame> + Send + 'static {
    let moderation = options.moderator.map(|moderator| {
        let mut answers = Vec::with_capacity(options.choices.max(1));
        for _ in 1..options.choices {
            answers.push(Answer::new(moderator.for_another_choice()));
        }
        let mode = moderator.policy.stream_mode;
        answers.insert(0, Answer::new(moderator));
        Moderation { mode, answers }
    });
    let relay = Relay {
        upstream: rest,
        pending: Some(first),
        identity: options.identity,
        include_usage: options.include_usage,
        usage: None,
        request_id: options.request_id,
        note: options.note,
        report: options.report,
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
    .flat_map(futures_util::stream::iter)
}

impl Relay {
    /// Advances by one upstream chunk or one finished check; returns what may go out now.
    async fn step(&mut self) -> Vec<Frame> {
        let next = if let Some(chunk) = self.pending.take() {
            Next::Upstream(Some(Ok(chunk)))
        } else {
            let Relay {
                upstream,
                moderation,
                ..
            } = self;
            match moderation
                .as_mut()
                .filter(|m| m.answers.iter().any(|a| a.check.is_some()))
            {
                Some(moderation) => tokio::select! {
                    checked = next_check(&mut moderation.answers) => Next::Checked(checked),
                    item = upstream.next() => Next::Upstream(item),
                },
                None => Next::Upstream(upstream.next().await),
            }
        };
        match next {
            Next::Checked((index, (judgement, upto))) => {
                let Some(answer) = self.answer(index) else {
                    return Vec::new();
                };
                answer.check = None;
                let decision = answer.moderator.finish_check(judgement, upto);
                if !decision.lets_through() {
                    return self.stop(index, decision);
                }
                self.start_background_check(index);
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
                vec![Frame::Error(body), Frame::Done]
            }
            Next::Upstream(None) => self.on_end().await,
        }
    }

    async fn on_chunk(&mut self, mut chunk: ChatChunk) -> Vec<Frame> {
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
        if self.moderation.is_none() {
            return vec![self.emit(chunk)];
        }
        if chunk.choices.len() == 1 {
            return self.on_choice(chunk).await;
        }
        // Choices are moderated, held and released apart: one chunk each.
        let choices = std::mem::take(&mut chunk.choices);
        let mut events = Vec::new();
        for choice in choices {
            let mut single = chunk.clone();
            single.choices = vec![choice];
            events.extend(self.on_choice(single).await);
            if self.done {
                break;
            }
        }
        events
    }

    fn answer(&mut self, index: usize) -> Option<&mut Answer> {
        self.moderation.as_mut()?.answers.get_mut(index)
    }

    /// A chunk of one choice, under moderation.
    async fn on_choice(&mut self, mut chunk: ChatChunk) -> Vec<Frame> {
        let Some(moderation) = self.moderation.as_mut() else {
            return Vec::new();
        };
        let mode = moderation.mode;
        let Some(choice) = chunk.choices.first_mut() else {
            return Vec::new();
        };
        let index = choice.index as usize;
        // A choice beyond those asked for is not judged, so it is not relayed; nor is what
        // follows a choice's stop.
        let Some(answer) = moderation.answers.get_mut(index).filter(|a| !a.stopped) else {
            return Vec::new();
        };
        choice.logprobs = choice.logprobs.take().and_then(|logprobs| {
            released_logprobs(
                &logprobs,
                choice.delta.content.as_deref(),
                choice.delta.refusal.as_deref(),
            )
        });
        answer.moderator.observe_delta(&choice.delta);
        match mode {
            StreamMode::Buffered => {
                answer.held.push(chunk);
                if !answer.moderator.window_ready() {
                    return Vec::new();
                }
                let (judgement, upto) = answer.moderator.start_check().await;
                let decision = answer.moderator.finish_check(judgement, upto);
                if !decision.lets_through() {
                    return self.stop(index, decision);
                }
                self.release_judged(index)
            }
            StreamMode::StreamFirst => {
                let events = if finishing(&chunk) {
                    answer.held.push(chunk);
                    Vec::new()
                } else {
                    vec![self.emit(chunk)]
                };
                self.start_background_check(index);
                events
            }
        }
    }

    fn start_background_check(&mut self, index: usize) {
        if let Some(answer) = self.answer(index)
            && !answer.stopped
            && answer.check.is_none()
            && answer.moderator.window_ready()
        {
            answer.check = Some(answer.moderator.start_check());
        }
    }

    async fn on_end(&mut self) -> Vec<Frame> {
        let mut events = Vec::new();
        let mut output = None;
        if let Some(moderation) = self.moderation.as_mut() {
            // The last checks of every choice still running, at the same time.
            let finals = moderation
                .answers
                .iter_mut()
                .enumerate()
                .filter(|(_, answer)| !answer.stopped)
                .map(|(index, answer)| async move {
                    if let Some(check) = answer.check.take() {
                        let (judgement, upto) = check.await;
                        let decision = answer.moderator.finish_check(judgement, upto);
                        if !decision.lets_through() {
                            return (index, decision);
                        }
                    }
                    (index, answer.moderator.check_rest().await)
                });
            let decisions = futures_util::future::join_all(finals).await;
            for (index, decision) in decisions {
                if !decision.lets_through() {
                    events.extend(self.stop(index, decision));
                    if self.done {
                        return events;
                    }
                } else if let Some(answer) =
                    self.moderation.as_ref().and_then(|m| m.answers.get(index))
                {
                    record_answer(&self.metrics, self.audit.as_ref(), answer, decision);
                }
            }
            if let Some((decision, categories)) = self.output_verdict() {
                if let Some(note) = self.note.as_mut() {
                    note.set_output(decision, categories);
                }
                output = Some(decision.label());
            }
        }
        events.extend(self.release_rest());
        events.extend(self.moderation_frame());
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
            events.push(Frame::chunk(usage_chunk(&self.identity, usage)));
        }
        events.push(Frame::Done);
        // After the release: the first token of a buffered stream leaves only now.
        self.log_end("completed", output);
        events
    }

    /// The output verdict over every choice.
    fn output_verdict(&self) -> Option<(Decision, Vec<String>)> {
        combined_verdict(
            self.moderation
                .as_ref()?
                .answers
                .iter()
                .map(|a| &a.moderator),
        )
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

    /// Releases a choice's judged chunks, all but the finishing one.
    fn release_judged(&mut self, index: usize) -> Vec<Frame> {
        let Some(answer) = self.answer(index) else {
            return Vec::new();
        };
        let (last, judged): (Vec<ChatChunk>, Vec<ChatChunk>) = std::mem::take(&mut answer.held)
            .into_iter()
            .partition(finishing);
        answer.held = last;
        judged.into_iter().map(|chunk| self.emit(chunk)).collect()
    }

    /// Releases what every choice still holds, at the end; the output verdict rides on the
    /// last chunk that finishes a choice.
    fn release_rest(&mut self) -> Vec<Frame> {
        let mut held: Vec<ChatChunk> = match self.moderation.as_mut() {
            Some(moderation) => moderation
                .answers
                .iter_mut()
                .filter(|answer| !answer.stopped)
                .flat_map(|answer| std::mem::take(&mut answer.held))
                .collect(),
            None => Vec::new(),
        };
        if let Some(note) = &self.note
            && note.has_output()
            && let Some(last) = held.iter_mut().rev().find(|chunk| finishing(chunk))
        {
            last.warden = Some(note.json_last());
        }
        held.into_iter().map(|chunk| self.emit(chunk)).collect()
    }

    /// The `moderation` results, when asked, from the verdicts so far.
    fn moderation_frame(&self) -> Option<Frame> {
        let report = self.report.as_ref()?;
        let moderation = match &self.note {
            Some(note) => report.json(note, true),
            None => report.json(&Note::default(), true),
        };
        Some(Frame::chunk(moderation_chunk(&self.identity, moderation)))
    }

    /// Serializes a chunk; the first one carries the input verdict.
    fn emit(&mut self, mut chunk: ChatChunk) -> Frame {
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
        Frame::chunk(chunk)
    }

    /// Stops a choice after an unsafe verdict: its held text is dropped and it finishes with
    /// `content_filter`. Once every choice is stopped, the stream ends and the upstream request
    /// is dropped. A guard failure that fails closed ends the whole stream with an error.
    fn stop(&mut self, index: usize, decision: Decision) -> Vec<Frame> {
        let Some(moderation) = self.moderation.as_mut() else {
            return Vec::new();
        };
        let Some(answer) = moderation.answers.get_mut(index) else {
            return Vec::new();
        };
        answer.stopped = true;
        answer.held.clear();
        answer.check = None;
        record_answer(&self.metrics, self.audit.as_ref(), answer, decision);
        let all_stopped = moderation.answers.iter().all(|a| a.stopped);
        let mut last = chunk(&self.identity, Delta::default(), Some("content_filter"));
        for choice in &mut last.choices {
            choice.index = u32::try_from(index).unwrap_or(u32::MAX);
        }
        if decision != Decision::Unavailable && !all_stopped {
            return vec![Frame::chunk(last)];
        }
        self.done = true;
        if let Some(moderation) = self.moderation.as_mut() {
            for answer in &mut moderation.answers {
                answer.held.clear();
                answer.check = None;
            }
        }
        // Dropping the upstream stream closes its connection: generation stops.
        self.upstream = futures_util::stream::empty().boxed();
        if decision == Decision::Unavailable {
            self.log_end("cut", Some(decision.label()));
            let error = ApiError::Unavailable {
                message: "the safety guard is unavailable and the policy fails closed".to_owned(),
                code: "guard_unavailable",
            };
            return vec![Frame::Error(error.body(&self.request_id)), Frame::Done];
        }
        let verdict = self.output_verdict();
        let label = verdict.as_ref().map(|(decision, _)| decision.label());
        if let (Some(note), Some((decision, categories))) = (self.note.as_mut(), verdict) {
            note.set_output(decision, categories);
        }
        self.log_end("cut", label);
        if let Some(note) = &self.note {
            // Nothing went out yet: this chunk is the first, and carries all of the note.
            last.warden = Some(if self.first_sent {
                note.json_last()
            } else {
                note.json()
            });
        }
        let mut events = vec![Frame::chunk(last)];
        events.extend(self.moderation_frame());
        if self.include_usage
            && let Some(usage) = self.usage
        {
            events.push(Frame::chunk(usage_chunk(&self.identity, usage)));
        }
        events.push(Frame::Done);
        events
    }
}

/// One choice's output verdict, with the categories and the text it was judged on.
fn record_answer(
    metrics: &Metrics,
    audit: Option<&crate::server::audit::Context>,
    answer: &Answer,
    decision: Decision,
) {
    let categories = answer.moderator.judgement.categories();
    record_output(
        metrics,
        audit,
        &answer.moderator,
        decision,
        &categories,
        answer.moderator.text(),
    );
}

/// An output verdict, counted and (unless safe) written to the audit log with the judged text.
pub fn record_output(
    metrics: &Metrics,
    audit: Option<&crate::server::audit::Context>,
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
