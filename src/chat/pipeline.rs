//! The request path of `POST /v1/chat/completions`, stage by stage. This doc and `chat` below
//! read in the same order:
//!
//! 1. **parse + validate** — the [`JsonBody`](crate::server::extract::JsonBody) extractor and
//!    [`validate`]: malformed JSON or a bad field is a 400 naming the field, a body over the
//!    limit a 413.
//! 2. **resolve the model** — the client-facing id to its route of backends and its safety
//!    policy: 404 `model_not_found` when unknown.
//! 3. **pre-dispatch checks**, concurrently: the input guard judges every turn the model will
//!    see (every role, every text part, tool calls, tool results, tool definitions) while
//!    retrieval embeds the question and searches Milvus. A block ends the request here with the
//!    policy's refusal and nothing is sent upstream; retrieved chunks are judged too (an unsafe
//!    one is left out), then injected with the QA template.
//! 4. **dispatch** — [`Pool`](crate::backends::pool::Pool) picks a backend, fails over before
//!    the first byte, and waits for the first chunk so that an early failure is a real HTTP
//!    error.
//! 5. **relay** — [`relay`](crate::chat::relay) turns upstream chunks into OpenAI SSE events with the
//!    output guard between the two (buffered: nothing is released before it was judged), or
//!    judges the whole completion before returning it.
//!
//! No task is spawned per request (but for the Redis bookkeeping of shared limits: a lease's
//! renewal, a token settle): the response body pulls from the upstream stream, so
//! backpressure is natural and a client that goes away drops the upstream request and any
//! guard call in flight with it.

use axum::Json;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::pool::ModelRoute;
use crate::chat::note::{GuardNote, ModerationReport, Note};
use crate::chat::relay::{self, FrameStream, RelayOptions, StreamIdentity};
use crate::chat::retrieval;
use crate::error::ApiError;
use crate::guard::output::{OutputModerator, combined_verdict, released_logprobs};
use crate::guard::policy::{BlockStyle, Policy};
use crate::guard::{Decision, Guard, request_turns};
use crate::server::auth::Caller;
use crate::server::request_id;
use crate::server::state::{AppState, unix_now};
use crate::types::{AssistantMessage, ChatCompletion, ChatRequest, Choice, MessageContent, Usage};

pub async fn chat(
    state: AppState,
    caller: Caller,
    request: ChatRequest,
) -> Result<Response, ApiError> {
    Ok(run(state, caller, request).await?.into_response())
}

/// The stages, in order; what they answered before it is written. The chat route writes it as
/// a chat completion (JSON or SSE), the Responses API as its own objects and events.
pub async fn run(
    state: AppState,
    caller: Caller,
    mut request: ChatRequest,
) -> Result<Outcome, ApiError> {
    // 1. parse + validate
    validate(&request)?;

    // 2. resolve the model, its policy and its knowledge base
    let mut turn = resolve(&state, &caller, &mut request)?;

    // 3. pre-dispatch checks: the input guard and retrieval, at the same time
    if let Some(refusal) = pre_dispatch(&state, &caller, &mut turn, &mut request).await? {
        return Ok(refusal);
    }
    let moderator = output_moderator(&turn, &request);

    // Token budget: the prompt as it will go out (context included) is taken before dispatch;
    // what the backend reports is settled after.
    let limits = &state.access.limits;
    let estimate = if limits.limits_tokens(&caller.name) {
        estimate_prompt_tokens(&state, &request)
    } else {
        0
    };
    let token_headers = match limits
        .take_tokens(&state.metrics, &caller.name, estimate)
        .await
    {
        Ok(headers) => headers,
        Err(refusal) => return Ok(Outcome::answered(refusal)),
    };

    // 4. dispatch, and 5. relay
    let mut outcome = if request.is_stream() {
        stream(&state, &caller, turn, request, moderator, estimate).await?
    } else {
        complete(&state, &caller, turn, request, moderator, estimate).await?
    };
    outcome.headers.extend(token_headers);
    Ok(outcome)
}

