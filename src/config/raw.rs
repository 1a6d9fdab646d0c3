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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<RawEmbeddings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milvus: Option<RawMilvus>,
    #[serde(default)]
    pub retrieval: RawRetrieval,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<RawAudit>,
    #[serde(default)]
    pub responses: RawResponses,
    #[serde(default)]
    pub console: RawConsole,
}

/// `[console]`: the web console at `/console`, for admins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConsole {
    /// Serve it. Off by default; it needs the admin routes (an admin key or
    /// `server.admin_token`), which are all it uses.
    pub enabled: bool,
}

/// `[responses]`: the Responses API's stored responses (`store`, `previous_response_id`,
/// `GET /v1/responses/{id}`), kept in this replica's memory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResponses {
    /// Keep responses a request does not ask to leave out (`store` is true unless it says
    /// false, as OpenAI has it). Off: nothing is kept, and `store: true` is a 400.
    pub store: bool,
    /// The most responses kept; past it the oldest goes.
    pub max_stored: usize,
    /// The most memory the kept responses take, in MiB (their JSON size); past it the oldest go.
    pub max_stored_mib: usize,
    /// How long a response is kept.
    pub ttl_seconds: u64,
}

impl Default for RawResponses {
    fn default() -> Self {
        RawResponses {
            store: true,
            max_stored: 1000,
            max_stored_mib: 64,
            ttl_seconds: 3600,
        }
    }
}

/// `[audit]`: a JSON-lines file with every guard block and flag.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: String,
    /// Write the judged text too (off: only who, when, which policy and categories).
    #[serde(default)]
    pub include_content: bool,
}

/// `[limits]`: what this replica takes at once, whoever calls, and where the keys' counters
/// live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Requests in flight at once over all callers; past it, 503 with `Retry-After` at once
    /// (never a queue). Always this replica's own: it protects the process.
    pub max_concurrent_requests: u32,
    /// Where the keys' limits are counted: `local` (this replica) or `redis` (every replica
    /// that names the same Redis shares them).
    pub store: LimitsStore,
    /// What a request meets while the store does not answer: `local` (this replica's own
    /// counters) or `fail` (503 `limits_unavailable`).
    pub on_store_unavailable: StoreFallback,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RawRedis>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_concurrent_requests: 4096,
            store: LimitsStore::Local,
            on_store_unavailable: StoreFallback::Local,
            redis: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsStore {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFallback {
    /// Count in this replica (logged once, reported by `/readyz` and a metric).
    #[default]
    Local,
    /// Refuse with 503 `limits_unavailable`.
    Fail,
}

/// `[limits.redis]`: the shared store of the keys' limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedis {
    /// One server: `redis://host:6379/0`, `rediss://` for TLS (also `valkey://`, `valkeys://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster instead: some of its nodes' URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel instead: the sentinels' URLs (`redis://host:26379`), which name the
    /// current primary of `sentinel_service`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An `env:` reference; never the password itself, nor a password in the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The longest one call may take before the store counts as unavailable.
    pub timeout_ms: u64,
    /// How long a request in flight holds its slot without a renewal: a replica that dies
    /// gives its slots back after this long.
    pub lease_ttl_ms: u64,
    /// Put before every key Warden writes, so that several deployments can share a server.
    pub key_prefix: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: None,
            cluster: None,
            sentinels: None,
            sentinel_service: None,
            username: None,
            password: None,
            timeout_ms: 100,
            lease_ttl_ms: 30_000,
            key_prefix: "warden".to_owned(),
        }
    }
}

/// `[[keys]]`: a caller. The key itself is never in the file: its SHA-256 (`warden keys hash`)
/// or a reference to a variable that holds it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The safety policy for this caller (wins over the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Model ids this key may use; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Collections this key may search; absent: all of its tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// May use the knowledge-base admin routes.
    #[serde(default)]
    pub admin: bool,
    /// Requests per minute (a steady rate, bursts up to the same number); absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute, prompt and completion together: the prompt is estimated before the
    /// request goes out, and the usage the backend reports is counted after; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Requests of this key in flight at once; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

fn default_tenant() -> String {
    "default".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingKind {
    #[default]
    Mean,
    Cls,
}

/// `[embeddings]`: the in-process embedding model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddings {
    /// Folder with `model.onnx`, `tokenizer.json`, `config.json`, `special_tokens_map.json`,
    /// `tokenizer_config.json`.
    pub model_dir: String,
    #[serde(default = "default_model_id")]
    pub model_id: String,
    #[serde(default = "default_dimension")]
    pub dimension: usize,
    #[serde(default)]
    pub pooling: PoolingKind,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub passage_prefix: String,
    #[serde(default)]
    pub device: Device,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_embed_cache")]
    pub cache_capacity: u64,
    /// Path of `libonnxruntime.so`; `ORT_DYLIB_PATH` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
}

fn default_model_id() -> String {
    "all-MiniLM-L6-v2".to_owned()
}
fn default_dimension() -> usize {
    384
}
fn default_max_length() -> usize {
    256
}
fn default_threads() -> usize {
    2
}
fn default_batch_size() -> usize {
    32
}
fn default_embed_cache() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Strong,
    Session,
    #[default]
    Bounded,
    Eventually,
}

