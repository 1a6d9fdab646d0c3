//! The knowledge base: documents in, chunks found. Ingestion reads files, folders and web pages,
//! turns them into text, chunks it by the embedding model's tokens, embeds the chunks and stores
//! them in Milvus; retrieval embeds a question and searches. The CLI and the admin HTTP routes
//! both call this module.

pub mod embed;
pub mod ingest;
pub mod store;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Fusion, RetrievalConfig, RetrievalMode};
use crate::knowledge::embed::{EmbedError, Embedder};
use crate::knowledge::ingest::chunk::{ChunkConfig, chunk};
use crate::knowledge::ingest::text::{Format, extract, format_of};
use crate::knowledge::store::{ChunkRow, CollectionInfo, Hit, Query, Store, StoreError};

/// The tenant of documents and searches until API keys name one.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone, thiserror::Error)]
pub enum KnowledgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("{origin}: {message}")]
    Read { origin: String, message: String },
}

/// A document turned into text, ready to chunk.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from: an absolute path, a URL, or a name the caller gave.
    pub source: String,
    pub title: Option<String>,
    pub text: String,
}

/// What one ingestion did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IngestReport {
    pub documents: usize,
    pub chunks: usize,
    /// Documents that could not be read or stored, and why; the rest went in.
    pub failed: Vec<FailedDocument>,
    pub seconds: f64,
    pub doc_ids: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedDocument {
    pub source: String,
    pub error: String,
}

