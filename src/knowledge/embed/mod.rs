//! In-process sentence embeddings: an ONNX model (all-MiniLM-L6-v2 by default, any BERT-like
//! sentence model by config) run by ONNX Runtime through `fastembed`, loaded from a local folder.
//!
//! Inference runs on one dedicated thread, off the async runtime, fed by a bounded queue:
//! requests that arrive while a batch runs are gathered into the next batch (micro-batching),
//! so a burst of embeddings never stalls streaming. Query embeddings are cached.

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::config::{EmbeddingsConfig, PoolingKind};

/// Jobs waiting for the inference thread; past this, callers wait (backpressure).
const QUEUE: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model: {0}")]
    Load(String),
    #[error("embedding failed: {0}")]
    Inference(String),
    #[error("the embedding worker is not running")]
    Stopped,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

pub struct Embedder {
    jobs: mpsc::Sender<Job>,
    pub model_id: String,
    pub dimension: usize,
    pub max_length: usize,
    query_prefix: String,
    passage_prefix: String,
    tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer without truncation, made once: counting is on the request path
    /// (token budgets, rate limits), where a clone per call would copy the whole vocabulary.
    untruncated: tokenizers::Tokenizer,
    cache: moka::sync::Cache<String, Arc<Vec<f32>>>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(name);
    std::fs::read(&path)
        .map_err(|err| EmbedError::Load(format!("cannot read {}: {err}", path.display())))
}