/// What the pipeline answered, with the headers that go with it (`x-warden-*`, the token
/// budget's).
pub struct Outcome {
    pub headers: HeaderMap,
    pub answer: Answer,
}

pub enum Answer {
    /// A whole completion, judged.
    Complete(Box<ChatCompletion>),
    /// The relay's frames: chunks released by the output guard, then the end.
    Stream {
        frames: FrameStream,
        keep_alive: Duration,
        /// What a choice the output guard stopped is replaced by.
        refusal: Option<String>,
    },
    /// The input was blocked and the policy answers with its refusal.
    Refused(Refusal),
    /// Already an HTTP answer: a refusal of the limits, a `content_filter` error.
    Response(Response),
}

pub struct Refusal {
    pub text: String,
    /// The `warden` object (the input verdict).
    pub warden: Value,
    /// OpenAI's `moderation` results, when asked.
    pub moderation: Option<Value>,
    pub identity: StreamIdentity,
    pub stream: bool,
    pub include_usage: bool,
}

impl Outcome {
    fn answered(response: Response) -> Outcome {
        Outcome {
            headers: HeaderMap::new(),
            answer: Answer::Response(response),
        }
    }
}

impl Refusal {
    /// The refusal as a whole chat completion, finished by `content_filter`.
    pub fn completion(&self) -> ChatCompletion {
        ChatCompletion {
            id: self.identity.id.clone(),
            object: "chat.completion".to_owned(),
            created: self.identity.created,
            model: self.identity.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage::text(&self.text),
                finish_reason: Some("content_filter".to_owned()),
                ..Default::default()
            }],
            usage: Some(Usage::default()),
            warden: Some(self.warden.clone()),
            moderation: self.moderation.clone(),
            ..Default::default()
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut response = match self.answer {
            Answer::Complete(completion) => Json(completion).into_response(),
            Answer::Stream {
                frames, keep_alive, ..
            } => relay::sse(frames, keep_alive),
            Answer::Refused(refusal) if refusal.stream => relay::sse(
                relay::refusal_frames(
                    &refusal.identity,
                    &refusal.text,
                    refusal.warden,
                    refusal.moderation,
                    refusal.include_usage,
                ),
                Duration::from_secs(15),
            ),
            Answer::Refused(refusal) => Json(refusal.completion()).into_response(),
            Answer::Response(response) => response,
        };
        response.headers_mut().extend(self.headers);
        response
    }
}

/// What one chat request carries from stage to stage.
struct Turn {
    route: Arc<ModelRoute>,
    request_id: String,
    /// When the request arrived (after the model was resolved), for the time to first token.
    started: Instant,
    identity: StreamIdentity,
    include_usage: bool,
    choices: usize,
    guarded: Option<(Arc<Guard>, Arc<Policy>)>,
    audit: Option<crate::server::audit::Context>,
    plan: Option<retrieval::Plan>,
    /// The `warden` object, filled as the stages go.
    note: Note,
    /// Set when the request asked for OpenAI's `moderation` results.
    report: Option<ModerationReport>,
    span: tracing::Span,
}

