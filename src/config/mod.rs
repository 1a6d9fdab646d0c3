//! Configuration: read the file, apply `WARDEN_...` overrides, deserialize strictly, validate.
//!
//! Every error names the file and the key path (`models[0].targets[1].backend`), and says which
//! environment variable set the key when one did.

mod env;
mod raw;
mod secret;

pub use env::{AppliedOverride, CONFIG_PATH_VAR, Environment, MapEnv, ProcessEnv};
pub use raw::{
    BackendKind, Balance, Consistency, DEFAULT_TEMPLATE, Device, FusionKind, LimitsStore,
    LogFormat, OnUnavailable, Placement, PoolingKind, RawConfig, RetrievalMode, StoreFallback,
};
pub use secret::Secret;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

pub const DEFAULT_PATH: &str = "config/warden.toml";

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub backends: Vec<BackendConfig>,
    pub models: Vec<ModelConfig>,
    pub guard: Option<GuardConfig>,
    pub embeddings: Option<EmbeddingsConfig>,
    pub milvus: Option<MilvusConfig>,
    pub retrieval: RetrievalConfig,
    pub keys: Vec<KeyConfig>,
    /// Requests in flight at once over all callers.
    pub max_concurrent_requests: u32,
    /// Where the keys' limits are shared by every replica; `None`: each replica counts its own.
    pub shared_limits: Option<SharedLimitsConfig>,
    /// The audit log file and whether it holds content.
    pub audit: Option<(PathBuf, bool)>,
    /// Stored Responses API responses.
    pub responses: ResponsesConfig,
    /// Serve the web console at `/console`.
    pub console: bool,
    /// The file as read plus overrides and defaults; secrets in it are references only.
    pub effective: RawConfig,
}

/// `[responses]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsesConfig {
    pub store: bool,
    pub max_stored: usize,
    pub max_stored_bytes: usize,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub sse_keep_alive: Duration,
    pub readiness_timeout: Duration,
    pub admin_token: Option<Secret>,
    pub allow_anonymous: bool,
}

/// `[limits] store = "redis"`: the server the keys' counters live on, and what happens without it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLimitsConfig {
    pub target: RedisTarget,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
    pub lease_ttl: Duration,
    pub key_prefix: String,
    pub on_unavailable: StoreFallback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Node(String),
    Cluster(Vec<String>),
    /// The sentinels, and the service whose primary they name.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

/// A configured caller; `sha256` is the digest of its key.
#[derive(Clone)]
pub struct KeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    pub tenant: String,
    pub policy: Option<String>,
    pub models: Option<Vec<String>>,
    pub collections: Option<Vec<String>>,
    pub admin: bool,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    pub base_url: Url,
    pub api_key: Option<Secret>,
    pub timeouts: Timeouts,
    pub down_for: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub backend: String,
    pub model: String,
    pub policies_dir: PathBuf,
    pub default_policy: String,
    pub timeout: Duration,
    pub max_tokens: u32,
    pub context_chars: usize,
    pub concurrency: usize,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
}

#[derive(Debug, Clone)]
pub struct EmbeddingsConfig {
    pub model_dir: PathBuf,
    pub model_id: String,
    pub dimension: usize,
    pub pooling: PoolingKind,
    pub max_length: usize,
    pub query_prefix: String,
    pub passage_prefix: String,
    pub cuda: bool,
    pub threads: usize,
    pub batch_size: usize,
    pub cache_capacity: u64,
    pub onnxruntime: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct MilvusConfig {
    pub uri: String,
    pub token: Option<Secret>,
    pub database: Option<String>,
    pub consistency: Consistency,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RetrievalConfig {
    pub top_k: usize,
    pub min_score: f32,
    pub template: String,
    pub placement: Placement,
    pub on_unavailable: OnUnavailable,
    pub chunk_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub max_document_bytes: usize,
    pub mode: RetrievalMode,
    pub collection_modes: std::collections::BTreeMap<String, RetrievalMode>,
    pub fusion: Fusion,
    /// Weight moved from the dense list to the keyword list when a question names something
    /// exactly (see `knowledge::fusion_for`).
    pub lexical_shift: f32,
    pub min_keyword_score: f32,
    pub min_hybrid_score: f32,
    pub max_chunks_per_doc: usize,
    pub context_tokens: usize,
}

/// How hybrid search merges the dense and the keyword lists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal-rank fusion: Σ 1 / (k + rank) over the lists.
    Rrf { k: u32 },
    /// Weighted sum of the lists' normalised scores (Milvus's weighted reranker).
    Weighted { dense: f32, keyword: f32 },
    /// Weighted sum of each list's scores rescaled by its own lowest and highest (in Warden).
    MinMax { dense: f32, keyword: f32 },
    /// Weighted sum of each list's scores rescaled by its mean ± 3σ (in Warden).
    Dbsf { dense: f32, keyword: f32 },
}

/// Collection names are used in filters and paths: letters, digits and `_`, starting with a
/// letter or `_`, as Milvus itself requires. The one check of a name, for the config, the
/// admin routes, requests and the store.
pub fn valid_collection_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255
}

