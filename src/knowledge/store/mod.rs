//! The knowledge base in Milvus, reached over gRPC with `milvus-sdk-rust`.
//!
//! One collection per knowledge base, one row per chunk: primary key, document id, chunk index,
//! text, source, tenant (the partition key), metadata JSON, vector. The same code runs against
//! Milvus Lite and the Milvus standalone engine; the rough edges of each are handled here (index
//! creation is polled, deletes and fetches use literal filters, results are read by column,
//! collections are loaded before they are searched).
//!
//! Where the server has Milvus's full-text search (Milvus ≥ 2.5, Milvus Lite 3.x), a collection
//! also has `keywords` (the chunk's text with its heading path, run through the server's
//! analyzer) and `sparse` (its BM25 vector, computed by the server from `keywords`), so it can be
//! searched by keyword and hybrid. Whether the server has it is found out by trying once
//! ([`Store::capabilities`]); a collection made without it is searched dense only.
//!
//! Two more things differ between servers and are found out the same way, by the server's
//! answer: Milvus Lite 2.5.1 (C++) refuses HNSW ("local mode only support FLAT IVF_FLAT
//! AUTOINDEX"), so the dense index falls back to AUTOINDEX; and it fails every filter expression
//! on a collection with a partition key ("Invalid expr"), so the tenant there is a plain field.
//! Either way every search, query and delete filters by tenant.

pub mod fusion;
pub mod identifiers;

use milvus::v2::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::result::Result;
use std::time::Duration;

use crate::config::{Consistency, Fusion, MilvusConfig, RetrievalMode};

pub const FIELD_ID: &str = "id";
pub const FIELD_DOC: &str = "doc_id";
pub const FIELD_CHUNK: &str = "chunk_index";
pub const FIELD_TEXT: &str = "text";
pub const FIELD_SOURCE: &str = "source";
pub const FIELD_TENANT: &str = "tenant";
pub const FIELD_METADATA: &str = "metadata";
pub const FIELD_VECTOR: &str = "vector";
pub const FIELD_KEYWORDS: &str = "keywords";
pub const FIELD_SPARSE: &str = "sparse";
const BM25_FUNCTION: &str = "keywords_bm25";
/// Words the full-text index leaves out: Lucene's English stop set (`EnglishAnalyzer`), and
/// the pronouns and question words users type ("how do I …"). They say nothing about which
/// chunk answers, and each one would match nearly every chunk (Milvus Lite scores every chunk
/// a query term matches, in Python: "the" alone cost milliseconds on 10,000 chunks).
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with", // Lucene's set ends here
    "how", "what", "which", "when", "where", "who", "why", "do", "does", "did", "can", "could",
    "should", "would", "i", "me", "my", "you", "your", "we", "our", "its", "from", "so", "than",
    "been", "has", "have", "had", "am", "want", "need", "way",
];

const MAX_TEXT: u32 = 65_535;
const MAX_SHORT: u32 = 2_048;
/// Rows per insert request.
const INSERT_BATCH: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("Milvus is unreachable or failed: {0}")]
    Unavailable(String),
    #[error("collection `{0}` does not exist")]
    NoCollection(String),
    #[error("collection `{0}` already exists")]
    Exists(String),
    #[error(
        "collection `{collection}` holds vectors of {found} dimensions, but the embedding model makes {expected}"
    )]
    DimensionMismatch {
        collection: String,
        found: u32,
        expected: usize,
    },
    #[error("collection `{collection}` was not made by Warden (missing field `{field}`)")]
    Foreign { collection: String, field: String },
    #[error("{0}")]
    Invalid(String),
}

fn failed(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// One chunk to store.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    pub doc_id: String,
    pub chunk_index: i64,
    pub text: String,
    pub source: String,
    pub tenant: String,
    pub metadata: serde_json::Value,
    /// What the BM25 index reads (the text with its heading path); unused without full text.
    pub keywords: String,
    pub vector: Vec<f32>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub doc_id: String,
    pub chunk_index: i64,
    pub text: String,
    pub source: String,
    /// The chunk's section: its heading path joined with " › " (empty when it has none).
    pub heading: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    pub name: String,
    pub dimension: u32,
    /// Whether it has the BM25 index, so it can be searched by keyword and hybrid.
    pub full_text: bool,
    /// Whether the tenant is its partition key (or a plain field; searches filter by it alike).
    pub tenant_partition_key: bool,
}

/// What to search for: the question's embedding and its text.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub vector: &'a [f32],
    pub text: &'a str,
}

/// What the server can do, as far as the schema of a new collection depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// BM25 functions and sparse vectors: keyword and hybrid search.
    pub full_text: bool,
    /// Filters work on a collection whose tenant is the partition key (the tenant is then a
    /// partition key; otherwise a plain field).
    pub tenant_partition_key: bool,
}

/// The dense index Warden makes: HNSW, or AUTOINDEX where the server refuses HNSW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseIndex {
    Hnsw,
    Auto,
}