/// Stage 2: the client-facing model id to its route, the caller's policy for it, and what to
/// search. A model the key may not use is as unknown as one that does not exist, as OpenAI
/// answers.
fn resolve(state: &AppState, caller: &Caller, request: &mut ChatRequest) -> Result<Turn, ApiError> {
    let route = state
        .pool
        .route(&request.model)
        .filter(|route| caller.may_use_model(&route.id))
        .ok_or_else(|| ApiError::ModelNotFound {
            model: request.model.clone(),
        })?;
    tracing::Span::current().record("model", tracing::field::display(&route.id));
    let started = Instant::now();
    let request_id = request_id::current();
    let guarded = match &state.guard {
        None => None,
        Some(guard) => {
            let policy = guard
                .policy_for(caller.policy.as_deref(), &route.id)
                .ok_or_else(|| ApiError::Internal {
                    detail: format!("no policy for model `{}`", route.id),
                })?;
            Some((guard.clone(), policy))
        }
    };
    let audit = state
        .audit
        .as_ref()
        .map(|audit| crate::server::audit::Context {
            audit: audit.clone(),
            request_id: request_id.clone(),
            key: caller.name.clone(),
            tenant: caller.tenant.clone(),
            model: route.id.clone(),
        });
    let options = request.warden.take().unwrap_or_default();
    let report = take_moderation(request)?.then(|| ModerationReport {
        model: state
            .guard
            .as_ref()
            .map(|g| g.model.clone())
            .unwrap_or_default(),
        policy: guarded.as_ref().map(|(_, policy)| policy.clone()),
    });
    let plan = retrieval::plan(state, caller, &route, &options, request)?;
    Ok(Turn {
        identity: StreamIdentity::new(&route.id),
        include_usage: request.wants_usage_chunk(),
        choices: request.choices(),
        route,
        request_id,
        started,
        guarded,
        audit,
        plan,
        note: Note::default(),
        report,
        span: tracing::Span::current(),
    })
}

/// Stage 3: the input guard and retrieval, at the same time. A blocked input ends the request
/// here (the refusal is returned, nothing goes upstream); otherwise what was found is judged
/// and injected into the request.
async fn pre_dispatch(
    state: &AppState,
    caller: &Caller,
    turn: &mut Turn,
    request: &mut ChatRequest,
) -> Result<Option<Outcome>, ApiError> {
    let metrics = &state.metrics;
    let span = &turn.span;
    let guarded = &turn.guarded;
    let request_id = &turn.request_id;
    let judged: &ChatRequest = request;
    let input_check = async {
        let started = Instant::now();
        let Some((guard, policy)) = guarded else {
            return Ok::<_, ApiError>(None);
        };
        if !policy.check_input {
            return Ok(None);
        }
        let unjudged_images = crate::guard::scope::check(judged, policy.images)?;
        if unjudged_images > 0 {
            metrics.unjudged_parts(&policy.name, "image_url", unjudged_images);
        }
        let judgement = guard.check_input(policy, judged, request_id).await;
        metrics.stage("guard_input", started.elapsed());
        span.record("guard_input_us", micros(started.elapsed()));
        Ok(Some(judgement))
    };
    let search = async {
        match (&turn.plan, &state.knowledge) {
            (Some(plan), Some(knowledge)) => {
                let started = Instant::now();
                let (found, timings) = knowledge
                    .search_timed(
                        &plan.collection,
                        &caller.tenant,
                        &plan.search,
                        plan.top_k,
                        plan.mode,
                    )
                    .await;
                metrics.stage("retrieval", started.elapsed());
                span.record("retrieval_us", micros(started.elapsed()));
                metrics.stage("embed", timings.embed);
                metrics.stage("search", timings.search);
                Some(found)
            }
            _ => None,
        }
    };
    let (input, found) = tokio::join!(input_check, search);
    if let Some((_, policy)) = &turn.guarded {
        turn.note.guard = Some(GuardNote {
            policy: policy.name.clone(),
            ..GuardNote::default()
        });
    }
    if let (Some(judgement), Some((_, policy))) = (input?, &turn.guarded) {
        let decision = judgement.decide(policy);
        let categories = judgement.categories();
        log_decision(
            "input",
            policy,
            decision,
            &categories,
            judgement.failure.as_deref(),
        );
        metrics.guard_verdict(&policy.name, "input", decision.label(), &categories);
        turn.span.record("input", decision.label());
        if let Some(audit) = &turn.audit {
            let content = crate::guard::request_turns(request)
                .into_iter()
                .map(|t| t.text)
                .collect::<Vec<_>>()
                .join("\n\n");
            audit.record(&policy.name, "input", decision, &categories, Some(&content));
        }
        if let Some(guard_note) = turn.note.guard.as_mut() {
            guard_note.input = Some((decision, categories));
        }
        match decision {
            Decision::Blocked => {
                return Ok(Some(refuse(
                    policy,
                    &turn.note,
                    turn.report.as_ref(),
                    turn.identity.clone(),
                    request.is_stream(),
                    turn.include_usage,
                )));
            }
            Decision::Unavailable => return Err(guard_unavailable()),
            _ => {}
        }
    }
    if let (Some(plan), Some(found)) = (&turn.plan, found) {
        let retrieval_note = retrieval::inject(
            state,
            turn.guarded.as_ref(),
            plan,
            found,
            request,
            &turn.request_id,
        )
        .await?;
        metrics.retrieval_sources(&plan.collection, retrieval_note.sources.len());
        turn.span.record("sources", retrieval_note.sources.len());
        turn.note.retrieval = Some(retrieval_note);
    }
    Ok(None)
}

