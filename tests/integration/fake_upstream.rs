//! A fake model server for tests and benchmarks. It speaks Ollama's `/api/chat` (NDJSON) and the
//! OpenAI-compatible `/v1/chat/completions` (SSE) by replaying the recorded fixtures in
//! `tests/fixtures/` frame by frame, and it records what it received.
//!
//! A test scripts it: which fixture, what status, delays before the first byte and between
//! frames, a connection that breaks after N frames, or a server that never answers. It counts
//! streams that the other side abandoned before the end, so a test can prove that a client's
//! disconnect reached the upstream.

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name))
        .unwrap_or_else(|err| panic!("fixture {name}: {err}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Ollama,
    OpenAi,
}

/// What the next chat requests get.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    /// Fixture served when the request has `"stream": true`.
    pub stream_fixture: String,
    /// Served instead of `stream_fixture` when set: a stream a test built from fixture chunks.
    pub generated_stream: Option<Bytes>,
    /// Fixture served otherwise (and as the body of a non-200 status).
    pub body_fixture: String,
    pub first_byte_delay: Duration,
    pub frame_delay: Duration,
    /// Close the connection after this many frames, without finishing the stream.
    pub break_after: Option<usize>,
}

impl Script {
    pub fn for_flavor(flavor: Flavor) -> Script {
        let (stream, body) = match flavor {
            Flavor::Ollama => ("ollama/chat_stream.ndjson", "ollama/chat.json"),
            Flavor::OpenAi => ("openai/chat_stream_usage.sse", "openai/chat.json"),
        };
        Script {
            status: 200,
            stream_fixture: stream.to_owned(),
            generated_stream: None,
            body_fixture: body.to_owned(),
            first_byte_delay: Duration::ZERO,
            frame_delay: Duration::ZERO,
            break_after: None,
        }
    }
}

/// How the fake answers guard calls (`/api/generate`, `/v1/completions`).
#[derive(Clone, Debug)]
pub struct GuardScript {
    /// (needle, answer): the first rule whose needle (lowercase) is in the judged turn wins.
    /// `{Category Name}` in an answer becomes the code the prompt gives that category (as a
    /// real guard model would answer), or the rule is skipped when the prompt lacks it.
    pub rules: Vec<(String, String)>,
    pub default_answer: String,
    pub delay: Duration,
    pub status: u16,
}

impl Default for GuardScript {
    fn default() -> Self {
        GuardScript {
            rules: Vec::new(),
            default_answer: "safe".to_owned(),
            delay: Duration::ZERO,
            status: 200,
        }
    }
}