/// A document's id derives from its source, so ingesting it again replaces it.
pub fn doc_id_for(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

pub struct Knowledge {
    pub embedder: Arc<Embedder>,
    pub store: Arc<Store>,
    pub retrieval: RetrievalConfig,
    http: reqwest::Client,
    /// Collections already checked against the model's dimension (and whether they have full
    /// text), so a search describes a collection once a minute, not every time.
    checked: moka::sync::Cache<String, CollectionInfo>,
}

impl Knowledge {
    pub fn new(
        embedder: Arc<Embedder>,
        store: Arc<Store>,
        retrieval: RetrievalConfig,
    ) -> Knowledge {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "warden/",
                env!("CARGO_PKG_VERSION"),
                " (document ingestion)"
            ))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Knowledge {
            embedder,
            store,
            retrieval,
            http,
            checked: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        }
    }

    /// The collection, created for the model's dimension when `create` and missing; an existing
    /// one must match the model.
    pub async fn collection(
        &self,
        name: &str,
        create: bool,
    ) -> Result<CollectionInfo, KnowledgeError> {
        let info = match self.store.check(name, self.embedder.dimension).await {
            Err(StoreError::NoCollection(_)) if create => {
                self.store.create(name, self.embedder.dimension).await?
            }
            other => other?,
        };
        self.checked.insert(name.to_owned(), info.clone());
        Ok(info)
    }

    /// The collection's description, checked against the model, from the cache when fresh.
    async fn checked(&self, name: &str) -> Result<CollectionInfo, StoreError> {
        if let Some(info) = self.checked.get(name) {
            return Ok(info);
        }
        let info = self.store.check(name, self.embedder.dimension).await?;
        self.checked.insert(name.to_owned(), info.clone());
        Ok(info)
    }

    /// What is embedded and indexed for a chunk: its text, after the document's title and the
    /// chunk's heading path, so a chunk deep in a section still says what it is about. When
    /// that would not fit the model's input, the text alone (never a truncated text).
    fn indexed_text(&self, title: Option<&str>, heading: &[String], text: &str) -> String {
        let mut path: Vec<&str> = Vec::new();
        if let Some(title) = title.map(str::trim).filter(|t| !t.is_empty()) {
            path.push(title);
        }
        for part in heading {
            // The title is usually the first heading too; say it once.
            if path.last() != Some(&part.as_str()) && !part.trim().is_empty() {
                path.push(part);
            }
        }
        if path.is_empty() {
            return text.to_owned();
        }
        let prefixed = format!("{}\n{text}", path.join(" › "));
        if self.embedder.count_tokens_untruncated(&prefixed) > self.embedder.max_length {
            text.to_owned()
        } else {
            prefixed
        }
    }

    /// Chunks, embeds and stores one document, replacing an earlier version of it.
    pub async fn ingest(
        &self,
        collection: &str,
        tenant: &str,
        document: &Document,
    ) -> Result<usize, KnowledgeError> {
        let doc_id = doc_id_for(&document.source);
        let info = self.checked(collection).await?;
        let config = ChunkConfig {
            max_tokens: self.retrieval.chunk_tokens,
            overlap_tokens: self.retrieval.chunk_overlap_tokens,
        };
        let embedder = &self.embedder;
        let count = |text: &str| embedder.count_tokens_untruncated(text);
        let chunks = chunk(&document.text, &config, &count);
        let indexed: Vec<String> = chunks
            .iter()
            .map(|c| self.indexed_text(document.title.as_deref(), &c.heading, &c.text))
            .collect();
        let vectors = if indexed.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed_passages(&indexed).await?
        };
        let rows: Vec<ChunkRow> = chunks
            .into_iter()
            .zip(indexed)
            .zip(vectors)
            .map(|((c, keywords), vector)| ChunkRow {
                doc_id: doc_id.clone(),
                chunk_index: c.index as i64,
                metadata: serde_json::json!({
                    "title": document.title,
                    "heading": c.heading.join(" › "),
                }),
                text: c.text,
                source: document.source.clone(),
                tenant: tenant.to_owned(),
                keywords,
                vector,
            })
            .collect();
        self.store
            .clear_document(collection, tenant, &doc_id)
            .await?;
        Ok(self.store.insert(collection, info.full_text, rows).await?)
    }

    /// Reads every source (files, folders recursively, http(s) URLs) and ingests what it can;
    /// `progress` is told of each document as it is done.
    pub async fn ingest_sources(
        &self,
        collection: &str,
        tenant: &str,
        sources: &[String],
        mut progress: impl FnMut(usize, usize, &str),
    ) -> IngestReport {
        let started = Instant::now();
        let mut report = IngestReport::default();
        let mut targets = Vec::new();
        for source in sources {
            if is_url(source) {
                targets.push(Target::Url(source.clone()));
            } else {
                match files_under(Path::new(source)) {
                    Ok(files) if files.is_empty() => report.failed.push(FailedDocument {
                        source: source.clone(),
                        error: "no .txt, .md or .html files there".to_owned(),
                    }),
                    Ok(files) => targets.extend(files.into_iter().map(Target::File)),
                    Err(error) => report.failed.push(FailedDocument {
                        source: source.clone(),
                        error,
                    }),
                }
            }
        }
        let total = targets.len();
        for (i, target) in targets.into_iter().enumerate() {
            let name = target.name();
            let result = match self.read(&target).await {
                Ok(document) => self
                    .ingest(collection, tenant, &document)
                    .await
                    .map(|chunks| (chunks, doc_id_for(&document.source)))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok((chunks, doc_id)) => {
                    report.documents += 1;
                    report.chunks += chunks;
                    report.doc_ids.push(doc_id);
                }
                Err(error) => {
                    tracing::warn!(source = %name, %error, "document skipped");
                    report.failed.push(FailedDocument {
                        source: name.clone(),
                        error,
                    });
                }
            }
            progress(i + 1, total, &name);
        }
        if report.documents > 0
            && let Err(error) = self.store.flush(collection).await
        {
            tracing::warn!(%error, collection, "flush after ingestion failed; searches stay correct, only slower");
        }
        report.seconds = started.elapsed().as_secs_f64();
        report
    }

    async fn read(&self, target: &Target) -> Result<Document, KnowledgeError> {
        match target {
            Target::File(path) => read_file(path, self.retrieval.max_document_bytes),
            Target::Url(url) => self.fetch(url).await,
        }
    }

    /// Fetches a web page and turns it into text.
    pub async fn fetch(&self, url: &str) -> Result<Document, KnowledgeError> {
        let failed = |message: String| KnowledgeError::Read {
            origin: url.to_owned(),
            message,
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| failed(crate::backends::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status().as_u16())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let format = format_of(url, content_type.as_deref())
            .or_else(|| content_type.is_none().then_some(Format::Html))
            .ok_or_else(|| {
                failed(format!(
                    "unsupported content type {}",
                    content_type.unwrap_or_default()
                ))
            })?;
        let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if bytes.len() > self.retrieval.max_document_bytes {
            return Err(failed(format!(
                "larger than {} bytes",
                self.retrieval.max_document_bytes
            )));
        }
        let extracted = extract(&String::from_utf8_lossy(&bytes), format);
        Ok(Document {
            source: url.to_owned(),
            title: extracted.title,
            text: extracted.text,
        })
    }

    /// The best chunks for `query` in a collection, for one tenant, in the collection's mode.
    pub async fn search(
        &self,
        collection: &str,
        tenant: &str,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<Hit>, KnowledgeError> {
        self.search_timed(collection, tenant, query, top_k, None)
            .await
            .0
            .map(|found| found.hits)
    }

    /// The best `top_k` chunks for `query` in a collection, for one tenant, searched in `mode`
    /// (else the collection's configured mode), with the time spent embedding and searching.
    ///
    /// The collection is checked against the model (once a minute) so a mismatch is a clear
    /// error, not a failed search; the check and the query's embedding run at the same time.
    /// Keyword and hybrid on a collection (or server) without full text are served dense, and
    /// the answer says so. Hits below the mode's `min_score` go, then chunks past
    /// `max_chunks_per_doc` of one document (searching deeper to make up for them).
    pub async fn search_timed(
        &self,
        collection: &str,
        tenant: &str,
        query: &str,
        top_k: usize,
        mode: Option<RetrievalMode>,
    ) -> (Result<Found, KnowledgeError>, Timings) {
        let mut timings = Timings::default();
        let started = std::time::Instant::now();
        let requested = mode.unwrap_or_else(|| self.retrieval.mode_of(collection));
        let embed = async {
            if requested == RetrievalMode::Keyword {
                return (Ok(Arc::new(Vec::new())), std::time::Duration::ZERO);
            }
            let vector = self.embedder.embed_query(query).await;
            (vector, started.elapsed())
        };
        let (checked, (vector, embed_time)) = tokio::join!(self.checked(collection), embed);
        timings.embed = embed_time;
        let info = match checked {
            Ok(info) => info,
            Err(err) => return (Err(err.into()), timings),
        };
        let mut vector = match vector {
            Ok(vector) => vector,
            Err(err) => return (Err(err.into()), timings),
        };
        let mode = effective_mode(requested, info.full_text);
        if vector.is_empty() && mode != RetrievalMode::Keyword {
            // Asked for keyword search on a dense-only collection: embed after all.
            let embedded = std::time::Instant::now();
            match self.embedder.embed_query(query).await {
                Ok(embedding) => vector = embedding,
                Err(err) => return (Err(err.into()), timings),
            }
            timings.embed += embedded.elapsed();
        }
        let per_doc = self.retrieval.max_chunks_per_doc;
        // Fused lists are better the deeper each one goes; collapsing needs spare hits.
        let depth = match (mode, per_doc) {
            (RetrievalMode::Hybrid, _) | (_, 1..) => (top_k * 3).max(20),
            _ => top_k,
        };
        let searched = std::time::Instant::now();
        let hits = self
            .store
            .search_mode(
                collection,
                tenant,
                Query {
                    vector: &vector,
                    text: query,
                },
                mode,
                depth,
                fusion_for(self.retrieval.fusion, self.retrieval.lexical_shift, query),
            )
            .await;
        timings.search = searched.elapsed();
        let hits = match hits {
            Ok(hits) => hits,
            Err(err) => return (Err(err.into()), timings),
        };
        let hits = select(hits, self.retrieval.min_score(mode), per_doc, top_k);
        (Ok(Found { hits, mode }), timings)
    }
}

/// The fusion for one question: where it names something exactly (a quoted string, an
/// identifier, a flag, a version), `shift` of the dense list's weight goes to the keyword list,
/// for the score-weighted kinds. RRF has no weights and is left as it is.
pub fn fusion_for(fusion: Fusion, shift: f32, question: &str) -> Fusion {
    if shift <= 0.0 || !crate::knowledge::store::identifiers::names_an_identifier(question) {
        return fusion;
    }
    let moved = |dense: f32, keyword: f32| {
        let shift = shift.min(dense);
        (dense - shift, keyword + shift)
    };
    match fusion {
        Fusion::Rrf { .. } => fusion,
        Fusion::Weighted { dense, keyword } => {
            let (dense, keyword) = moved(dense, keyword);
            Fusion::Weighted { dense, keyword }
        }
        Fusion::MinMax { dense, keyword } => {
            let (dense, keyword) = moved(dense, keyword);
            Fusion::MinMax { dense, keyword }
        }
        Fusion::Dbsf { dense, keyword } => {
            let (dense, keyword) = moved(dense, keyword);
            Fusion::Dbsf { dense, keyword }
        }
    }
}

/// What a search found, and how it searched.
#[derive(Debug, Clone)]
pub struct Found {
    pub hits: Vec<Hit>,
    /// The mode used: the one asked for, or dense where the collection has no full text.
    pub mode: RetrievalMode,
}

/// The mode a search runs in: the one asked for, or dense where the collection (or the server)
/// has no full text.
pub fn effective_mode(requested: RetrievalMode, full_text: bool) -> RetrievalMode {
    if full_text {
        requested
    } else {
        RetrievalMode::Dense
    }
}

/// The best `top_k` of `hits` (best first) at or above `min_score`, at most `per_doc` of one
/// document (0: any number).
pub fn select(hits: Vec<Hit>, min_score: f32, per_doc: usize, top_k: usize) -> Vec<Hit> {
    let mut taken: std::collections::HashMap<String, usize> = Default::default();
    let mut kept = Vec::with_capacity(top_k);
    for hit in hits {
        if kept.len() == top_k {
            break;
        }
        if hit.score < min_score {
            continue;
        }
        if per_doc > 0 {
            let count = taken.entry(hit.doc_id.clone()).or_default();
            if *count == per_doc {
                continue;
            }
            *count += 1;
        }
        kept.push(hit);
    }
    kept
}

/// Where the time of one search went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub embed: std::time::Duration,
    pub search: std::time::Duration,
}