/// The output moderator, when the policy checks output: it judges the answer with the
/// conversation as it went out (retrieved context included) as context.
fn output_moderator(turn: &Turn, request: &ChatRequest) -> Option<OutputModerator> {
    turn.guarded.as_ref().and_then(|(guard, policy)| {
        policy.check_output.then(|| {
            OutputModerator::new(
                guard.clone(),
                policy.clone(),
                request_turns(request),
                turn.request_id.clone(),
            )
        })
    })
}

/// Stages 4 and 5, streamed: dispatch waits for the first chunk (an early failure is a real
/// HTTP error), and the rest is relayed through the output guard.
async fn stream(
    state: &AppState,
    caller: &Caller,
    turn: Turn,
    request: ChatRequest,
    moderator: Option<OutputModerator>,
    estimate: u32,
) -> Result<Outcome, ApiError> {
    let metrics = &state.metrics;
    let dispatched = Instant::now();
    let started = state
        .pool
        .stream(&turn.route, request, &turn.request_id)
        .await
        .inspect_err(|err| metrics.upstream_error(err.backend(), err.kind()))?;
    metrics.stage("upstream_first_chunk", dispatched.elapsed());
    turn.span.record("backend", started.backend.as_str());
    turn.span
        .record("upstream_us", micros(dispatched.elapsed()));
    let mut headers = HeaderMap::new();
    turn.note.headers(&mut headers);
    let keep_alive = relay::keep_alive(state.config.server.sse_keep_alive, moderator.is_some());
    let refusal = moderator.as_ref().map(|m| m.policy.refusal.clone());
    let frames = relay::frames(
        started,
        RelayOptions {
            identity: turn.identity,
            include_usage: turn.include_usage,
            request_id: turn.request_id,
            keep_alive: state.config.server.sse_keep_alive,
            moderator,
            choices: turn.choices,
            note: (!turn.note.is_empty()).then_some(turn.note),
            report: turn.report,
            metrics: state.metrics.clone(),
            audit: turn.audit,
            key: caller.name.clone(),
            limits: state.access.limits.clone(),
            estimate,
            started: turn.started,
            span: turn.span.clone(),
        },
    );
    Ok(Outcome {
        headers,
        answer: Answer::Stream {
            frames,
            keep_alive,
            refusal,
        },
    })
}