pub struct Store {
    config: MilvusConfig,
    /// Connected on first use, so Warden starts (and says so in `/readyz`) while Milvus is down.
    client: tokio::sync::OnceCell<ClientV2>,
    consistency: ConsistencyLevel,
    timeout: Duration,
    /// What the server can do, once found out.
    capabilities: tokio::sync::OnceCell<Capabilities>,
    /// The dense index the server accepted, once one was made.
    dense_index: std::sync::OnceLock<DenseIndex>,
    /// The start of the probe collections' names, unique to this store (several may share a
    /// server).
    probe: String,
}

/// The most rows one Milvus query returns (its `limit` cap).
const QUERY_LIMIT: i64 = 16_384;

/// One document of a collection, as the console lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocumentSummary {
    pub doc_id: String,
    pub source: String,
    pub chunks: usize,
}

/// Where the store's callers have always found it; defined in config, which checks names too.
pub use crate::config::valid_collection_name;

/// The filter for one document of one tenant.
fn document_filter(tenant: &str, doc_id: &str) -> String {
    format!(
        "{FIELD_TENANT} == {} and {FIELD_DOC} == {}",
        literal(tenant),
        literal(doc_id)
    )
}

/// A string literal for a Milvus filter expression: quotes and backslashes escaped, so a value
/// can never close the literal and add to the expression.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Store {
    pub fn new(config: &MilvusConfig) -> Store {
        Store {
            config: config.clone(),
            client: tokio::sync::OnceCell::new(),
            consistency: match config.consistency {
                Consistency::Strong => ConsistencyLevel::Strong,
                Consistency::Session => ConsistencyLevel::Session,
                Consistency::Bounded => ConsistencyLevel::Bounded,
                Consistency::Eventually => ConsistencyLevel::Eventually,
            },
            timeout: config.timeout,
            capabilities: tokio::sync::OnceCell::new(),
            dense_index: std::sync::OnceLock::new(),
            probe: {
                static STORES: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                format!(
                    "warden_probe_{}_{}_",
                    std::process::id(),
                    STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                )
            },
        }
    }

    /// The start of the names of the collections [`Store::capabilities`] makes and drops.
    pub fn probe_prefix(&self) -> &str {
        &self.probe
    }

    /// A store that is connected now (for the CLI and tests, which want to fail early).
    pub async fn connect(config: &MilvusConfig) -> Result<Store, StoreError> {
        let store = Store::new(config);
        store.client().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<&ClientV2, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let config = &self.config;
                let mut connect = ConnectConfig::new()
                    .uri(config.uri.clone())
                    .telemetry(TelemetryConfig::new().enabled(false));
                if let Some(token) = &config.token {
                    connect = connect.token(token.expose().to_owned());
                }
                if let Some(database) = &config.database {
                    connect = connect.database(database.clone());
                }
                tokio::time::timeout(config.timeout, ClientV2::new(&connect))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!(
                            "no answer from {} within {:?}",
                            config.uri, config.timeout
                        ))
                    })?
                    .map_err(failed)
            })
            .await
    }

    async fn limit<T>(
        &self,
        call: impl std::future::Future<Output = milvus::v2::error::Result<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("Milvus did not answer within {:?}", self.timeout))
            })?
            .map_err(failed)
    }

    /// Whether Milvus answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.has_collection("warden_readiness_probe")
            .await
            .map(|_| ())
    }

    pub async fn has_collection(&self, name: &str) -> Result<bool, StoreError> {
        let request = HasCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(failed)?;
        let response = self
            .limit(self.client().await?.has_collection(request))
            .await?;
        Ok(response.exists())
    }

    /// The collection's vector dimension; an error when it was not made by Warden.
    pub async fn describe(&self, name: &str) -> Result<CollectionInfo, StoreError> {
        if !self.has_collection(name).await? {
            return Err(StoreError::NoCollection(name.to_owned()));
        }
        let request = DescribeCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(failed)?;
        let response = self
            .limit(self.client().await?.describe_collection(request))
            .await?;
        let fields = response.description().get_schema().get_fields();
        for required in [
            FIELD_DOC,
            FIELD_CHUNK,
            FIELD_TEXT,
            FIELD_SOURCE,
            FIELD_TENANT,
            FIELD_VECTOR,
        ] {
            if !fields.iter().any(|f| f.get_name() == required) {
                return Err(StoreError::Foreign {
                    collection: name.to_owned(),
                    field: required.to_owned(),
                });
            }
        }
        let dimension = fields
            .iter()
            .find(|f| f.get_name() == FIELD_VECTOR)
            .map(|f| f.get_dimension())
            .unwrap_or(0);
        let full_text = [FIELD_KEYWORDS, FIELD_SPARSE]
            .iter()
            .all(|required| fields.iter().any(|f| f.get_name() == *required));
        let tenant_partition_key = fields
            .iter()
            .any(|f| f.get_name() == FIELD_TENANT && f.is_partition_key());
        Ok(CollectionInfo {
            name: name.to_owned(),
            dimension,
            full_text,
            tenant_partition_key,
        })
    }

    /// Checks that an existing collection fits the embedding model.
    pub async fn check(&self, name: &str, dimension: usize) -> Result<CollectionInfo, StoreError> {
        let info = self.describe(name).await?;
        if info.dimension as usize != dimension {
            return Err(StoreError::DimensionMismatch {
                collection: name.to_owned(),
                found: info.dimension,
                expected: dimension,
            });
        }
        Ok(info)
    }

    /// Whether the server has full-text search (see [`Store::capabilities`]).
    pub async fn full_text(&self) -> Result<bool, StoreError> {
        Ok(self.capabilities().await?.full_text)
    }

    /// [`Store::full_text`] when already found out, without asking the server.
    pub fn full_text_known(&self) -> Option<bool> {
        self.capabilities.get().map(|c| c.full_text)
    }

    /// The dense index this store made, once it made one (HNSW, or AUTOINDEX where refused).
    pub fn dense_index(&self) -> Option<DenseIndex> {
        self.dense_index.get().copied()
    }

    /// What the server can do, found out once by making, filling, searching (with the tenant
    /// filter) and dropping a small collection, richest schema first: Milvus 2.3.5 accepts a
    /// full-text collection but fails to index or fill it, and Milvus Lite 2.5.1 accepts a
    /// partition key but then fails the filter, so only the whole round trip tells. A schema
    /// counts as refused when the round trip fails while the server still answers; an
    /// unreachable server is an error (asked again next time), not a "no".
    pub async fn capabilities(&self) -> Result<Capabilities, StoreError> {
        self.capabilities
            .get_or_try_init(|| async {
                let mut refusals = Vec::new();
                // Partition key outermost: Milvus 2.3.5 (no full text) then needs two round
                // trips, Milvus Lite 2.5.1 (no filter on a partition key) three.
                for tenant_partition_key in [true, false] {
                    for full_text in [true, false] {
                        let capabilities = Capabilities {
                            full_text,
                            tenant_partition_key,
                        };
                        match self.try_schema(capabilities).await {
                            Ok(()) => {
                                self.log_capabilities(capabilities, &refusals);
                                return Ok(capabilities);
                            }
                            Err(StoreError::Unavailable(message)) if self.ping().await.is_ok() => {
                                refusals.push(message);
                            }
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(StoreError::Unavailable(format!(
                    "Milvus refused every collection schema Warden makes: {}",
                    refusals.join("; ")
                )))
            })
            .await
            .copied()
    }

    fn log_capabilities(&self, capabilities: Capabilities, refusals: &[String]) {
        let uri = &self.config.uri;
        let refused = refusals.join("; ");
        if capabilities.full_text {
            tracing::info!(%uri, "Milvus has full-text search: collections get a BM25 index, hybrid retrieval is on");
        } else {
            tracing::warn!(%uri, reason = %refused, "Milvus has no full-text search (BM25 needs Milvus 2.5 or later, or Milvus Lite 3): retrieval is dense only, hybrid and keyword requests are served dense");
        }
        if !capabilities.tenant_partition_key {
            tracing::warn!(%uri, reason = %refused, "Milvus cannot filter a collection that has a partition key: the tenant is a plain field of new collections, and every search still filters by it");
        }
    }

    /// One round trip of [`Store::capabilities`] on a probe collection, which is dropped
    /// whatever happens. Each schema gets its own name, so that no schema the client cached for
    /// an earlier probe can apply to the next.
    async fn try_schema(&self, capabilities: Capabilities) -> Result<(), StoreError> {
        let probe = &format!(
            "{}{}{}",
            self.probe,
            if capabilities.full_text {
                "bm25"
            } else {
                "dense"
            },
            if capabilities.tenant_partition_key {
                "_pk"
            } else {
                ""
            }
        );
        let outcome = self.try_schema_on(probe, capabilities).await;
        if self.has_collection(probe).await.unwrap_or(false)
            && let Err(error) = self.drop_collection(probe).await
        {
            tracing::warn!(%error, collection = probe, "could not drop the capability probe collection");
        }
        outcome
    }

    async fn try_schema_on(
        &self,
        probe: &str,
        capabilities: Capabilities,
    ) -> Result<(), StoreError> {
        self.create_with(probe, 2, capabilities).await?;
        self.insert(
            probe,
            capabilities.full_text,
            vec![ChunkRow {
                doc_id: "probe".to_owned(),
                chunk_index: 0,
                text: "full text probe".to_owned(),
                source: "probe".to_owned(),
                tenant: "probe".to_owned(),
                metadata: json!({}),
                keywords: "full text probe".to_owned(),
                vector: vec![1.0, 0.0],
            }],
        )
        .await?;
        let query = Query {
            vector: &[1.0, 0.0],
            text: "probe",
        };
        let mode = if capabilities.full_text {
            RetrievalMode::Keyword
        } else {
            RetrievalMode::Dense
        };
        // Whether the row is found depends on the consistency level; that the search with the
        // tenant filter is answered at all is what tells.
        self.search_mode(probe, "probe", query, mode, 1, Fusion::Rrf { k: 60 })
            .await?;
        Ok(())
    }

    /// Creates a collection for vectors of `dimension`, with the BM25 index where the server
    /// has full-text search, indexes and loads it.
    pub async fn create(&self, name: &str, dimension: usize) -> Result<CollectionInfo, StoreError> {
        let capabilities = self.capabilities().await?;
        self.create_with(name, dimension, capabilities).await
    }

    async fn create_with(
        &self,
        name: &str,
        dimension: usize,
        capabilities: Capabilities,
    ) -> Result<CollectionInfo, StoreError> {
        let full_text = capabilities.full_text;
        if !valid_collection_name(name) {
            return Err(StoreError::Invalid(format!(
                "`{name}` is not a valid collection name (letters, digits and `_`, starting with a letter)"
            )));
        }
        if self.has_collection(name).await? {
            return Err(StoreError::Exists(name.to_owned()));
        }
        let varchar = |name: &str, max: u32| {
            FieldSchema::new()
                .name(name)
                .data_type(DataType::VarChar)
                .max_length(max)
        };
        let mut schema = CollectionSchema::new()
            .add_field(
                FieldSchema::new()
                    .name(FIELD_ID)
                    .data_type(DataType::Int64)
                    .primary_key(true)
                    .auto_id(true),
            )
            .add_field(varchar(FIELD_DOC, 128))
            .add_field(
                FieldSchema::new()
                    .name(FIELD_CHUNK)
                    .data_type(DataType::Int64),
            )
            .add_field(varchar(FIELD_TEXT, MAX_TEXT))
            .add_field(varchar(FIELD_SOURCE, MAX_SHORT))
            .add_field(varchar(FIELD_TENANT, 256).partition_key(capabilities.tenant_partition_key))
            .add_field(
                FieldSchema::new()
                    .name(FIELD_METADATA)
                    .data_type(DataType::Json),
            )
            .add_field(
                FieldSchema::new()
                    .name(FIELD_VECTOR)
                    .data_type(DataType::FloatVector)
                    .dimension(dimension as u32),
            );
        if full_text {
            schema = schema
                .add_field(
                    varchar(FIELD_KEYWORDS, MAX_TEXT)
                        .enable_analyzer(true)
                        .analyzer_params(analyzer_params()),
                )
                .add_field(
                    FieldSchema::new()
                        .name(FIELD_SPARSE)
                        .data_type(DataType::SparseFloatVector),
                )
                .add_function(
                    Function::new()
                        .name(BM25_FUNCTION)
                        .function_type(FunctionType::Bm25)
                        .input_fields([FIELD_KEYWORDS])
                        .output_fields([FIELD_SPARSE]),
                );
        }
        let request = CreateCollectionRequest::builder()
            .collection_name(name)
            .schema(schema)
            .consistency_level(self.consistency)
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.create_collection(request))
            .await?;
        if full_text && !self.function_output_marked(name).await? {
            self.drop_collection(name).await?;
            if capabilities.tenant_partition_key {
                return Err(StoreError::Unavailable(
                    "Milvus does not mark the BM25 output field by itself, and a collection with a partition key cannot be made so that it is".to_owned(),
                ));
            }
            self.create_marked(name, dimension).await?;
        }
        self.create_dense_index(name).await?;
        if full_text {
            let sparse_index = IndexParam::new()
                .field_name(FIELD_SPARSE)
                .index_type(IndexType::SparseInvertedIndex)
                .metric_type(MetricType::Bm25);
            self.create_index(name, sparse_index).await?;
        }
        self.load(name).await?;
        Ok(CollectionInfo {
            name: name.to_owned(),
            dimension: dimension as u32,
            full_text,
            tenant_partition_key: capabilities.tenant_partition_key,
        })
    }

    /// Whether the server took the BM25 function's output field (`sparse`) for what it is. Milvus
    /// Lite 3 and Milvus ≥ 2.5 work it out from the function; Milvus Lite 2.5.1 keeps the field
    /// as the client sent it, and this client (v2) cannot mark it, so it would then ask every
    /// insert for the sparse vectors that the server should compute.
    async fn function_output_marked(&self, name: &str) -> Result<bool, StoreError> {
        let request = DescribeCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(failed)?;
        let response = self
            .limit(self.client().await?.describe_collection(request))
            .await?;
        Ok(response
            .description()
            .get_schema()
            .get_fields()
            .iter()
            .any(|f| f.get_name() == FIELD_SPARSE && f.is_function_output()))
    }

    /// Makes a full-text collection, with a plain tenant field, through the v1 client, which
    /// marks the function's output field in the schema it sends (the same fields and analyzer as
    /// [`Store::create_with`]; the v1 client cannot make a partition key). Said once.
    async fn create_marked(&self, name: &str, dimension: usize) -> Result<(), StoreError> {
        use milvus::proto::schema as proto;
        use milvus::schema::{CollectionSchemaBuilder, FieldSchema as V1Field};
        let varchar = |name: &str, max: u32| V1Field::new_varchar(name, "", max as i32);
        let mut builder = CollectionSchemaBuilder::new(name, "");
        builder
            .add_field(V1Field::new_primary_int64(FIELD_ID, "", true))
            .add_field(varchar(FIELD_DOC, 128))
            .add_field(V1Field::new_int64(FIELD_CHUNK, ""))
            .add_field(varchar(FIELD_TEXT, MAX_TEXT))
            .add_field(varchar(FIELD_SOURCE, MAX_SHORT))
            .add_field(varchar(FIELD_TENANT, 256))
            .add_field(V1Field {
                name: FIELD_METADATA.to_owned(),
                dtype: proto::DataType::Json,
                ..V1Field::empty()
            })
            .add_field(V1Field::new_float_vector(
                FIELD_VECTOR,
                "",
                dimension as i64,
            ))
            .add_field(
                varchar(FIELD_KEYWORDS, MAX_TEXT)
                    .add_type_param("enable_analyzer", "true")
                    .add_type_param("analyzer_params", analyzer_params().to_string()),
            )
            .add_field(V1Field::new_sparse_float_vector(FIELD_SPARSE, ""))
            .add_function(proto::FunctionSchema {
                name: BM25_FUNCTION.to_owned(),
                r#type: proto::FunctionType::Bm25 as i32,
                input_field_names: vec![FIELD_KEYWORDS.to_owned()],
                output_field_names: vec![FIELD_SPARSE.to_owned()],
                ..Default::default()
            });
        let schema = builder.build().map_err(failed)?;
        let consistency = match self.config.consistency {
            Consistency::Strong => milvus::proto::common::ConsistencyLevel::Strong,
            Consistency::Session => milvus::proto::common::ConsistencyLevel::Session,
            Consistency::Bounded => milvus::proto::common::ConsistencyLevel::Bounded,
            Consistency::Eventually => milvus::proto::common::ConsistencyLevel::Eventually,
        };
        let client = self.v1_client().await?;
        tokio::time::timeout(
            self.timeout,
            client.create_collection(
                schema,
                Some(milvus::options::CreateCollectionOptions::with_consistency_level(consistency)),
            ),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Milvus did not answer in time".to_owned()))?
        .map_err(failed)?;
        if !self.function_output_marked(name).await? {
            return Err(StoreError::Unavailable(format!(
                "Milvus does not keep `{FIELD_SPARSE}` as the BM25 function's output"
            )));
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::info!(uri = %self.config.uri, "Milvus does not work out the BM25 output field by itself: full-text collections are made with it marked (v1 client)");
        });
        Ok(())
    }

    /// The dense index: inner-product HNSW on normalised vectors (i.e. cosine), or AUTOINDEX
    /// with the same metric where the server refuses HNSW (Milvus Lite 2.5.1, found out on the
    /// first collection made and said once).
    async fn create_dense_index(&self, name: &str) -> Result<(), StoreError> {
        let param = |index: DenseIndex| {
            let param = IndexParam::new()
                .field_name(FIELD_VECTOR)
                .metric_type(MetricType::Ip);
            match index {
                DenseIndex::Hnsw => param
                    .index_type(IndexType::Hnsw)
                    .extra_params(HashMap::from([
                        ("M".to_owned(), "16".to_owned()),
                        ("efConstruction".to_owned(), "200".to_owned()),
                    ])),
                DenseIndex::Auto => param.index_type(IndexType::AutoIndex),
            }
        };
        if let Some(index) = self.dense_index() {
            return self.create_index(name, param(index)).await;
        }
        match self.create_index(name, param(DenseIndex::Hnsw)).await {
            Ok(()) => {
                let _ = self.dense_index.set(DenseIndex::Hnsw);
                Ok(())
            }
            Err(StoreError::Unavailable(reason)) if self.ping().await.is_ok() => {
                self.create_index(name, param(DenseIndex::Auto)).await?;
                if self.dense_index.set(DenseIndex::Auto).is_ok() {
                    tracing::warn!(uri = %self.config.uri, %reason, "Milvus refuses HNSW: dense indexes are AUTOINDEX (inner product)");
                }
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// An index, created without waiting (Milvus Lite answers the waiting form with Unimplemented) and polled
    /// until built.
    async fn create_index(&self, name: &str, index: IndexParam) -> Result<(), StoreError> {
        let field = index.get_field_name().to_owned();
        let request = CreateIndexRequest::builder()
            .collection_name(name)
            .index_param(index)
            .sync(false)
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.create_index(request))
            .await?;
        for _ in 0..300 {
            let request = DescribeIndexRequest::builder()
                .collection_name(name)
                .field_name(field.as_str())
                .build()
                .map_err(failed)?;
            let response = self
                .limit(self.client().await?.describe_index(request))
                .await?;
            if response
                .indexes()
                .iter()
                .any(|i| i.get_state() == IndexStateCode::Finished)
            {
                return Ok(());
            }
            if response
                .indexes()
                .iter()
                .any(|i| i.get_state() == IndexStateCode::Failed)
            {
                return Err(StoreError::Unavailable(format!(
                    "building the index of `{name}` failed"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Unavailable(format!(
            "the index of `{name}` was not built within 30 s"
        )))
    }

    /// Loads a collection into memory (needed after a server restart before searching).
    pub async fn load(&self, name: &str) -> Result<(), StoreError> {
        let request = LoadCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.load_collection(request))
            .await?;
        Ok(())
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        if !self.has_collection(name).await? {
            return Err(StoreError::NoCollection(name.to_owned()));
        }
        let request = DropCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.drop_collection(request))
            .await?;
        Ok(())
    }

    /// Names of the collections on the server.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let request = ListCollectionsRequest::builder().build().map_err(failed)?;
        match self
            .limit(self.client().await?.list_collections(request))
            .await
        {
            Ok(response) => Ok(response.collection_names().to_vec()),
            // Milvus Lite answers with the names but not the parallel arrays (ids, timestamps)
            // that the v2 client insists on; the v1 client reads the names alone.
            Err(StoreError::Unavailable(message))
                if message.contains("parallel") || message.contains("ShowCollectionsResponse") =>
            {
                self.list_names_only().await
            }
            Err(err) => Err(err),
        }
    }

    async fn list_names_only(&self) -> Result<Vec<String>, StoreError> {
        let client = self.v1_client().await?;
        tokio::time::timeout(self.timeout, client.list_collections())
            .await
            .map_err(|_| StoreError::Unavailable("Milvus did not answer in time".to_owned()))?
            .map_err(failed)
    }

    /// The v1 client, for the few calls the v2 client cannot make on some servers.
    async fn v1_client(&self) -> Result<milvus::client::Client, StoreError> {
        let (username, password) = match self.config.token.as_ref().map(|t| t.expose().to_owned()) {
            Some(token) => match token.split_once(':') {
                Some((user, pass)) => (Some(user.to_owned()), Some(pass.to_owned())),
                None => (None, None),
            },
            None => (None, None),
        };
        tokio::time::timeout(
            self.timeout,
            milvus::client::Client::with_timeout(
                self.config.uri.clone(),
                self.timeout,
                username,
                password,
            ),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Milvus did not answer in time".to_owned()))?
        .map_err(failed)
    }

    /// Seals what was inserted into indexed segments. Milvus Lite scans unsealed rows one by one
    /// on every search (the benchmark saw searches ~7× faster after a flush), so a bulk
    /// ingestion ends with one; single documents are left to the server's own schedule.
    pub async fn flush(&self, collection: &str) -> Result<(), StoreError> {
        let request = FlushRequest::builder()
            .collection_names([collection])
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.flush(request)).await?;
        Ok(())
    }

    /// Deletes a document's chunks within one tenant; returns how many there were (0: the
    /// tenant has no such document, and nothing was touched). The count costs a query: a
    /// re-ingest that only replaces chunks calls [`Store::clear_document`].
    pub async fn delete_document(
        &self,
        collection: &str,
        tenant: &str,
        doc_id: &str,
    ) -> Result<usize, StoreError> {
        let chunks = self.count_document(collection, tenant, doc_id).await?;
        if chunks > 0 {
            self.clear_document(collection, tenant, doc_id).await?;
        }
        Ok(chunks)
    }

    /// Removes every chunk of a document of a tenant, whether there are any or not.
    pub async fn clear_document(
        &self,
        collection: &str,
        tenant: &str,
        doc_id: &str,
    ) -> Result<(), StoreError> {
        let request = DeleteRequest::builder()
            .collection_name(collection)
            .filter(document_filter(tenant, doc_id))
            .build()
            .map_err(failed)?;
        self.limit(self.client().await?.delete(request)).await?;
        Ok(())
    }

    /// Number of chunks of a document (what a delete or re-ingest can be checked against).
    pub async fn count_document(
        &self,
        collection: &str,
        tenant: &str,
        doc_id: &str,
    ) -> Result<usize, StoreError> {
        let request = QueryRequest::builder()
            .collection_name(collection)
            .filter(document_filter(tenant, doc_id))
            .output_fields([FIELD_CHUNK])
            .consistency_level(ConsistencyLevel::Strong)
            .build()
            .map_err(failed)?;
        let response = self.limit(self.client().await?.query(request)).await?;
        Ok(response.results().get_row_count() as usize)
    }

    /// The documents of one tenant, with their chunk counts, by source. Reads at most
    /// `QUERY_LIMIT` chunks (Milvus's own cap on one query); `true` when there were more.
    pub async fn list_documents(
        &self,
        collection: &str,
        tenant: &str,
    ) -> Result<(Vec<DocumentSummary>, bool), StoreError> {
        let request = QueryRequest::builder()
            .collection_name(collection)
            .filter(format!("{FIELD_TENANT} == {}", literal(tenant)))
            .output_fields([FIELD_DOC, FIELD_SOURCE])
            .limit(QUERY_LIMIT)
            .consistency_level(ConsistencyLevel::Strong)
            .build()
            .map_err(failed)?;
        let response = self
            .loaded(collection, || async {
                self.limit(self.client().await?.query(request.clone()))
                    .await
            })
            .await?;
        let results = response.results();
        let strings = |name: &str| match results.get_output_field(name) {
            Some(FieldData::VarChar { values, .. }) => values.clone(),
            _ => Vec::new(),
        };
        let (docs, sources) = (strings(FIELD_DOC), strings(FIELD_SOURCE));
        let mut by_doc: std::collections::BTreeMap<String, DocumentSummary> =
            std::collections::BTreeMap::new();
        for (i, doc_id) in docs.iter().enumerate() {
            by_doc
                .entry(doc_id.clone())
                .or_insert_with(|| DocumentSummary {
                    doc_id: doc_id.clone(),
                    source: sources.get(i).cloned().unwrap_or_default(),
                    chunks: 0,
                })
                .chunks += 1;
        }
        let mut documents: Vec<DocumentSummary> = by_doc.into_values().collect();
        documents.sort_by(|a, b| a.source.cmp(&b.source));
        Ok((documents, docs.len() as i64 >= QUERY_LIMIT))
    }

    /// Stores rows; `full_text` says whether the collection has the BM25 field (see
    /// [`CollectionInfo::full_text`]), which then gets each row's `keywords`.
    pub async fn insert(
        &self,
        collection: &str,
        full_text: bool,
        rows: Vec<ChunkRow>,
    ) -> Result<usize, StoreError> {
        let mut inserted = 0;
        for batch in rows.chunks(INSERT_BATCH) {
            let values: Vec<serde_json::Value> = batch
                .iter()
                .map(|row| {
                    let mut value = json!({
                        FIELD_DOC: row.doc_id,
                        FIELD_CHUNK: row.chunk_index,
                        FIELD_TEXT: truncate(&row.text, MAX_TEXT as usize),
                        FIELD_SOURCE: truncate(&row.source, MAX_SHORT as usize),
                        FIELD_TENANT: row.tenant,
                        FIELD_METADATA: row.metadata,
                        FIELD_VECTOR: row.vector,
                    });
                    if full_text {
                        value[FIELD_KEYWORDS] = json!(truncate(
                            &identifiers::keyword_form(&row.keywords),
                            MAX_TEXT as usize
                        ));
                    }
                    value
                })
                .collect();
            let request = InsertRequest::builder()
                .collection_name(collection)
                .rows(values)
                .build()
                .map_err(failed)?;
            let response = self.limit(self.client().await?.insert(request)).await?;
            inserted += response.insert_count() as usize;
        }
        Ok(inserted)
    }

    /// The `top_k` chunks of `tenant` nearest to `vector`, best first, at or above `min_score`
    /// (dense search).
    pub async fn search(
        &self,
        collection: &str,
        tenant: &str,
        vector: &[f32],
        top_k: usize,
        min_score: f32,
    ) -> Result<Vec<Hit>, StoreError> {
        let query = Query { vector, text: "" };
        let mut hits = self
            .search_mode(
                collection,
                tenant,
                query,
                RetrievalMode::Dense,
                top_k,
                Fusion::Rrf { k: 60 },
            )
            .await?;
        hits.retain(|hit| hit.score >= min_score);
        Ok(hits)
    }

    /// The `limit` best chunks of `tenant` for `query` in a mode, best first. Keyword and
    /// hybrid need a collection with full text (see [`CollectionInfo::full_text`]). Scores:
    /// dense, the cosine similarity; keyword, the BM25 score (Milvus Lite answers it negated,
    /// it is turned back); hybrid, the fused score. RRF and the weighted sum are Milvus's own
    /// rerankers (one request); min–max and DBSF fusion need both lists' raw scores, so the two
    /// searches run at the same time and Warden fuses them ([`fusion`]).
    pub async fn search_mode(
        &self,
        collection: &str,
        tenant: &str,
        query: Query<'_>,
        mode: RetrievalMode,
        limit: usize,
        fusion: Fusion,
    ) -> Result<Vec<Hit>, StoreError> {
        // Boxed: a search future is large (the request builders), and a caller's stack is not.
        let (normalise, weights) = match (mode, fusion) {
            (RetrievalMode::Hybrid, Fusion::MinMax { dense, keyword }) => {
                (fusion::Normalise::MinMax, (dense, keyword))
            }
            (RetrievalMode::Hybrid, Fusion::Dbsf { dense, keyword }) => {
                (fusion::Normalise::Dbsf, (dense, keyword))
            }
            _ => {
                return Box::pin(
                    self.search_in_milvus(collection, tenant, query, mode, limit, fusion),
                )
                .await;
            }
        };
        let list =
            |mode| Box::pin(self.search_in_milvus(collection, tenant, query, mode, limit, fusion));
        let (dense, keyword) =
            tokio::join!(list(RetrievalMode::Dense), list(RetrievalMode::Keyword));
        Ok(fusion::fuse(dense?, keyword?, normalise, weights, limit))
    }

    async fn search_in_milvus(
        &self,
        collection: &str,
        tenant: &str,
        query: Query<'_>,
        mode: RetrievalMode,
        limit: usize,
        fusion: Fusion,
    ) -> Result<Vec<Hit>, StoreError> {
        let filter = format!("{FIELD_TENANT} == {}", literal(tenant));
        let output = [
            FIELD_DOC,
            FIELD_CHUNK,
            FIELD_TEXT,
            FIELD_SOURCE,
            FIELD_METADATA,
        ];
        let dense_params = HashMap::from([("ef".to_owned(), (limit.max(16) * 4).to_string())]);
        let response = match mode {
            RetrievalMode::Dense | RetrievalMode::Keyword => {
                let builder = SearchRequest::builder()
                    .collection_name(collection)
                    .filter(filter)
                    .output_fields(output)
                    .limit(limit as i64)
                    .consistency_level(self.consistency);
                let request = if mode == RetrievalMode::Dense {
                    builder
                        .vector_field(FIELD_VECTOR)
                        .vectors(SearchVectors::Float(vec![query.vector.to_vec()]))
                        .extra_params(dense_params)
                } else {
                    builder
                        .vector_field(FIELD_SPARSE)
                        .vectors(SearchVectors::EmbeddedText(vec![
                            identifiers::keyword_form(query.text),
                        ]))
                        .metric_type(MetricType::Bm25)
                }
                .build()
                .map_err(failed)?;
                self.loaded(collection, || self.client_search(request.clone()))
                    .await?
            }
            RetrievalMode::Hybrid => {
                let dense = SubSearchRequest::builder()
                    .vector_field(FIELD_VECTOR)
                    .vectors(SearchVectors::Float(vec![query.vector.to_vec()]))
                    .filter(filter.clone())
                    .limit(limit as i64)
                    .metric_type(MetricType::Ip)
                    .extra_params(dense_params)
                    .build()
                    .map_err(failed)?;
                let keyword = SubSearchRequest::builder()
                    .vector_field(FIELD_SPARSE)
                    .vectors(SearchVectors::EmbeddedText(vec![
                        identifiers::keyword_form(query.text),
                    ]))
                    .filter(filter)
                    .limit(limit as i64)
                    .metric_type(MetricType::Bm25)
                    .build()
                    .map_err(failed)?;
                let builder = HybridSearchRequest::builder()
                    .collection_name(collection)
                    .sub_requests(vec![dense, keyword])
                    .output_fields(output)
                    .limit(limit as i64)
                    .consistency_level(self.consistency);
                let request = match fusion {
                    Fusion::Weighted { dense, keyword } => {
                        builder.rerank(WeightedRerank::new().weights(vec![dense, keyword]))
                    }
                    Fusion::Rrf { k } => builder.rerank(RRFRerank::new().k(i64::from(k))),
                    // Fused by Warden (see `search_mode`); never sent here.
                    Fusion::MinMax { .. } | Fusion::Dbsf { .. } => {
                        builder.rerank(RRFRerank::new().k(60))
                    }
                }
                .build()
                .map_err(failed)?;
                self.loaded(collection, || self.client_hybrid_search(request.clone()))
                    .await?
            }
        };
        let mut hits = Vec::new();
        for result in response.results() {
            let strings = |name: &str| match result.get_output_field(name) {
                Some(FieldData::VarChar { values, .. }) => values.clone(),
                _ => Vec::new(),
            };
            let chunks = match result.get_output_field(FIELD_CHUNK) {
                Some(FieldData::Int64 { values, .. }) => values.clone(),
                _ => Vec::new(),
            };
            let metadata = match result.get_output_field(FIELD_METADATA) {
                Some(FieldData::Json { values, .. }) => values.clone(),
                _ => Vec::new(),
            };
            let (docs, texts, sources) = (
                strings(FIELD_DOC),
                strings(FIELD_TEXT),
                strings(FIELD_SOURCE),
            );
            for (i, score) in result.get_scores().iter().enumerate() {
                let score = match mode {
                    RetrievalMode::Keyword => score.abs(),
                    _ => *score,
                };
                hits.push(Hit {
                    doc_id: docs.get(i).cloned().unwrap_or_default(),
                    chunk_index: chunks.get(i).copied().unwrap_or_default(),
                    text: texts.get(i).cloned().unwrap_or_default(),
                    source: sources.get(i).cloned().unwrap_or_default(),
                    heading: metadata
                        .get(i)
                        .and_then(|m| m.get("heading"))
                        .and_then(|h| h.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    score,
                });
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(hits)
    }

    async fn client_search(&self, request: SearchRequest) -> Result<SearchResponse, StoreError> {
        self.limit(self.client().await?.search(request)).await
    }

    async fn client_hybrid_search(
        &self,
        request: HybridSearchRequest,
    ) -> Result<SearchResponse, StoreError> {
        self.limit(self.client().await?.hybrid_search(request))
            .await
    }

    /// Runs a search; after a server restart a collection is not loaded: load it and ask again.
    async fn loaded<T, F, Fut>(&self, collection: &str, search: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match search().await {
            Err(StoreError::Unavailable(message)) if needs_load(&message) => {
                self.load(collection).await?;
                search().await
            }
            other => other,
        }
    }
}

/// What `keywords` goes through, in the index and in queries: Milvus's standard tokenizer,
/// lower case, the stop words (matched before stemming, in the form they are listed), then
/// Milvus's English stemmer ("connections" finds "connection"). Milvus Lite 3.2.2 accepts the
/// stemmer and does not apply it; Milvus Lite 2.5.1 and Milvus ≥ 2.5 do.
fn analyzer_params() -> serde_json::Value {
    json!({
        "tokenizer": "standard",
        "filter": [
            "lowercase",
            {"type": "stop", "stop_words": STOP_WORDS},
            {"type": "stemmer", "language": "english"},
        ],
    })
}

/// Whether a failed search asks for the collection to be loaded first: Milvus Lite says
/// "… is in state 'released'; call load() …", the standalone engine "collection not loaded".
fn needs_load(message: &str) -> bool {
    let message = message.to_lowercase();
    message.contains("not loaded")
        || message.contains("released")
        || message.contains("call load()")
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_escape_their_quotes() {
        assert_eq!(literal("acme"), "\"acme\"");
        assert_eq!(
            literal("a\" or tenant != \"b"),
            "\"a\\\" or tenant != \\\"b\""
        );
        assert_eq!(literal("back\\slash"), "\"back\\\\slash\"");
    }

    #[test]
    fn collection_names_are_checked() {
        assert!(valid_collection_name("docs_2024"));
        assert!(!valid_collection_name("docs-2024"));
        assert!(!valid_collection_name("1docs"));
        assert!(!valid_collection_name("a\" or 1"));
    }
}
