//! Shared state of the server: built once at start-up, cloned (cheaply) into every handler.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backends::pool::Pool;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: Arc<Pool>,
    /// Unix seconds at start-up; the `created` of every entry of `/v1/models`.
    pub started_at: u64,
}

impl AppState {
    pub fn new(config: Config) -> Result<AppState, String> {
        let pool = Pool::new(&config)?;
        Ok(AppState {
            config: Arc::new(config),
            pool: Arc::new(pool),
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
