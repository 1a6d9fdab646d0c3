//! Models → backends: which backend serves a request, load spreading, failover and time limits.
//!
//! A model has one or more targets (backend + upstream model name). Each request tries them in
//! balance order (least requests in flight, or round-robin), skipping backends marked down.
//! A failure before the first byte that another backend might not have (connect error, 5xx,
//! 429) marks that backend down for its `down_for` and moves to the next one. Once the first
//! chunk was received nothing is retried: bytes may already be on their way to the client.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Backend, ChunkStream, TimeoutPhase, UpstreamError, UpstreamRequest};
use crate::config::{Balance, Config, Timeouts};
use crate::types::{ChatChunk, ChatCompletion, ChatRequest};

pub struct BackendHandle {
    pub name: String,
    pub backend: Backend,
    timeouts: Timeouts,
    down_for: Duration,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` until which the backend is skipped; 0 when up.
    down_until_ms: AtomicU64,
    epoch: Instant,
}

impl BackendHandle {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_marked_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn mark_down(&self) {
        if !self.down_for.is_zero() {
            let until = self.now_ms() + self.down_for.as_millis() as u64;
            self.down_until_ms.store(until, Ordering::Relaxed);
        }
    }

    fn mark_up(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts a request as in flight on a backend until dropped.
struct InFlight(Arc<BackendHandle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Target {
    backend: Arc<BackendHandle>,
    upstream_model: String,
}

pub struct ModelRoute {
    pub id: String,
    /// The knowledge-base collection searched for this model by default, and this model's own
    /// retrieval settings.
    pub collection: Option<String>,
    pub top_k: Option<usize>,
    pub template: Option<String>,
    balance: Balance,
    targets: Vec<Target>,
    next: AtomicUsize,
}

impl ModelRoute {
    /// The targets in the order to try them: healthy ones first, in balance order, then
    /// those marked down (better a backend that may have recovered than no answer at all).
    fn order(&self) -> Vec<&Target> {
        let n = self.targets.len();
        if n == 1 {
            return self.targets.iter().collect();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<&Target> = (0..n).map(|i| &self.targets[(start + i) % n]).collect();
        // `sort_by_key` is stable, so round-robin order breaks ties.
        match self.balance {
            Balance::RoundRobin => order.sort_by_key(|t| t.backend.is_marked_down()),
            Balance::LeastInFlight => {
                order.sort_by_key(|t| (t.backend.is_marked_down(), t.backend.in_flight()))
            }
        }
        order
    }
}

/// A stream whose first chunk has arrived: from here on the client can be answered 200.
pub struct StartedStream {
    pub first: ChatChunk,
    pub rest: ChunkStream,
    pub backend: String,
}

pub struct Pool {
    models: HashMap<String, Arc<ModelRoute>>,
    model_order: Vec<String>,
    backends: Vec<Arc<BackendHandle>>,
}

impl Pool {
    pub fn new(config: &Config) -> Result<Pool, String> {
        let epoch = Instant::now();
        let mut by_name = HashMap::new();
        let mut backends = Vec::new();
        for backend in &config.backends {
            let handle = Arc::new(BackendHandle {
                name: backend.name.clone(),
                backend: Backend::new(backend)?,
                timeouts: backend.timeouts,
                down_for: backend.down_for,
                in_flight: AtomicUsize::new(0),
                down_until_ms: AtomicU64::new(0),
                epoch,
            });
            by_name.insert(backend.name.clone(), handle.clone());
            backends.push(handle);
        }
        let mut models = HashMap::new();
        for model in &config.models {
            let mut targets = Vec::new();
            for target in &model.targets {
                let backend = by_name
                    .get(&target.backend)
                    .ok_or_else(|| format!("unknown backend `{}`", target.backend))?;
                targets.push(Target {
                    backend: backend.clone(),
                    upstream_model: target.model.clone(),
                });
            }
            models.insert(
                model.id.clone(),
                Arc::new(ModelRoute {
                    id: model.id.clone(),
                    collection: model.collection.clone(),
                    top_k: model.top_k,
                    template: model.template.clone(),
                    balance: model.balance,
                    targets,
                    next: AtomicUsize::new(0),
                }),
            );
        }
        Ok(Pool {
            models,
            model_order: config.models.iter().map(|m| m.id.clone()).collect(),
            backends,
        })
    }

    pub fn route(&self, model: &str) -> Option<Arc<ModelRoute>> {
        self.models.get(model).cloned()
    }

    /// Model ids in config order.
    pub fn model_ids(&self) -> &[String] {
        &self.model_order
    }

    pub fn backend(&self, name: &str) -> Option<Arc<BackendHandle>> {
        self.backends.iter().find(|b| b.name == name).cloned()
    }

    pub fn backends(&self) -> &[Arc<BackendHandle>] {
        &self.backends
    }

    /// For readiness: each model and the backends that serve it, with upstream model names.
    pub fn model_targets(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.model_order
            .iter()
            .filter_map(|id| self.models.get(id))
            .map(|route| {
                let targets = route
                    .targets
                    .iter()
                    .map(|t| (t.backend.name.clone(), t.upstream_model.clone()))
                    .collect();
                (route.id.clone(), targets)
            })
            .collect()
    }

    /// A whole completion, with failover.
    pub async fn complete(
        &self,
        route: &ModelRoute,
        mut body: ChatRequest,
        request_id: &str,
    ) -> Result<(ChatCompletion, String), UpstreamError> {
        body.stream = None;
        body.stream_options = None;
        let mut request = UpstreamRequest {
            body,
            request_id: request_id.to_owned(),
        };
        let order = route.order();
        let mut last_error = None;
        for (attempt, target) in order.iter().enumerate() {
            let handle = &target.backend;
            request.body.model.clone_from(&target.upstream_model);
            let _in_flight = handle.start();
            let result = tokio::time::timeout(handle.timeouts.total, handle.backend.chat(&request))
                .await
                .unwrap_or_else(|_| Err(timeout(handle, TimeoutPhase::Total)));
            match result {
                Ok(completion) => {
                    handle.mark_up();
                    return Ok((completion, handle.name.clone()));
                }
                Err(err) => {
                    let more = attempt + 1 < order.len();
                    if !(err.is_retryable() && more) {
                        return Err(err);
                    }
                    failed_over(handle, &err);
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| no_target(&route.id)))
    }

    /// Starts a stream, with failover until the first chunk arrives.
    pub async fn stream(
        &self,
        route: &ModelRoute,
        mut body: ChatRequest,
        request_id: &str,
    ) -> Result<StartedStream, UpstreamError> {
        body.stream = Some(true);
        // Usage is always asked for (Warden counts tokens); the relay decides what the client sees.
        let mut options = body.stream_options.take().unwrap_or_default();
        options.include_usage = Some(true);
        body.stream_options = Some(options);
        let mut request = UpstreamRequest {
            body,
            request_id: request_id.to_owned(),
        };
        let order = route.order();
        let mut last_error = None;
        for (attempt, target) in order.iter().enumerate() {
            let handle = &target.backend;
            request.body.model.clone_from(&target.upstream_model);
            let in_flight = handle.start();
            let started = Instant::now();
            let deadline = started + handle.timeouts.total;
            let first_deadline = started + handle.timeouts.first_token.min(handle.timeouts.total);
            let opening = async {
                let mut stream = handle.backend.chat_stream(&request).await?;
                match stream.next().await {
                    Some(Ok(first)) => Ok((first, stream)),
                    Some(Err(err)) => Err(err),
                    None => Err(UpstreamError::Broken {
                        backend: handle.name.clone(),
                        message: "stream ended before the first chunk".to_owned(),
                    }),
                }
            };
            let result = tokio::time::timeout_at(first_deadline.into(), opening)
                .await
                .unwrap_or_else(|_| Err(timeout(handle, TimeoutPhase::FirstToken)));
            match result {
                Ok((first, rest)) => {
                    handle.mark_up();
                    let rest = timed(rest, handle.clone(), deadline, in_flight);
                    return Ok(StartedStream {
                        first,
                        rest,
                        backend: handle.name.clone(),
                    });
                }
                Err(err) => {
                    let more = attempt + 1 < order.len();
                    if !(err.is_retryable() && more) {
                        return Err(err);
                    }
                    failed_over(handle, &err);
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| no_target(&route.id)))
    }
}

fn failed_over(handle: &BackendHandle, err: &UpstreamError) {
    handle.mark_down();
    tracing::warn!(
        backend = %handle.name,
        error = %err,
        down_for_ms = handle.down_for.as_millis() as u64,
        "backend failed before the first byte; trying the next one"
    );
}

fn timeout(handle: &BackendHandle, phase: TimeoutPhase) -> UpstreamError {
    UpstreamError::Timeout {
        backend: handle.name.clone(),
        phase,
    }
}

fn no_target(model: &str) -> UpstreamError {
    UpstreamError::Connect {
        backend: model.to_owned(),
        message: "the model has no backend".to_owned(),
    }
}

/// Applies the idle and total time limits to the rest of a stream, and keeps the request
/// counted as in flight until the stream is dropped.
fn timed(
    stream: ChunkStream,
    handle: Arc<BackendHandle>,
    deadline: Instant,
    in_flight: InFlight,
) -> ChunkStream {
    let idle = handle.timeouts.idle;
    futures_util::stream::unfold(
        (stream, handle, in_flight, false),
        move |(mut stream, handle, in_flight, finished)| async move {
            if finished {
                return None;
            }
            let idle_deadline = Instant::now() + idle;
            let (limit, phase) = if idle_deadline < deadline {
                (idle_deadline, TimeoutPhase::Idle)
            } else {
                (deadline, TimeoutPhase::Total)
            };
            let item = match tokio::time::timeout_at(limit.into(), stream.next()).await {
                Ok(None) => return None,
                Ok(Some(item)) => item,
                Err(_) => Err(timeout(&handle, phase)),
            };
            let finished = item.is_err();
            Some((item, (stream, handle, in_flight, finished)))
        },
    )
    .boxed()
}