impl RetrievalConfig {
    /// The mode a collection is searched with unless a request says otherwise.
    pub fn mode_of(&self, collection: &str) -> RetrievalMode {
        self.collection_modes
            .get(collection)
            .copied()
            .unwrap_or(self.mode)
    }

    /// The lowest score kept in a mode.
    pub fn min_score(&self, mode: RetrievalMode) -> f32 {
        match mode {
            RetrievalMode::Dense => self.min_score,
            RetrievalMode::Keyword => self.min_keyword_score,
            RetrievalMode::Hybrid => self.min_hybrid_score,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub collection: Option<String>,
    pub top_k: Option<usize>,
    pub template: Option<String>,
    pub id: String,
    pub balance: Balance,
    pub policy: Option<String>,
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub backend: String,
    pub model: String,
}

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
    pub set_by: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(variable) = &self.set_by {
            write!(f, " (set by environment variable {variable})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path` with overrides from `env`.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            key: None,
            message: format!("cannot read the file: {err}"),
            set_by: None,
        })?;
        Config::parse(&text, path, env)
    }

    /// Validates config text; `path` is only used in messages and as `source`.
    pub fn parse(text: &str, path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let error = |key: Option<String>, message: String| ConfigError {
            file: path.to_owned(),
            key,
            message,
            set_by: None,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let place = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            error(
                None,
                format!("not valid TOML{place}: {}", err.message().trim()),
            )
        })?;
        let overrides = env::apply_overrides(&mut table, env).map_err(|m| error(None, m))?;
        let set_by = |key: &str| {
            overrides
                .iter()
                .find(|o| key == o.path || key.starts_with(&format!("{}.", o.path)))
                .map(|o| o.variable.clone())
        };
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
                let key = err.path().to_string();
                let inner = err.into_inner();
                let (key, message) = key_and_message(&key, inner.message());
                ConfigError {
                    set_by: key.as_deref().and_then(set_by),
                    ..error(key, message)
                }
            })?;
        validate(raw, path, env).map_err(|mut err| {
            err.set_by = err.key.as_deref().and_then(set_by);
            err
        })
    }
}

/// serde reports a missing or unknown field at its parent; name the field itself.
fn key_and_message(parent: &str, message: &str) -> (Option<String>, String) {
    let field = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let key = match field {
        Some(field) if parent == "." || parent.is_empty() => field.to_owned(),
        Some(field) if !parent.ends_with(field) => format!("{parent}.{field}"),
        _ => parent.to_owned(),
    };
    let key = (!key.is_empty() && key != ".").then_some(key);
    let message = message
        .split(" for key `")
        .next()
        .unwrap_or(message)
        .trim()
        .to_owned();
    (key, message)
}

