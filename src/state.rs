//! Shared state of the server: built once at start-up, cloned (cheaply) into every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit::Audit;
use crate::backends::pool::Pool;
use crate::config::Config;
use crate::embed::Embedder;
use crate::guard::Guard;
use crate::knowledge::Knowledge;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

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
    /// Keys and their limits: swapped whole by a reload (SIGHUP), so a request sees one
    /// consistent set.
    pub access: Arc<arc_swap::ArcSwap<Access>>,
    pub metrics: Arc<Metrics>,
    /// Every block and flag, when `[audit]` is configured.
    pub audit: Option<Arc<Audit>>,
    /// Unix seconds at start-up; the `created` of every entry of `/v1/models`.
    pub started_at: u64,
}

impl AppState {
    pub fn new(config: Config) -> Result<AppState, String> {
        let pool = Pool::new(&config)?;
        let guard = match &config.guard {
            None => {
                tracing::warn!(
                    "no [guard] in the config: requests and responses are NOT moderated"
                );
                None
            }
            Some(guard_config) => {
                let backend = pool.backend(&guard_config.backend).ok_or_else(|| {
                    format!("guard.backend: unknown backend `{}`", guard_config.backend)
                })?;
                let key_policies: Vec<(String, String)> = config
                    .keys
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| k.policy.clone().map(|p| (format!("keys[{i}].policy"), p)))
                    .collect();
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
                Some(Arc::new(guard))
            }
        };
        let embedder = match &config.embeddings {
            None => None,
            Some(embeddings) => {
                let embedder =
                    Embedder::load(embeddings).map_err(|e| format!("embeddings: {e}"))?;
                tracing::info!(model = %embedder.model_id, dimension = embedder.dimension, device = if embeddings.cuda { "cuda" } else { "cpu" }, "embedding model loaded");
                Some(Arc::new(embedder))
            }
        };
        let knowledge = match (&embedder, &config.milvus) {
            (Some(embedder), Some(milvus)) => Some(Arc::new(Knowledge::new(
                embedder.clone(),
                Arc::new(Store::new(milvus)),
                config.retrieval.clone(),
            ))),
            _ => None,
        };
        let audit = match &config.audit {
            None => None,
            Some((path, include_content)) => Some(Arc::new(
                Audit::open(path, *include_content)
                    .map_err(|e| format!("audit.path: cannot open {}: {e}", path.display()))?,
            )),
        };
        Ok(AppState {
            access: Arc::new(arc_swap::ArcSwap::from_pointee(Access::new(&config))),
            metrics: Arc::new(Metrics::default()),
            audit,
            config: Arc::new(config),
            pool: Arc::new(pool),
            guard,
            embedder,
            knowledge,
            started_at: unix_now(),
        })
    }
}

/// Who may call and how much: the keys and the limiters made from them.
pub struct Access {
    pub keys: Vec<crate::config::KeyConfig>,
    pub limits: Arc<Limits>,
}

impl Access {
    pub fn new(config: &Config) -> Access {
        Access {
            keys: config.keys.clone(),
            limits: Arc::new(Limits::new(config)),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