enum Target {
    File(PathBuf),
    Url(String),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::File(path) => path.display().to_string(),
            Target::Url(url) => url.clone(),
        }
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// A file as a document; its source is its absolute path, so the id does not depend on the
/// directory ingestion ran from.
pub fn read_file(path: &Path, max_bytes: usize) -> Result<Document, KnowledgeError> {
    let source = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string();
    let failed = |message: String| KnowledgeError::Read {
        origin: source.clone(),
        message,
    };
    let format = format_of(&source, None)
        .ok_or_else(|| failed("not a .txt, .md or .html file".to_owned()))?;
    let metadata = std::fs::metadata(path).map_err(|e| failed(e.to_string()))?;
    if metadata.len() as usize > max_bytes {
        return Err(failed(format!("larger than {max_bytes} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| failed("not UTF-8 text".to_owned()))?;
    let extracted = extract(&text, format);
    Ok(Document {
        source,
        title: extracted.title,
        text: extracted.text,
    })
}

/// The supported files at `path`: itself, or every one below it (sorted, hidden ones skipped).
fn files_under(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if format_of(&path.display().to_string(), None).is_some() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_that_names_an_identifier_leans_on_keyword() {
        let fusion = Fusion::MinMax {
            dense: 0.5,
            keyword: 0.5,
        };
        assert_eq!(
            fusion_for(fusion, 0.2, "What does PyObject_GetAttrString return?"),
            Fusion::MinMax {
                dense: 0.3,
                keyword: 0.7
            }
        );
        assert_eq!(fusion_for(fusion, 0.2, "How do I sort a list?"), fusion);
        assert_eq!(fusion_for(fusion, 0.0, "`x`"), fusion);
        let rrf = Fusion::Rrf { k: 10 };
        assert_eq!(fusion_for(rrf, 0.2, "`x`"), rrf);
        // Never below zero.
        assert_eq!(
            fusion_for(
                Fusion::Dbsf {
                    dense: 0.1,
                    keyword: 0.9
                },
                0.3,
                "`x`"
            ),
            Fusion::Dbsf {
                dense: 0.0,
                keyword: 1.0
            }
        );
    }

    fn hit(doc: &str, chunk: i64, score: f32) -> Hit {
        Hit {
            doc_id: doc.to_owned(),
            chunk_index: chunk,
            text: String::new(),
            source: String::new(),
            heading: String::new(),
            score,
        }
    }

    #[test]
    fn selection_keeps_the_best_above_the_threshold_and_few_per_document() {
        let hits = vec![
            hit("a", 0, 0.9),
            hit("a", 1, 0.8),
            hit("a", 2, 0.7),
            hit("b", 0, 0.6),
            hit("c", 0, 0.5),
            hit("d", 0, 0.1),
        ];
        let picked = |min, per_doc, top_k| -> Vec<(String, i64)> {
            select(hits.clone(), min, per_doc, top_k)
                .into_iter()
                .map(|h| (h.doc_id, h.chunk_index))
                .collect()
        };
        let pairs = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
            list.iter().map(|(d, c)| (d.to_string(), *c)).collect()
        };
        assert_eq!(picked(0.0, 0, 3), pairs(&[("a", 0), ("a", 1), ("a", 2)]));
        assert_eq!(picked(0.0, 1, 3), pairs(&[("a", 0), ("b", 0), ("c", 0)]));
        assert_eq!(
            picked(0.0, 2, 4),
            pairs(&[("a", 0), ("a", 1), ("b", 0), ("c", 0)])
        );
        assert_eq!(picked(0.55, 1, 10), pairs(&[("a", 0), ("b", 0)]));
    }

    #[test]
    fn document_ids_follow_the_source() {
        assert_eq!(doc_id_for("/docs/a.md"), doc_id_for("/docs/a.md"));
        assert_ne!(doc_id_for("/docs/a.md"), doc_id_for("/docs/b.md"));
        assert_eq!(doc_id_for("x").len(), 24);
    }

    #[test]
    fn folders_are_walked_for_supported_files() {
        let dir = std::env::temp_dir().join(format!("warden-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub/.hidden")).unwrap();
        for name in ["a.md", "b.txt", "c.pdf", "sub/d.html", "sub/.hidden/e.txt"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let files: Vec<String> = files_under(&dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(files, vec!["a.md", "b.txt", "sub/d.html"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