/// Stages 4 and 5, not streamed: the whole completion, judged before it goes out.
async fn complete(
    state: &AppState,
    caller: &Caller,
    mut turn: Turn,
    request: ChatRequest,
    moderator: Option<OutputModerator>,
    estimate: u32,
) -> Result<Outcome, ApiError> {
    let metrics = &state.metrics;
    let dispatched = Instant::now();
    let (mut completion, backend) = state
        .pool
        .complete(&turn.route, request, &turn.request_id)
        .await
        .inspect_err(|err| metrics.upstream_error(err.backend(), err.kind()))?;
    metrics.stage("upstream_complete", dispatched.elapsed());
    turn.span.record("backend", backend.as_str());
    turn.span
        .record("upstream_us", micros(dispatched.elapsed()));
    if let Some(usage) = &completion.usage {
        turn.span.record("prompt_tokens", usage.prompt_tokens);
        turn.span
            .record("completion_tokens", usage.completion_tokens);
        metrics.tokens(&caller.name, usage);
        state
            .access
            .limits
            .settle_tokens(&caller.name, estimate, usage.total_tokens);
    }
    completion.id = turn.identity.id;
    completion.created = turn.identity.created;
    completion.model = turn.identity.model;
    if let Some(moderator) = moderator {
        let checked = Instant::now();
        let decision = moderate_completion(
            &mut completion,
            moderator,
            turn.choices,
            metrics,
            turn.audit.as_ref(),
        )
        .await;
        metrics.stage("guard_output", checked.elapsed());
        if let Some((decision, categories)) = decision {
            turn.span.record("output", decision.label());
            turn.note.set_output(decision, categories);
            if decision == Decision::Unavailable {
                return Err(guard_unavailable());
            }
        }
    }
    if !turn.note.is_empty() {
        completion.warden = Some(turn.note.json());
    }
    if let Some(report) = &turn.report {
        completion.moderation = Some(report.json(&turn.note, true));
    }
    let mut headers = HeaderMap::new();
    turn.note.headers(&mut headers);
    Ok(Outcome {
        headers,
        answer: Answer::Complete(Box::new(completion)),
    })
}

/// Judges every choice of a non-streamed answer as an answer of its own, all at the same time;
/// a blocked choice is replaced whole (no field of it is left, logprobs included) and finishes
/// with `content_filter`. Choices beyond those asked for are not judged, so they are dropped.
/// Returns the verdict over all choices.
async fn moderate_completion(
    completion: &mut ChatCompletion,
    moderator: OutputModerator,
    choices: usize,
    metrics: &crate::server::metrics::Metrics,
    audit: Option<&crate::server::audit::Context>,
) -> Option<(Decision, Vec<String>)> {
    completion.choices.retain(|c| (c.index as usize) < choices);
    let mut moderators: Vec<OutputModerator> = Vec::with_capacity(completion.choices.len());
    for choice in &mut completion.choices {
        let mut answer = moderator.for_another_choice();
        answer.observe_message(&choice.message);
        choice.logprobs = choice.logprobs.take().and_then(|logprobs| {
            released_logprobs(
                &logprobs,
                choice.message.content.as_deref(),
                choice.message.refusal.as_deref(),
            )
        });
        moderators.push(answer);
    }
    let decisions =
        futures_util::future::join_all(moderators.iter_mut().map(|m| m.check_rest())).await;
    for ((choice, answer), decision) in completion
        .choices
        .iter_mut()
        .zip(&moderators)
        .zip(decisions)
    {
        let categories = answer.judgement.categories();
        relay::record_output(metrics, audit, answer, decision, &categories, answer.text());
        if decision == Decision::Blocked {
            choice.message = AssistantMessage::text(&answer.policy.refusal);
            choice.logprobs = None;
            choice.finish_reason = Some("content_filter".to_owned());
        }
    }
    combined_verdict(&moderators)
}