fn validate(raw: RawConfig, path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let error = |key: String, message: String| ConfigError {
        file: path.to_owned(),
        key: Some(key),
        message,
        set_by: None,
    };
    let positive = |key: &str, ms: u64| {
        if ms == 0 {
            Err(error(key.to_owned(), "must be greater than 0".to_owned()))
        } else {
            Ok(Duration::from_millis(ms))
        }
    };

    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        error(
            "server.listen".to_owned(),
            format!(
                "`{}` is not an address with a port, e.g. 127.0.0.1:8080",
                raw.server.listen
            ),
        )
    })?;
    if raw.server.max_body_bytes == 0 {
        return Err(error(
            "server.max_body_bytes".to_owned(),
            "must be greater than 0".to_owned(),
        ));
    }
    let server = ServerConfig {
        listen,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_millis(raw.server.shutdown_grace_ms),
        sse_keep_alive: positive("server.sse_keep_alive_ms", raw.server.sse_keep_alive_ms)?,
        readiness_timeout: positive(
            "server.readiness_timeout_ms",
            raw.server.readiness_timeout_ms,
        )?,
        admin_token: match &raw.server.admin_token {
            None => None,
            Some(reference) => Some(
                resolve_secret(reference, env)
                    .map_err(|m| error("server.admin_token".to_owned(), m))?,
            ),
        },
        allow_anonymous: raw.server.allow_anonymous,
    };

    if raw.backends.is_empty() {
        return Err(error(
            "backends".to_owned(),
            "at least one backend is required".to_owned(),
        ));
    }
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (name, backend) in &raw.backends {
        let key = |field: &str| format!("backends.{name}.{field}");
        let base_url = parse_base_url(&backend.base_url).map_err(|m| error(key("base_url"), m))?;
        let api_key = match &backend.api_key {
            None => None,
            Some(reference) => {
                Some(resolve_secret(reference, env).map_err(|m| error(key("api_key"), m))?)
            }
        };
        let t = &backend.timeouts;
        backends.push(BackendConfig {
            name: name.clone(),
            kind: backend.kind,
            base_url,
            api_key,
            timeouts: Timeouts {
                connect: positive(&key("timeouts.connect_ms"), t.connect_ms)?,
                first_token: positive(&key("timeouts.first_token_ms"), t.first_token_ms)?,
                idle: positive(&key("timeouts.idle_ms"), t.idle_ms)?,
                total: positive(&key("timeouts.total_ms"), t.total_ms)?,
            },
            down_for: Duration::from_millis(backend.down_for_ms),
        });
    }

    if raw.models.is_empty() {
        return Err(error(
            "models".to_owned(),
            "at least one model is required".to_owned(),
        ));
    }
    let mut seen = HashSet::new();
    let mut models = Vec::with_capacity(raw.models.len());
    for (i, model) in raw.models.iter().enumerate() {
        if model.id.trim().is_empty() {
            return Err(error(
                format!("models[{i}].id"),
                "must not be empty".to_owned(),
            ));
        }
        if !seen.insert(model.id.as_str()) {
            return Err(error(
                format!("models[{i}].id"),
                format!("model id `{}` is defined twice", model.id),
            ));
        }
        if model.targets.is_empty() {
            return Err(error(
                format!("models[{i}].targets"),
                "at least one target is required".to_owned(),
            ));
        }
        for (j, target) in model.targets.iter().enumerate() {
            if !raw.backends.contains_key(&target.backend) {
                let known: Vec<&str> = raw.backends.keys().map(String::as_str).collect();
                return Err(error(
                    format!("models[{i}].targets[{j}].backend"),
                    format!(
                        "unknown backend `{}` (defined: {})",
                        target.backend,
                        known.join(", ")
                    ),
                ));
            }
            if target.model.trim().is_empty() {
                return Err(error(
                    format!("models[{i}].targets[{j}].model"),
                    "must not be empty".to_owned(),
                ));
            }
        }
        if model.policy.is_some() && raw.guard.is_none() {
            return Err(error(
                format!("models[{i}].policy"),
                "a model policy needs a `[guard]` section".to_owned(),
            ));
        }
        if model.collection.is_some() && (raw.embeddings.is_none() || raw.milvus.is_none()) {
            return Err(error(
                format!("models[{i}].collection"),
                "retrieval needs `[embeddings]` and `[milvus]` sections".to_owned(),
            ));
        }
        if let Some(top_k) = model.top_k
            && !(1..=100).contains(&top_k)
        {
            return Err(error(
                format!("models[{i}].top_k"),
                "must be between 1 and 100".to_owned(),
            ));
        }
        if let Some(template) = &model.template
            && !template.contains("{context_str}")
        {
            return Err(error(
                format!("models[{i}].template"),
                "must contain {context_str} (where the retrieved text goes)".to_owned(),
            ));
        }
        models.push(ModelConfig {
            collection: model.collection.clone(),
            top_k: model.top_k,
            template: model.template.clone(),
            id: model.id.clone(),
            balance: model.balance,
            policy: model.policy.clone(),
            targets: model
                .targets
                .iter()
                .map(|t| TargetConfig {
                    backend: t.backend.clone(),
                    model: t.model.clone(),
                })
                .collect(),
        });
    }

    let guard = match &raw.guard {
        None => None,
        Some(guard) => {
            if !raw.backends.contains_key(&guard.backend) {
                return Err(error(
                    "guard.backend".to_owned(),
                    format!("unknown backend `{}`", guard.backend),
                ));
            }
            if guard.model.trim().is_empty() {
                return Err(error(
                    "guard.model".to_owned(),
                    "must not be empty".to_owned(),
                ));
            }
            if !(1..=100).contains(&guard.max_tokens) {
                return Err(error(
                    "guard.max_tokens".to_owned(),
                    "must be between 1 and 100 (the answer is a few tokens)".to_owned(),
                ));
            }
            if guard.context_chars < 500 {
                return Err(error(
                    "guard.context_chars".to_owned(),
                    "must be at least 500".to_owned(),
                ));
            }
            if guard.concurrency == 0 {
                return Err(error(
                    "guard.concurrency".to_owned(),
                    "must be at least 1".to_owned(),
                ));
            }
            Some(GuardConfig {
                backend: guard.backend.clone(),
                model: guard.model.clone(),
                policies_dir: PathBuf::from(&guard.policies_dir),
                default_policy: guard.default_policy.clone(),
                timeout: positive("guard.timeout_ms", guard.timeout_ms)?,
                max_tokens: guard.max_tokens,
                context_chars: guard.context_chars,
                concurrency: guard.concurrency,
                cache_ttl: positive("guard.cache_ttl_ms", guard.cache_ttl_ms)?,
                cache_capacity: guard.cache_capacity,
            })
        }
    };

    let embeddings = match &raw.embeddings {
        None => None,
        Some(e) => {
            let key = |field: &str| format!("embeddings.{field}");
            for (field, value) in [
                ("dimension", e.dimension),
                ("max_length", e.max_length),
                ("threads", e.threads),
                ("batch_size", e.batch_size),
            ] {
                if value == 0 {
                    return Err(error(key(field), "must be greater than 0".to_owned()));
                }
            }
            if e.model_dir.trim().is_empty() {
                return Err(error(key("model_dir"), "must not be empty".to_owned()));
            }
            Some(EmbeddingsConfig {
                model_dir: PathBuf::from(&e.model_dir),
                model_id: e.model_id.clone(),
                dimension: e.dimension,
                pooling: e.pooling,
                max_length: e.max_length,
                query_prefix: e.query_prefix.clone(),
                passage_prefix: e.passage_prefix.clone(),
                cuda: e.device == Device::Cuda,
                threads: e.threads,
                batch_size: e.batch_size,
                cache_capacity: e.cache_capacity,
                onnxruntime: e.onnxruntime.as_ref().map(PathBuf::from),
            })
        }
    };
    let milvus = match &raw.milvus {
        None => None,
        Some(m) => {
            let url = parse_base_url(&m.uri).map_err(|msg| error("milvus.uri".to_owned(), msg))?;
            let token = match &m.token {
                None => None,
                Some(reference) => Some(
                    resolve_secret(reference, env)
                        .map_err(|msg| error("milvus.token".to_owned(), msg))?,
                ),
            };
            Some(MilvusConfig {
                uri: url.as_str().trim_end_matches('/').to_owned(),
                token,
                database: m.database.clone(),
                consistency: m.consistency,
                timeout: positive("milvus.timeout_ms", m.timeout_ms)?,
            })
        }
    };
    let r = &raw.retrieval;
    if r.top_k == 0 || r.top_k > 100 {
        return Err(error(
            "retrieval.top_k".to_owned(),
            "must be between 1 and 100".to_owned(),
        ));
    }
    if !r.template.contains("{context_str}") {
        return Err(error(
            "retrieval.template".to_owned(),
            "must contain {context_str} (where the retrieved text goes)".to_owned(),
        ));
    }
    if r.placement == Placement::User && !r.template.contains("{query_str}") {
        return Err(error(
            "retrieval.template".to_owned(),
            "with placement = \"user\" the template must contain {query_str}".to_owned(),
        ));
    }
    if r.chunk_tokens < 16 || r.chunk_overlap_tokens >= r.chunk_tokens {
        return Err(error(
            "retrieval.chunk_overlap_tokens".to_owned(),
            "chunk_tokens must be at least 16 and larger than chunk_overlap_tokens".to_owned(),
        ));
    }
    if let Some(e) = &embeddings
        && r.chunk_tokens > e.max_length
    {
        return Err(error(
            "retrieval.chunk_tokens".to_owned(),
            format!(
                "must not exceed embeddings.max_length ({}): a chunk is never truncated before embedding",
                e.max_length
            ),
        ));
    }
    if r.rrf_k == 0 {
        return Err(error(
            "retrieval.rrf_k".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    for (key, weight) in [
        ("retrieval.dense_weight", r.dense_weight),
        ("retrieval.keyword_weight", r.keyword_weight),
        ("retrieval.lexical_shift", r.lexical_shift),
    ] {
        if !(0.0..=1.0).contains(&weight) {
            return Err(error(key.to_owned(), "must be between 0 and 1".to_owned()));
        }
    }
    if let Some(name) = r
        .collection_modes
        .keys()
        .find(|name| !valid_collection_name(name))
    {
        return Err(error(
            format!("retrieval.collection_modes.{name}"),
            "is not a valid collection name (letters, digits and `_`, starting with a letter)"
                .to_owned(),
        ));
    }
    let retrieval = RetrievalConfig {
        top_k: r.top_k,
        min_score: r.min_score,
        template: r.template.clone(),
        placement: r.placement,
        on_unavailable: r.on_unavailable,
        chunk_tokens: r.chunk_tokens,
        chunk_overlap_tokens: r.chunk_overlap_tokens,
        max_document_bytes: r.max_document_bytes,
        mode: r.mode,
        collection_modes: r.collection_modes.clone(),
        fusion: match r.fusion {
            FusionKind::Rrf => Fusion::Rrf { k: r.rrf_k },
            FusionKind::Weighted => Fusion::Weighted {
                dense: r.dense_weight,
                keyword: r.keyword_weight,
            },
            FusionKind::MinMax => Fusion::MinMax {
                dense: r.dense_weight,
                keyword: r.keyword_weight,
            },
            FusionKind::Dbsf => Fusion::Dbsf {
                dense: r.dense_weight,
                keyword: r.keyword_weight,
            },
        },
        lexical_shift: r.lexical_shift,
        min_keyword_score: r.min_keyword_score,
        min_hybrid_score: r.min_hybrid_score,
        max_chunks_per_doc: r.max_chunks_per_doc,
        context_tokens: r.context_tokens,
    };

    let keys = validate_keys(&raw, env, &models).map_err(|(key, message)| error(key, message))?;
    if keys.is_empty() && !server.listen.ip().is_loopback() && !server.allow_anonymous {
        return Err(error(
            "server.listen".to_owned(),
            format!(
                "{} is reachable from other machines but no [[keys]] are configured: add keys, or set server.allow_anonymous = true to serve anyone",
                server.listen
            ),
        ));
    }

    if raw.limits.max_concurrent_requests == 0 {
        return Err(error(
            "limits.max_concurrent_requests".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    let shared_limits =
        validate_shared_limits(&raw.limits, env).map_err(|(key, message)| error(key, message))?;
    let stored = &raw.responses;
    for (key, value) in [
        ("max_stored", stored.max_stored as u64),
        ("max_stored_mib", stored.max_stored_mib as u64),
        ("ttl_seconds", stored.ttl_seconds),
    ] {
        if stored.store && value == 0 {
            return Err(error(
                format!("responses.{key}"),
                "must be at least 1 while responses.store = true".to_owned(),
            ));
        }
    }
    let responses = ResponsesConfig {
        store: stored.store,
        max_stored: stored.max_stored,
        max_stored_bytes: stored.max_stored_mib.saturating_mul(1024 * 1024),
        ttl: Duration::from_secs(stored.ttl_seconds),
    };
    let admin_routes = server.admin_token.is_some() || keys.iter().any(|k| k.admin);
    if raw.console.enabled && !admin_routes {
        return Err(error(
            "console.enabled".to_owned(),
            "the console works through the admin routes: configure an admin key (`admin = true`) or server.admin_token".to_owned(),
        ));
    }
    Ok(Config {
        console: raw.console.enabled,
        responses,
        keys,
        max_concurrent_requests: raw.limits.max_concurrent_requests,
        shared_limits,
        audit: raw
            .audit
            .as_ref()
            .map(|a| (PathBuf::from(&a.path), a.include_content)),
        source: path.to_owned(),
        guard,
        embeddings,
        milvus,
        retrieval,
        server,
        log: LogConfig {
            format: raw.log.format,
            level: raw.log.level.clone(),
        },
        backends,
        models,
        effective: raw,
    })
}

fn validate_keys(
    raw: &RawConfig,
    env: &dyn Environment,
    models: &[ModelConfig],
) -> Result<Vec<KeyConfig>, (String, String)> {
    use sha2::{Digest, Sha256};
    let mut keys = Vec::with_capacity(raw.keys.len());
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, key) in raw.keys.iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        if key.name.trim().is_empty() || !names.insert(key.name.as_str()) {
            return Err((
                at("name"),
                "a key needs a name, unique among the keys".to_owned(),
            ));
        }
        let sha256: [u8; 32] = match (&key.key_sha256, &key.key) {
            (Some(hex), None) => parse_sha256(hex).ok_or_else(|| {
                (
                    at("key_sha256"),
                    "must be 64 hex digits (`warden keys hash` prints it)".to_owned(),
                )
            })?,
            (None, Some(reference)) => {
                let secret = resolve_secret(reference, env).map_err(|m| (at("key"), m))?;
                Sha256::digest(secret.expose().as_bytes()).into()
            }
            _ => {
                return Err((
                    at("key_sha256"),
                    "give exactly one of `key_sha256` and `key` (an `env:` reference)".to_owned(),
                ));
            }
        };
        if !digests.insert(sha256) {
            return Err((at("key_sha256"), "two keys have the same value".to_owned()));
        }
        if key.tenant.trim().is_empty() || key.tenant.len() > 256 {
            return Err((at("tenant"), "must be 1 to 256 characters".to_owned()));
        }
        for model in key.models.iter().flatten() {
            if !models.iter().any(|m| &m.id == model) {
                return Err((at("models"), format!("unknown model `{model}`")));
            }
        }
        if key.requests_per_minute == Some(0)
            || key.max_concurrent == Some(0)
            || key.tokens_per_minute == Some(0)
        {
            return Err((
                at("requests_per_minute"),
                "limits must be at least 1 (leave them out for none)".to_owned(),
            ));
        }
        if key.policy.is_some() && raw.guard.is_none() {
            return Err((
                at("policy"),
                "a key policy needs a `[guard]` section".to_owned(),
            ));
        }
        keys.push(KeyConfig {
            name: key.name.clone(),
            sha256,
            tenant: key.tenant.clone(),
            policy: key.policy.clone(),
            models: key.models.clone(),
            collections: key.collections.clone(),
            admin: key.admin,
            requests_per_minute: key.requests_per_minute,
            max_concurrent: key.max_concurrent,
            tokens_per_minute: key.tokens_per_minute,
        });
    }
    Ok(keys)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("`{text}` is not a valid URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    Ok(url)
}

fn validate_shared_limits(
    limits: &raw::RawLimits,
    env: &dyn Environment,
) -> Result<Option<SharedLimitsConfig>, (String, String)> {
    let redis = match (limits.store, &limits.redis) {
        (LimitsStore::Local, None) => return Ok(None),
        (LimitsStore::Local, Some(_)) => {
            return Err((
                "limits.redis".to_owned(),
                "is only read with limits.store = \"redis\"; set that, or remove the section"
                    .to_owned(),
            ));
        }
        (LimitsStore::Redis, None) => {
            return Err((
                "limits.redis".to_owned(),
                "limits.store = \"redis\" needs a [limits.redis] section with `url` (or `cluster`)"
                    .to_owned(),
            ));
        }
        (LimitsStore::Redis, Some(redis)) => redis,
    };
    let at = |field: &str| format!("limits.redis.{field}");
    let check = |field: String, text: &str| -> Result<String, (String, String)> {
        let url = Url::parse(text)
            .map_err(|err| (field.clone(), format!("`{text}` is not a valid URL: {err}")))?;
        if !matches!(url.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
            return Err((
                field,
                format!(
                    "`{text}`: the scheme must be redis://, rediss:// (TLS), valkey:// or valkeys://"
                ),
            ));
        }
        if url.password().is_some() {
            return Err((field, "a password is never written in the URL: give it as limits.redis.password = \"env:VARIABLE\"".to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err((field, format!("`{text}` names no host")));
        }
        // What the client itself accepts (a database number, say), so that start-up finds out.
        redis::IntoConnectionInfo::into_connection_info(text)
            .map_err(|err| (field.clone(), format!("`{text}`: {err}")))?;
        Ok(text.to_owned())
    };
    let urls = |field: &str, nodes: &[String]| -> Result<Vec<String>, (String, String)> {
        if nodes.is_empty() {
            return Err((at(field), "name at least one".to_owned()));
        }
        nodes
            .iter()
            .enumerate()
            .map(|(i, node)| check(format!("limits.redis.{field}[{i}]"), node))
            .collect()
    };
    let target = match (&redis.url, &redis.cluster, &redis.sentinels) {
        (Some(url), None, None) => RedisTarget::Node(check(at("url"), url)?),
        (None, Some(nodes), None) => RedisTarget::Cluster(urls("cluster", nodes)?),
        (None, None, Some(nodes)) => RedisTarget::Sentinel {
            sentinels: urls("sentinels", nodes)?,
            service: redis
                .sentinel_service
                .clone()
                .filter(|service| !service.trim().is_empty())
                .ok_or_else(|| {
                    (
                        at("sentinel_service"),
                        "Sentinel needs the name of the service it watches (`sentinel monitor NAME ...`)".to_owned(),
                    )
                })?,
        },
        _ => {
            return Err((
                at("url"),
                "give exactly one of `url` (one server), `cluster` (some nodes of a Redis Cluster) and `sentinels` (Redis Sentinel)".to_owned(),
            ));
        }
    };
    if redis.sentinel_service.is_some() && redis.sentinels.is_none() {
        return Err((
            at("sentinel_service"),
            "is only read with `sentinels`".to_owned(),
        ));
    }
    let password = redis
        .password
        .as_deref()
        .map(|reference| resolve_secret(reference, env))
        .transpose()
        .map_err(|message| (at("password"), message))?;
    if redis.timeout_ms == 0 {
        return Err((at("timeout_ms"), "must be at least 1".to_owned()));
    }
    if redis.lease_ttl_ms < 1000 {
        return Err((
            at("lease_ttl_ms"),
            "must be at least 1000 (the lease is renewed every third of it)".to_owned(),
        ));
    }
    let prefix_ok = !redis.key_prefix.is_empty()
        && redis.key_prefix.len() <= 64
        && redis
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if !prefix_ok {
        return Err((
            at("key_prefix"),
            "must be 1 to 64 letters, digits, `_`, `-`, `.` or `:`".to_owned(),
        ));
    }
    Ok(Some(SharedLimitsConfig {
        target,
        username: redis.username.clone(),
        password,
        timeout: Duration::from_millis(redis.timeout_ms),
        lease_ttl: Duration::from_millis(redis.lease_ttl_ms),
        key_prefix: redis.key_prefix.clone(),
        on_unavailable: limits.on_store_unavailable,
    }))
}

fn resolve_secret(reference: &str, env: &dyn Environment) -> Result<Secret, String> {
    let name = secret::env_reference(reference).ok_or_else(|| {
        "secrets are written as references (`env:VARIABLE_NAME`), never inline".to_owned()
    })?;
    let value = env
        .var(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("environment variable {name} (from `{reference}`) is not set"))?;
    Ok(Secret::new(reference, value))
}

impl Config {
    /// The effective configuration as TOML, for `warden check-config`. Secrets appear only as
    /// their references.
    pub fn effective_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.effective)
    }
}
