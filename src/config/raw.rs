//! The configuration file as written: plain serde structs with defaults, unknown keys rejected.
//! [`super::Config`] is the validated form the rest of Warden uses.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<RawGuard>,
}

/// `[guard]`: the Llama Guard model that judges requests and responses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// A backend of `[backends]` that serves the guard model.
    pub backend: String,
    /// The guard model's name on that backend, e.g. `llama-guard3:1b`.
    pub model: String,
    #[serde(default = "default_policies_dir")]
    pub policies_dir: String,
    #[serde(default = "default_policy_name")]
    pub default_policy: String,
    #[serde(default = "default_guard_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_guard_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_context_chars")]
    pub context_chars: usize,
    #[serde(default = "default_guard_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
}

fn default_policies_dir() -> String {
    "policies".to_owned()
}
fn default_policy_name() -> String {
    "default".to_owned()
}
fn default_guard_timeout_ms() -> u64 {
    10_000
}
fn default_guard_max_tokens() -> u32 {
    10
}
fn default_context_chars() -> usize {
    8_000
}
fn default_guard_concurrency() -> usize {
    4
}
fn default_cache_ttl_ms() -> u64 {
    3_600_000
}
fn default_cache_capacity() -> u64 {
    100_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: usize,
    pub shutdown_grace_ms: u64,
    pub sse_keep_alive_ms: u64,
    pub readiness_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace_ms: 30_000,
            sse_keep_alive_ms: 15_000,
            readiness_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `warden=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Ollama's native API (`/api/chat`, NDJSON streaming).
    Ollama,
    /// Any OpenAI-compatible server (vLLM, llama.cpp, OpenAI itself).
    Openai,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub kind: BackendKind,
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default = "default_down_for_ms")]
    pub down_for_ms: u64,
}

fn default_down_for_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect_ms: u64,
    pub first_token_ms: u64,
    pub idle_ms: u64,
    pub total_ms: u64,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect_ms: 2_000,
            first_token_ms: 60_000,
            idle_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    LeastInFlight,
    RoundRobin,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    #[serde(default)]
    pub balance: Balance,
    /// The safety policy for this model; the guard's default policy when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub targets: Vec<RawTarget>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub backend: String,
    pub model: String,
}