/// Where ONNX Runtime is: the configured path, else `ORT_DYLIB_PATH`.
fn runtime_path(config: &EmbeddingsConfig) -> Result<PathBuf, EmbedError> {
    let path = config
        .onnxruntime
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or_else(|| {
            EmbedError::Load(
                "no ONNX Runtime library: set embeddings.onnxruntime or ORT_DYLIB_PATH (make run fetches one)"
                    .to_owned(),
            )
        })?;
    if !path.is_file() {
        return Err(EmbedError::Load(format!(
            "ONNX Runtime library {} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

/// ONNX Runtime is one library and one environment per process: made once, shared by every
/// model loaded after; a second, different library is refused rather than mixed in.
fn runtime(path: &Path) -> Result<ort::environment::Environment, EmbedError> {
    static RUNTIME: std::sync::OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
        std::sync::OnceLock::new();
    let loaded = RUNTIME.get_or_init(|| {
        let environment = ort::init_from(path)
            .map_err(|err| format!("cannot load ONNX Runtime from {}: {err}", path.display()))?
            .with_telemetry(false)
            .build()
            .map_err(|err| format!("ONNX Runtime environment: {err}"))?;
        Ok((path.to_owned(), environment))
    });
    match loaded {
        Ok((first, environment)) if first == path => Ok(environment.clone()),
        Ok((first, _)) => Err(EmbedError::Load(format!(
            "ONNX Runtime is already loaded from {}; one process uses one library",
            first.display()
        ))),
        Err(message) => Err(EmbedError::Load(message.clone())),
    }
}

impl Embedder {
    /// Loads the model and starts the inference thread. A device that cannot be used (CUDA
    /// without a GPU or without the CUDA provider) is an error, never a silent fall-back.
    pub fn load(config: &EmbeddingsConfig) -> Result<Embedder, EmbedError> {
        let environment = runtime(&runtime_path(config)?)?;
        let dir = &config.model_dir;
        let tokenizer_files = TokenizerFiles {
            tokenizer_file: read(dir, "tokenizer.json")?,
            config_file: read(dir, "config.json")?,
            special_tokens_map_file: read(dir, "special_tokens_map.json")?,
            tokenizer_config_file: read(dir, "tokenizer_config.json")?,
        };
        let pooling = match config.pooling {
            PoolingKind::Mean => Pooling::Mean,
            PoolingKind::Cls => Pooling::Cls,
        };
        let model = UserDefinedEmbeddingModel::new(read(dir, "model.onnx")?, tokenizer_files)
            .with_pooling(pooling);
        let mut options = InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_max_length(config.max_length)
            .with_intra_threads(config.threads);
        if config.cuda {
            options = options
                .with_execution_providers(vec![ort::ep::CUDA::default().build().error_on_failure()])
                .with_disable_cpu_fallback(false);
        }
        let mut model = TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|err| EmbedError::Load(format!("{}: {err}", dir.display())))?;
        let probe = model
            .embed(vec!["dimension probe"], None)
            .map_err(|err| EmbedError::Load(format!("test inference failed: {err}")))?;
        let dimension = probe.first().map(Vec::len).unwrap_or(0);
        if dimension != config.dimension {
            return Err(EmbedError::Load(format!(
                "the model in {} makes vectors of {dimension} dimensions, the config says {}",
                dir.display(),
                config.dimension
            )));
        }
        let tokenizer = model.tokenizer.clone();
        let mut untruncated = tokenizer.clone();
        let _ = untruncated.with_truncation(None);
        let (jobs, queue) = mpsc::channel(QUEUE);
        let batch_size = config.batch_size;
        std::thread::Builder::new()
            .name("warden-embed".to_owned())
            .spawn(move || run_worker(model, queue, batch_size))
            .map_err(|err| EmbedError::Load(format!("cannot start the embedding thread: {err}")))?;
        Ok(Embedder {
            jobs,
            model_id: config.model_id.clone(),
            dimension,
            max_length: config.max_length,
            query_prefix: config.query_prefix.clone(),
            passage_prefix: config.passage_prefix.clone(),
            tokenizer,
            untruncated,
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .build(),
        })
    }

    async fn run(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { texts, reply })
            .await
            .map_err(|_| EmbedError::Stopped)?;
        answer.await.map_err(|_| EmbedError::Stopped)?
    }

    /// The embedding of a search query (with the model's query prefix), cached.
    pub async fn embed_query(&self, text: &str) -> Result<Arc<Vec<f32>>, EmbedError> {
        let input = format!("{}{text}", self.query_prefix);
        if let Some(hit) = self.cache.get(&input) {
            return Ok(hit);
        }
        let vector = Arc::new(
            self.run(vec![input.clone()])
                .await?
                .pop()
                .ok_or_else(|| EmbedError::Inference("no vector returned".to_owned()))?,
        );
        self.cache.insert(input, vector.clone());
        Ok(vector)
    }

    /// Embeddings of document passages (with the model's passage prefix), in order.
    pub async fn embed_passages(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inputs = texts
            .iter()
            .map(|t| format!("{}{t}", self.passage_prefix))
            .collect();
        self.run(inputs).await
    }

    /// Embeddings of texts as they are (the `/v1/embeddings` endpoint).
    pub async fn embed_raw(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.run(texts).await
    }

    /// Tokens of `text` as the model counts them, special tokens included.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, true)
            .map(|encoding| encoding.get_ids().len())
            .unwrap_or_else(|_| text.split_whitespace().count())
    }

    /// Tokens of `text` without truncation, for chunking and budgets.
    pub fn count_tokens_untruncated(&self, text: &str) -> usize {
        self.untruncated
            .encode(text, true)
            .map(|encoding| encoding.get_ids().len())
            .unwrap_or_else(|_| text.split_whitespace().count())
    }
}

/// The inference thread: one batch at a time, each gathering every job waiting in the queue
/// (up to `batch_size` texts), so concurrent requests share a model run.
fn run_worker(mut model: TextEmbedding, mut queue: mpsc::Receiver<Job>, batch_size: usize) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        let mut count = jobs[0].texts.len();
        while count < batch_size {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let result = model
            .embed(texts, Some(batch_size))
            .map_err(|err| EmbedError::Inference(err.to_string()));
        match result {
            Ok(mut vectors) => {
                // Hand each job its own slice of the batch, in order.
                for job in jobs {
                    let rest = vectors.split_off(job.texts.len().min(vectors.len()));
                    let mine = std::mem::replace(&mut vectors, rest);
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(err) => {
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
