//! Shared state of the server. [`AppState`] is one generation: the config and everything built
//! from it (backends, guard, embedding model, Milvus, keys and limits). [`SharedState`] holds the
//! generation in force; a reload (SIGHUP) builds the next one beside it, reusing what did not
//! change, and swaps it in whole. Each request pins the generation it arrived under, so requests
//! and streams in flight finish with what they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::backends::pool::Pool;
use crate::chat::responses::store::ResponseStore;
use crate::config::Config;
use crate::guard::Guard;
use crate::knowledge::Knowledge;
use crate::knowledge::embed::Embedder;
use crate::knowledge::store::Store;
use crate::server::audit::Audit;
use crate::server::auth::Access;
use crate::server::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Arc<Pool>,
    /// `None` when the config has no `[guard]`: requests are not moderated.
    pub guard: Option<Arc<Guard>>,
    /// The in-process embedding model, when `[embeddings]` is configured.
    pub embedder: Option<Arc<Embedder>>,
    /// Retrieval and ingestion, when both `[embeddings]` and `[milvus]` are configured.
    pub knowledge: Option<Arc<Knowledge>>,
    /// Keys and their limits.
    pub access: Arc<Access>,
    /// Shared by every generation: counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// Every block and flag, when `[audit]` is configured.
    pub audit: Option<Arc<Audit>>,
    /// Stored Responses API responses. Shared by every generation: a reload keeps them (with
    /// the new bounds).
    pub responses: Arc<ResponseStore>,
    /// Unix seconds at start-up; the `created` of every entry of `/v1/models`.
    pub started_at: u64,
}

impl AppState {
    /// The first generation, built from nothing.
    pub fn new(config: Config) -> Result<AppState, String> {
        AppState::build(config, None).map(|(state, _)| state)
    }

    /// The generation after `self`, from a freshly read config: what did not change is kept
    /// (the embedding model, the Milvus client and what it probed, the backends with their
    /// health, the guard with its verdict cache, the audit file, the limiters of keys whose
    /// limits are the same); the rest is built anew. On an error nothing of the new config is
    /// used. Blocking: it may load an embedding model.
    pub fn next(&self, config: Config) -> Result<(AppState, Reloaded), String> {
        AppState::build(config, Some(self))
    }