/// The prompt's tokens as the embedding model's tokenizer counts them (a stand-in for the chat
/// model's, close for English), or a quarter of the characters without one.
fn estimate_prompt_tokens(state: &AppState, request: &ChatRequest) -> u32 {
    let text = request_turns(request)
        .into_iter()
        .map(|t| t.text)
        .collect::<Vec<_>>()
        .join("\n");
    let tokens = match &state.embedder {
        Some(embedder) => embedder.count_tokens_untruncated(&text),
        None => text.chars().count().div_ceil(4),
    };
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

fn micros(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

fn guard_unavailable() -> ApiError {
    ApiError::Unavailable {
        message: "the safety guard is unavailable and the policy fails closed; try again later"
            .to_owned(),
        code: "guard_unavailable",
    }
}

fn log_decision(
    turn: &str,
    policy: &Policy,
    decision: Decision,
    categories: &[String],
    failure: Option<&str>,
) {
    match decision {
        Decision::Safe => tracing::debug!(turn, policy = %policy.name, "guard: safe"),
        Decision::Flagged => {
            tracing::info!(turn, policy = %policy.name, ?categories, "guard: flagged")
        }
        Decision::Blocked => {
            tracing::warn!(turn, policy = %policy.name, ?categories, "guard: blocked")
        }
        Decision::WouldBlock => {
            tracing::warn!(turn, policy = %policy.name, ?categories, "guard: would block (policy monitors only)")
        }
        Decision::Unavailable | Decision::Unverified => {
            tracing::warn!(turn, policy = %policy.name, verdict = decision.label(), failure, "guard: no verdict")
        }
    }
}

/// The answer to a blocked request: the policy's refusal as an assistant message with
/// `finish_reason: "content_filter"` (streamed or not), or a 400 with code `content_filter`.
fn refuse(
    policy: &Arc<Policy>,
    note: &Note,
    report: Option<&ModerationReport>,
    identity: StreamIdentity,
    stream: bool,
    include_usage: bool,
) -> Outcome {
    let categories = note
        .guard
        .as_ref()
        .and_then(|g| g.input.as_ref())
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    let answer = match policy.on_block {
        BlockStyle::Error => {
            Answer::Response(ApiError::ContentFilter { categories }.into_response())
        }
        BlockStyle::Refusal => Answer::Refused(Refusal {
            text: policy.refusal.clone(),
            warden: note.json(),
            moderation: report.map(|r| r.json(note, false)),
            identity,
            stream,
            include_usage,
        }),
    };
    let mut headers = HeaderMap::new();
    note.headers(&mut headers);
    Outcome { headers, answer }
}

/// The most choices (`n`) one request may ask for, as OpenAI allows.
pub const MAX_CHOICES: usize = 128;

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
    if let Some(n) = request.extra.get("n").filter(|n| !n.is_null())
        && !n
            .as_u64()
            .is_some_and(|n| (1..=MAX_CHOICES as u64).contains(&n))
    {
        return Err(ApiError::invalid(
            format!("Invalid 'n': expected an integer from 1 to {MAX_CHOICES}."),
            Some("n".to_owned()),
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
                    "text" | "input_text" | "output_text" => part.text.is_some(),
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

/// Takes OpenAI's `moderation` field out of the request (it is Warden's to answer, never
/// forwarded); whether results were asked for. Its `policy.*.mode` (`score` or `block`) is
/// checked but changes nothing: the organisation's policy decides what is blocked.
fn take_moderation(request: &mut ChatRequest) -> Result<bool, ApiError> {
    let Some(asked) = request.extra.remove("moderation").filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let bad = |param: &str, message: &str| ApiError::invalid(message, Some(param.to_owned()));
    let object = asked
        .as_object()
        .ok_or_else(|| bad("moderation", "`moderation` must be an object"))?;
    for (key, value) in object {
        match key.as_str() {
            "model" if value.is_string() => {}
            "model" => return Err(bad("moderation.model", "must be a string")),
            "policy" if value.is_null() => {}
            "policy" => {
                let policy = value
                    .as_object()
                    .ok_or_else(|| bad("moderation.policy", "must be an object"))?;
                for (side, mode) in policy {
                    let param = format!("moderation.policy.{side}");
                    if side != "input" && side != "output" {
                        return Err(bad(&param, "only `input` and `output` have a policy"));
                    }
                    let known = mode.is_null()
                        || mode.as_object().is_some_and(|m| {
                            m.len() == 1
                                && matches!(
                                    m.get("mode").and_then(Value::as_str),
                                    Some("score" | "block")
                                )
                        });
                    if !known {
                        return Err(bad(
                            &param,
                            "must be {\"mode\": \"score\"} or {\"mode\": \"block\"}",
                        ));
                    }
                }
            }
            other => {
                return Err(bad(
                    &format!("moderation.{other}"),
                    "not a field of `moderation`: only `model` and `policy`",
                ));
            }
        }
    }
    Ok(true)
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