/// The turn a Llama Guard prompt judges: the last `User:` or `Agent:` turn of its conversation.
pub fn judged_turn(prompt: &str) -> String {
    let start = prompt
        .find("<BEGIN CONVERSATION>\n\n")
        .map(|i| i + "<BEGIN CONVERSATION>\n\n".len())
        .unwrap_or(0);
    let end = prompt.find("<END CONVERSATION>").unwrap_or(prompt.len());
    let section = format!("\n\n{}", &prompt[start..end]);
    let last = section
        .rfind("\n\nUser: ")
        .max(section.rfind("\n\nAgent: "))
        .unwrap_or(0);
    section[last..].trim().to_owned()
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

pub struct FakeState {
    pub flavor: Flavor,
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    /// Chat requests received.
    pub calls: AtomicUsize,
    /// Requests dropped before their response was complete (the peer went away).
    pub abandoned: AtomicUsize,
    pub abandoned_notify: Notify,
    /// Frames written so far, over all streams.
    pub frames_sent: AtomicUsize,
    /// Cached fixtures, so a benchmark does not read files per request.
    cache: Mutex<Vec<(String, Bytes)>>,
    /// When set, requests are recorded; off for benchmarks.
    pub record: bool,
    guard: Mutex<GuardScript>,
    /// Prompts of the guard calls received.
    guard_prompts: Mutex<Vec<String>>,
    pub guard_calls: AtomicUsize,
    /// Guard calls dropped before they were answered.
    pub guard_abandoned: AtomicUsize,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start(flavor: Flavor) -> FakeUpstream {
        Self::start_on("127.0.0.1:0", flavor, true).await
    }

    pub async fn start_on(addr: &str, flavor: Flavor, record: bool) -> FakeUpstream {
        let state = Arc::new(FakeState {
            flavor,
            script: Mutex::new(Script::for_flavor(flavor)),
            received: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            abandoned_notify: Notify::new(),
            frames_sent: AtomicUsize::new(0),
            cache: Mutex::new(Vec::new()),
            record,
            guard: Mutex::new(GuardScript::default()),
            guard_prompts: Mutex::new(Vec::new()),
            guard_calls: AtomicUsize::new(0),
            guard_abandoned: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/api/chat", post(chat))
            .route("/v1/models", get(models))
            .route("/api/tags", get(tags))
            .route("/api/version", get(version))
            .route("/api/generate", post(guard_generate))
            .route("/v1/completions", post(guard_completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Nagle would add ~40 ms to small responses.
            let listener = listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, state, task }
    }

    /// The base URL a Warden backend of this flavor is configured with.
    pub fn base_url(&self) -> String {
        match self.state.flavor {
            Flavor::Ollama => format!("http://{}", self.addr),
            Flavor::OpenAi => format!("http://{}/v1", self.addr),
        }
    }

    pub fn script(&self, edit: impl FnOnce(&mut Script)) {
        edit(&mut self.state.script.lock().unwrap());
    }

    pub fn guard(&self, edit: impl FnOnce(&mut GuardScript)) {
        edit(&mut self.state.guard.lock().unwrap());
    }

    pub fn guard_prompts(&self) -> Vec<String> {
        self.state.guard_prompts.lock().unwrap().clone()
    }

    pub fn guard_calls(&self) -> usize {
        self.state.guard_calls.load(Ordering::SeqCst)
    }

    pub fn guard_abandoned(&self) -> usize {
        self.state.guard_abandoned.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn last_body(&self) -> serde_json::Value {
        self.received()
            .last()
            .expect("no request received")
            .body
            .clone()
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    /// Waits until a stream was abandoned by the peer, up to `limit`.
    pub async fn wait_abandoned(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.state.abandoned_notify.notified();
                if self.abandoned() > 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl FakeState {
    fn fixture_bytes(&self, name: &str) -> Bytes {
        let mut cache = self.cache.lock().unwrap();
        if let Some((_, bytes)) = cache.iter().find(|(n, _)| n == name) {
            return bytes.clone();
        }
        let bytes = Bytes::from(fixture(name));
        cache.push((name.to_owned(), bytes.clone()));
        bytes
    }
}

/// Splits a fixture into the frames a server writes: SSE events or NDJSON lines.
pub fn frames(text: &[u8], flavor: Flavor) -> Vec<Bytes> {
    let separator: &[u8] = match flavor {
        Flavor::OpenAi => b"\n\n",
        Flavor::Ollama => b"\n",
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + separator.len() <= text.len() {
        if &text[i..i + separator.len()] == separator {
            out.push(Bytes::copy_from_slice(&text[start..i + separator.len()]));
            i += separator.len();
            start = i;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        out.push(Bytes::copy_from_slice(&text[start..]));
    }
    out
}

/// Marks the request abandoned if it is dropped before its response is complete.
struct StreamGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.abandoned.fetch_add(1, Ordering::SeqCst);
            self.state.abandoned_notify.notify_waiters();
        }
    }
}

async fn chat(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    // Counts the request as abandoned if it is dropped before its response is complete,
    // whether while waiting to answer or mid-stream.
    let mut guard = StreamGuard {
        state: state.clone(),
        finished: false,
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let streaming = body["stream"]
        .as_bool()
        .unwrap_or(state.flavor == Flavor::Ollama);
    if state.record {
        state.received.lock().unwrap().push(Received {
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body,
        });
    }
    let script = state.script.lock().unwrap().clone();
    if !script.first_byte_delay.is_zero() {
        tokio::time::sleep(script.first_byte_delay).await;
    }
    let status = StatusCode::from_u16(script.status).unwrap();
    if !status.is_success() || !streaming {
        let bytes = state.fixture_bytes(&script.body_fixture);
        guard.finished = true;
        return (status, [("content-type", "application/json")], bytes).into_response();
    }
    let all = match &script.generated_stream {
        Some(generated) => generated.clone(),
        None => state.fixture_bytes(&script.stream_fixture),
    };
    let mut frames = frames(&all, state.flavor);
    let complete = script.break_after.is_none_or(|n| n >= frames.len());
    if let Some(n) = script.break_after {
        frames.truncate(n);
    }
    let content_type = match state.flavor {
        Flavor::OpenAi => "text/event-stream",
        Flavor::Ollama => "application/x-ndjson",
    };
    let delay = script.frame_delay;
    let total = frames.len();
    let stream = futures_util::stream::unfold(
        (frames.into_iter().enumerate(), guard),
        move |(mut frames, mut guard)| async move {
            let (i, frame) = frames.next()?;
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            guard.state.frames_sent.fetch_add(1, Ordering::SeqCst);
            if i + 1 == total && complete {
                guard.finished = true;
            }
            Some((Ok::<_, std::io::Error>(frame), (frames, guard)))
        },
    );
    let body = if complete {
        Body::from_stream(stream)
    } else {
        // End with an I/O error so the connection is cut instead of closed cleanly.
        use futures_util::StreamExt;
        let broken = futures_util::stream::once(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fake upstream broke the stream",
            ))
        });
        Body::from_stream(stream.chain(broken))
    };
    (status, [("content-type", content_type)], body).into_response()
}

async fn models(State(state): State<Arc<FakeState>>) -> Response {
    let bytes = state.fixture_bytes("openai/models.json");
    ([("content-type", "application/json")], bytes).into_response()
}

async fn tags(State(state): State<Arc<FakeState>>) -> Response {
    let bytes = state.fixture_bytes("ollama/tags.json");
    ([("content-type", "application/json")], bytes).into_response()
}

async fn version(State(state): State<Arc<FakeState>>) -> Response {
    let bytes = state.fixture_bytes("ollama/version.json");
    ([("content-type", "application/json")], bytes).into_response()
}

/// Replaces each `{Name}` with the prompt's code for that category; `None` if one is missing.
fn with_codes(answer: &str, prompt: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = answer;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}')? + open;
        let name = &rest[open + 1..close];
        let line = prompt
            .lines()
            .find(|l| l.starts_with('S') && l.contains(&format!(": {name}.")))?;
        out.push_str(&rest[..open]);
        out.push_str(line.split(':').next()?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Counts a guard call as abandoned if it is dropped before it answered.
struct GuardCallGuard {
    state: Arc<FakeState>,
    answered: bool,
}

impl Drop for GuardCallGuard {
    fn drop(&mut self) {
        if !self.answered {
            self.state.guard_abandoned.fetch_add(1, Ordering::SeqCst);
            self.state.abandoned_notify.notify_waiters();
        }
    }
}

/// The guard's answer to one prompt, or an HTTP status to fail with.
async fn guard_answer(state: &Arc<FakeState>, prompt: String) -> Result<String, StatusCode> {
    state.guard_calls.fetch_add(1, Ordering::SeqCst);
    let mut call = GuardCallGuard {
        state: state.clone(),
        answered: false,
    };
    let script = state.guard.lock().unwrap().clone();
    let judged = judged_turn(&prompt).to_lowercase();
    state.guard_prompts.lock().unwrap().push(prompt);
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    call.answered = true;
    if script.status != 200 {
        return Err(StatusCode::from_u16(script.status).unwrap());
    }
    let prompt = state
        .guard_prompts
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    let answer = script
        .rules
        .iter()
        .filter(|(needle, _)| judged.contains(&needle.to_lowercase()))
        .find_map(|(_, answer)| with_codes(answer, &prompt))
        .unwrap_or(script.default_answer);
    Ok(answer)
}

async fn guard_generate(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(body["raw"], true, "guard prompts go raw");
    let prompt = body["prompt"].as_str().unwrap_or_default().to_owned();
    match guard_answer(&state, prompt).await {
        Ok(answer) => axum::Json(serde_json::json!({
            "model": body["model"], "created_at": "2025-12-08T12:00:00Z", "response": answer,
            "done": true, "done_reason": "stop", "prompt_eval_count": 200, "eval_count": 3
        }))
        .into_response(),
        Err(status) => (
            status,
            axum::Json(serde_json::json!({"error": "guard model failed"})),
        )
            .into_response(),
    }
}

async fn guard_completions(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = body["prompt"].as_str().unwrap_or_default().to_owned();
    match guard_answer(&state, prompt).await {
        Ok(answer) => axum::Json(serde_json::json!({
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "text": answer, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 3, "total_tokens": 203}
        }))
        .into_response(),
        Err(status) => (status, axum::Json(serde_json::json!({"error": {"message": "guard model failed", "type": "server_error", "param": null, "code": null}}))).into_response(),
    }
}
