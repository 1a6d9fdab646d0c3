//! Shared state of the server: built once at start-up, cloned (cheaply) into every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backends::pool::Pool;
use crate::config::Config;
use crate::guard::Guard;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Arc<Pool>,
    /// `None` when the config has no `[guard]`: requests are not moderated.
    pub guard: Option<Arc<Guard>>,
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
                let model_policies: HashMap<String, String> = config
                    .models
                    .iter()
                    .filter_map(|m| m.policy.clone().map(|p| (m.id.clone(), p)))
                    .collect();
                let guard =
                    Guard::new(guard_config, backend, model_policies).map_err(|e| e.to_string())?;
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
        Ok(AppState {
            config: Arc::new(config),
            pool: Arc::new(pool),
            guard,
            started_at: unix_now(),
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