/// `[milvus]`: the vector store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMilvus {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default = "default_milvus_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_milvus_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// A system message before the conversation.
    #[default]
    System,
    /// The last user message is replaced by the template filled with it.
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// 503 `retrieval_unavailable`.
    #[default]
    Fail,
    /// Answer without context, and say so in the `warden` object.
    AnswerWithout,
}

/// `[retrieval]`: how context is found and injected, and how documents are chunked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetrieval {
    pub top_k: usize,
    pub min_score: f32,
    pub template: String,
    pub placement: Placement,
    pub on_unavailable: OnUnavailable,
    pub chunk_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub max_document_bytes: usize,
    /// How chunks are found: `hybrid` (dense + BM25, fused), `dense` or `keyword`.
    pub mode: RetrievalMode,
    /// Modes of particular collections, overriding `mode`.
    pub collection_modes: std::collections::BTreeMap<String, RetrievalMode>,
    /// How hybrid search merges its two lists: `rrf` (reciprocal-rank fusion), `weighted`
    /// (Milvus's weighted sum), `min_max` or `dbsf` (score-aware sums computed in Warden).
    pub fusion: FusionKind,
    /// RRF's k: score = Σ 1 / (k + rank).
    pub rrf_k: u32,
    /// Weighted, min–max and DBSF fusion: the dense and keyword lists' weights.
    pub dense_weight: f32,
    pub keyword_weight: f32,
    /// Weight moved from dense to keyword for a question that names something exactly.
    pub lexical_shift: f32,
    /// Lowest scores kept, per mode (dense: cosine; keyword: BM25; hybrid: the fused score).
    pub min_keyword_score: f32,
    pub min_hybrid_score: f32,
    /// At most this many chunks of one document per answer (0: no limit).
    pub max_chunks_per_doc: usize,
    /// The most tokens of retrieved text injected into one request (0: no limit).
    pub context_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalMode {
    /// Dense and full-text (BM25) search, fused; dense alone where the server has no BM25.
    #[default]
    Hybrid,
    /// Embedding similarity only.
    Dense,
    /// BM25 full-text ranking only.
    Keyword,
}

impl RetrievalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalMode::Hybrid => "hybrid",
            RetrievalMode::Dense => "dense",
            RetrievalMode::Keyword => "keyword",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionKind {
    #[default]
    Rrf,
    Weighted,
    MinMax,
    Dbsf,
}

/// The notebook's QA prompt: the custom text-QA template of LlamaIndex's prompt documentation
/// ("We have provided context information below. …"), kept to the character.
pub const DEFAULT_TEMPLATE: &str = "We have provided context information below. \n---------------------\n{context_str}\n---------------------\nGiven this information, please answer the question: {query_str}\n";

impl Default for RawRetrieval {
    fn default() -> Self {
        RawRetrieval {
            top_k: 4,
            min_score: 0.0,
            template: DEFAULT_TEMPLATE.to_owned(),
            placement: Placement::System,
            on_unavailable: OnUnavailable::Fail,
            chunk_tokens: 200,
            chunk_overlap_tokens: 40,
            max_document_bytes: 20 * 1024 * 1024,
            mode: RetrievalMode::Hybrid,
            collection_modes: Default::default(),
            // Chosen on `make eval-retrieval`'s four sets on both Milvus Lite engines (see the
            // README): min–max 0.5/0.5 has the best mean hit@1 over the eight (set, engine)
            // pairs (0.948; RRF k = 10 0.943, k = 5 0.938, k = 1 0.925), bar a lexical shift of
            // 0.1 (0.950, one question in 580), and it, with or without that shift, is the
            // leave-one-set-out choice in five folds of eight. For RRF, k = 10 is best over both
            // engines.
            fusion: FusionKind::MinMax,
            // The RRF paper (Cormack, Clarke & Büttcher, SIGIR 2009) and Milvus use 60.
            rrf_k: 10,
            dense_weight: 0.5,
            keyword_weight: 0.5,
            lexical_shift: 0.0,
            min_keyword_score: 0.0,
            min_hybrid_score: 0.0,
            max_chunks_per_doc: 0,
            context_tokens: 1500,
        }
    }
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
    /// Bearer token of the admin routes (knowledge base), by reference: `env:NAME`. Unset: the
    /// admin routes answer 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Serve callers without a key on an address other than loopback. Off: Warden refuses to
    /// start that way when no `[[keys]]` are configured.
    pub allow_anonymous: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace_ms: 30_000,
            sse_keep_alive_ms: 15_000,
            readiness_timeout_ms: 2_000,
            admin_token: None,
            allow_anonymous: false,
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
    /// The knowledge-base collection searched for this model's requests; none: no retrieval
    /// unless the request names one (`warden.collection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// This model's chunk count and QA template, instead of `[retrieval]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub targets: Vec<RawTarget>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub backend: String,
    pub model: String,
}