    fn build(config: Config, previous: Option<&AppState>) -> Result<(AppState, Reloaded), String> {
        let mut reloaded = Reloaded::default();
        // A section is "the same" when its effective text (secrets as references) is.
        let same = |section: fn(&crate::config::RawConfig) -> serde_json::Value| {
            previous.is_some_and(|p| section(&p.config.effective) == section(&config.effective))
        };
        let kept_pool = same(|r| json(&(&r.backends, &r.models)));
        let pool = match previous {
            Some(p) if kept_pool => p.pool.clone(),
            _ => {
                reloaded.rebuilt.push("backends");
                Arc::new(Pool::new(&config)?)
            }
        };
        let embedder = match (&config.embeddings, previous) {
            (None, _) => None,
            (Some(_), Some(p)) if p.embedder.is_some() && same(|r| json(&r.embeddings)) => {
                p.embedder.clone()
            }
            (Some(embeddings), _) => {
                let embedder =
                    Embedder::load(embeddings).map_err(|e| format!("embeddings: {e}"))?;
                tracing::info!(model = %embedder.model_id, dimension = embedder.dimension, device = if embeddings.cuda { "cuda" } else { "cpu" }, "embedding model loaded");
                if previous.is_some() {
                    reloaded.rebuilt.push("embeddings");
                }
                Some(Arc::new(embedder))
            }
        };
        let previous_knowledge = previous.and_then(|p| p.knowledge.clone());
        let knowledge = match (&embedder, &config.milvus) {
            (Some(embedder), Some(milvus)) => match previous_knowledge {
                Some(k)
                    if Arc::ptr_eq(&k.embedder, embedder)
                        && same(|r| json(&r.milvus))
                        && same(|r| json(&r.retrieval)) =>
                {
                    Some(k)
                }
                Some(k) if same(|r| json(&r.milvus)) => {
                    reloaded.rebuilt.push("retrieval");
                    let store = k.store.clone();
                    Some(Arc::new(Knowledge::new(
                        embedder.clone(),
                        store,
                        config.retrieval.clone(),
                    )))
                }
                _ => {
                    if previous.is_some() {
                        reloaded.rebuilt.push("milvus");
                    }
                    Some(Arc::new(Knowledge::new(
                        embedder.clone(),
                        Arc::new(Store::new(milvus)),
                        config.retrieval.clone(),
                    )))
                }
            },
            _ => None,
        };
        let audit = match (&config.audit, previous) {
            (None, _) => None,
            (Some(_), Some(p)) if p.audit.is_some() && same(|r| json(&r.audit)) => p.audit.clone(),
            (Some((path, include_content)), _) => {
                if previous.is_some() {
                    reloaded.rebuilt.push("audit");
                }
                Some(Arc::new(Audit::open(path, *include_content).map_err(
                    |e| format!("audit.path: cannot open {}: {e}", path.display()),
                )?))
            }
        };
        // Last of the fallible steps: reusing the guard re-reads the policies in place, which
        // must not happen when a later step fails and the reload is refused.
        let guard = match &config.guard {
            None => {
                tracing::warn!(
                    "no [guard] in the config: requests and responses are NOT moderated"
                );
                None
            }
            Some(guard_config) => {
                let key_policies: Vec<(String, String)> = config
                    .keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| k.policy.clone().map(|p| (format!("keys[{i}].policy"), p)))
                    .collect();
                let reusable = previous.and_then(|p| p.guard.clone()).filter(|_| {
                    kept_pool
                        && same(|r| json(&r.guard))
                        && same(|r| json(&r.keys.iter().map(|k| &k.policy).collect::<Vec<_>>()))
                });
                match reusable {
                    Some(guard) => {
                        // Same guard, same names in use: only the policy files are read again;
                        // bad files keep the policies in force and the rest of the reload.
                        match guard.reload() {
                            Ok(_) => reloaded.rebuilt.push("policies"),
                            Err(err) => reloaded.policy_error = Some(err.to_string()),
                        }
                        Some(guard)
                    }
                    None => {
                        let backend = pool.backend(&guard_config.backend).ok_or_else(|| {
                            format!("guard.backend: unknown backend `{}`", guard_config.backend)
                        })?;
                        let model_policies: HashMap<String, String> = config
                            .models
                            .iter()
                            .filter_map(|m| m.policy.clone().map(|p| (m.id.clone(), p)))
                            .collect();
                        let guard = Guard::new(guard_config, backend, model_policies, key_policies)
                            .map_err(|e| e.to_string())?;
                        tracing::info!(
                            model = %guard.model,
                            backend = %guard.backend_name,
                            policies = ?guard.policy_names(),
                            default_policy = %guard.default_policy,
                            "guard enabled"
                        );
                        if previous.is_some() {
                            reloaded.rebuilt.push("guard");
                        }
                        Some(Arc::new(guard))
                    }
                }
            }
        };
        if let Some(p) = previous {
            for (section, changed) in [
                (
                    "server.listen",
                    p.config.server.listen != config.server.listen,
                ),
                (
                    "server.max_body_bytes",
                    p.config.server.max_body_bytes != config.server.max_body_bytes,
                ),
                ("log", !same(|r| json(&r.log))),
            ] {
                if changed {
                    reloaded.needs_restart.push(section);
                }
            }
        }
        let access = match previous {
            Some(p) => Access::next(&p.access, &config),
            None => Access::new(&config),
        };
        let responses = match previous {
            Some(p) => {
                p.responses.set_limits(config.responses);
                p.responses.clone()
            }
            None => Arc::new(ResponseStore::new(config.responses)),
        };
        Ok((
            AppState {
                access: Arc::new(access),
                metrics: previous
                    .map_or_else(|| Arc::new(Metrics::default()), |p| p.metrics.clone()),
                audit,
                responses,
                config: Arc::new(config),
                pool,
                guard,
                embedder,
                knowledge,
                started_at: previous.map_or_else(unix_now, |p| p.started_at),
            },
            reloaded,
        ))
    }
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    // Config sections always serialize; a failure would read as "changed", the safe side.
    serde_json::to_value(value).unwrap_or_else(|err| serde_json::Value::String(err.to_string()))
}

/// What a reload did beyond swapping the config.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Parts built anew (`backends`, `guard`, `policies`, `embeddings`, `milvus`, `retrieval`,
    /// `audit`); the rest is the previous generation's.
    pub rebuilt: Vec<&'static str>,
    /// Settings that changed but are read at start-up only.
    pub needs_restart: Vec<&'static str>,
    /// The policies folder did not load: the policies in force stay.
    pub policy_error: Option<String>,
}

/// What the router holds: the generation in force.
#[derive(Clone)]
pub struct SharedState(Arc<ArcSwap<AppState>>);

impl SharedState {
    pub fn new(state: AppState) -> SharedState {
        SharedState(Arc::new(ArcSwap::from_pointee(state)))
    }

    pub fn current(&self) -> Arc<AppState> {
        self.0.load_full()
    }

    pub fn replace(&self, state: AppState) {
        self.0.store(Arc::new(state));
    }
}

impl From<AppState> for SharedState {
    fn from(state: AppState) -> SharedState {
        SharedState::new(state)
    }
}

/// The generation a request arrived under, put in its extensions by [`pin_generation`].
#[derive(Clone)]
struct Pinned(Arc<AppState>);

/// The outermost layer: every later extraction of [`AppState`] in this request (middlewares,
/// handler, the stream it returns) sees this one generation, whatever reloads happen meanwhile.
pub async fn pin_generation(
    State(shared): State<SharedState>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(Pinned(shared.current()));
    next.run(request).await
}

impl FromRequestParts<SharedState> for AppState {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &SharedState,
    ) -> Result<AppState, Self::Rejection> {
        let pinned = match parts.extensions.get::<Pinned>() {
            Some(Pinned(state)) => state.clone(),
            None => shared.current(),
        };
        Ok(AppState::clone(&pinned))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
