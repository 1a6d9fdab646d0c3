//! Retrieval quality and cost, measured on a real corpus (`make eval-retrieval`).
//!
//! scripts/eval-retrieval.sh builds the corpus (the machine's manual pages as Markdown), starts
//! Milvus Lite, ingests the corpus with `warden ingest`, computes the pure-BM25 baseline, then
//! runs this program, which
//!
//! 1. asks every question of eval/questions.jsonl through `Knowledge::search_timed` — the call a
//!    chat request makes — in each mode (`dense`, `keyword`, `hybrid`), with one chunk per
//!    document (`max_chunks_per_doc = 1`) and ten results, so the results rank documents, and
//!    prints hit@1, hit@3, hit@5 and MRR@10 per mode beside the baseline, then hybrid's hit@1 by
//!    difficulty and the questions it misses;
//! 2. with `EVAL_LATENCY_ROWS` > 0 (default 10,000), fills another collection with that many
//!    chunks of the corpus's text (random unit vectors: search cost does not depend on what the
//!    vectors mean) and times the search step alone in dense and in hybrid mode, every question
//!    several times, the two modes in turn: the difference is what hybrid adds to retrieval (the
//!    query embedding is the same in both).
//!
//! Arguments: COLLECTION QUESTIONS CORPUS_DIR [BASELINE_JSON]. Environment: MILVUS_EVAL_URI,
//! EMBED_MODEL_DIR and ORT_DYLIB_PATH (the script sets them); EVAL_ENGINE (which Milvus, for the
//! headings: `lite` or `lite25`); EVAL_LATENCY_ROWS; EVAL_RETRIEVAL,
//! `[retrieval]` lines to try other settings (`fusion = "weighted"`, `rrf_k = 20`, …).

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::panic,
    reason = "an evaluation program: prints its tables, and any failure should stop it loudly"
)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use support::{Rng, pct};
use warden::config::{Config, MapEnv, RetrievalMode};
use warden::knowledge::{DEFAULT_TENANT, Knowledge};
use warden::store::{ChunkRow, Query};

const MODES: [RetrievalMode; 3] = [
    RetrievalMode::Dense,
    RetrievalMode::Keyword,
    RetrievalMode::Hybrid,
];
const DEPTH: usize = 10;

#[derive(serde::Deserialize)]
struct Question {
    id: String,
    question: String,
    doc: String,
    difficulty: String,
}

fn required(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (scripts/eval-retrieval.sh sets it)"))
}

/// The corpus document a source path names: `/…/eval-corpus/tar.1.md` → `tar.1`.
fn document_of(source: &str) -> String {
    let name = Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(source);
    name.strip_suffix(".md").unwrap_or(name).to_owned()
}

#[derive(Default, Clone, Copy)]
struct Scores {
    hit1: f64,
    hit3: f64,
    hit5: f64,
    mrr10: f64,
}

impl Scores {
    fn of(ranks: &[Option<usize>]) -> Scores {
        let n = ranks.len().max(1) as f64;
        let within =
            |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n;
        Scores {
            hit1: within(1),
            hit3: within(3),
            hit5: within(5),
            mrr10: ranks
                .iter()
                .map(|r| r.filter(|r| *r <= 10).map_or(0.0, |r| 1.0 / r as f64))
                .sum::<f64>()
                / n,
        }
    }

    fn row(&self, name: &str, extra: &str) {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {extra} |",
            self.hit1, self.hit3, self.hit5, self.mrr10
        );
    }
}

/// A knowledge base on the eval's Milvus, with `[retrieval]` settings from `EVAL_RETRIEVAL`
/// (TOML lines, e.g. `fusion = "weighted"`) after the eval's own.
fn knowledge(uri: &str) -> std::sync::Arc<Knowledge> {
    let settings = std::env::var("EVAL_RETRIEVAL").unwrap_or_default();
    let text = format!(
        "[backends.none]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:9\"\n[[models]]\nid = \"none\"\ntargets = [{{ backend = \"none\", model = \"none\" }}]\n[embeddings]\nmodel_dir = \"{}\"\n[milvus]\nuri = \"{uri}\"\ntimeout_ms = 60000\n[retrieval]\ntop_k = {DEPTH}\nmax_chunks_per_doc = 1\n{settings}\n",
        required("EMBED_MODEL_DIR")
    );
    let config = Config::parse(&text, Path::new("eval.toml"), &MapEnv::default()).unwrap();
    warden::AppState::new(config).unwrap().knowledge.unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, collection, questions_path, corpus_dir, rest @ ..] = args.as_slice() else {
        panic!("usage: eval_retrieval COLLECTION QUESTIONS CORPUS_DIR [BASELINE_JSON]");
    };
    let uri = required("MILVUS_EVAL_URI");
    let knowledge = knowledge(&uri);
    let questions: Vec<Question> = std::fs::read_to_string(questions_path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let info = knowledge.collection(collection, false).await.unwrap();
    assert!(
        info.full_text,
        "`{collection}` has no full-text index: this Milvus cannot search by keyword"
    );

    println!(
        "## Retrieval quality: {} questions, {collection} on {}, fusion {:?}",
        questions.len(),
        engine(),
        knowledge.retrieval.fusion
    );
    println!();
    println!("| mode | hit@1 | hit@3 | hit@5 | MRR@10 | search p50 (ms) |");
    println!("|---|---|---|---|---|---|");
    if let Some(baseline) = rest.first() {
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(baseline).unwrap()).unwrap();
        Scores {
            hit1: value["hit@1"].as_f64().unwrap(),
            hit3: value["hit@3"].as_f64().unwrap(),
            hit5: value["hit@5"].as_f64().unwrap(),
            mrr10: value["mrr@10"].as_f64().unwrap(),
        }
        .row("BM25 baseline (no Milvus)", "–");
    }
    let mut hybrid_ranks = Vec::new();
    let mut misses = Vec::new();
    for mode in MODES {
        let mut ranks = Vec::new();
        let mut search_ms = Vec::new();
        for question in &questions {
            let (found, timings) = knowledge
                .search_timed(
                    collection,
                    DEFAULT_TENANT,
                    &question.question,
                    DEPTH,
                    Some(mode),
                )
                .await;
            let found = found.unwrap();
            assert_eq!(found.mode, mode, "searched in another mode than asked");
            search_ms.push(timings.search.as_secs_f64() * 1000.0);
            let documents: Vec<String> =
                found.hits.iter().map(|h| document_of(&h.source)).collect();
            let rank = documents
                .iter()
                .position(|d| *d == question.doc)
                .map(|i| i + 1);
            if mode == RetrievalMode::Hybrid && rank != Some(1) {
                misses.push(format!(
                    "{} ({}) expected {} at {:?}, got {:?}",
                    question.id,
                    question.difficulty,
                    question.doc,
                    rank,
                    documents.iter().take(3).collect::<Vec<_>>()
                ));
            }
            ranks.push(rank);
        }
        Scores::of(&ranks).row(mode.as_str(), &format!("{:.2}", pct(&search_ms, 50.0)));
        if mode == RetrievalMode::Hybrid {
            hybrid_ranks = ranks;
        }
    }
    println!();
    println!("Hybrid hit@1 by difficulty:");
    println!();
    let mut by_difficulty: BTreeMap<&str, Vec<Option<usize>>> = BTreeMap::new();
    for (question, rank) in questions.iter().zip(&hybrid_ranks) {
        by_difficulty
            .entry(question.difficulty.as_str())
            .or_default()
            .push(*rank);
    }
    println!("| difficulty | questions | hit@1 |");
    println!("|---|---|---|");
    for (difficulty, ranks) in &by_difficulty {
        println!(
            "| {difficulty} | {} | {:.3} |",
            ranks.len(),
            Scores::of(ranks).hit1
        );
    }
    for miss in &misses {
        eprintln!("hybrid miss: {miss}");
    }

    let rows: usize = std::env::var("EVAL_LATENCY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if rows > 0 {
        latency(&knowledge, &questions, Path::new(corpus_dir), rows).await;
    }
}

/// The Milvus under test, in words.
fn engine() -> &'static str {
    match std::env::var("EVAL_ENGINE").as_deref() {
        Ok("lite25") => "Milvus Lite 2.5.1",
        _ => "Milvus Lite 3.2.2",
    }
}

/// Paragraphs of the corpus, cycled to `rows` chunks of about 150 words.
fn corpus_chunks(dir: &Path, rows: usize) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut pieces = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut current = String::new();
        for paragraph in text.split("\n\n") {
            current.push_str(paragraph);
            current.push_str("\n\n");
            if current.split_whitespace().count() >= 150 {
                pieces.push(std::mem::take(&mut current));
            }
        }
        if !current.trim().is_empty() {
            pieces.push(current);
        }
    }
    assert!(!pieces.is_empty(), "no Markdown in {}", dir.display());
    (0..rows)
        .map(|i| pieces[i % pieces.len()].clone())
        .collect()
}

async fn latency(knowledge: &Knowledge, questions: &[Question], corpus: &Path, rows: usize) {
    let store = &knowledge.store;
    let collection = format!("eval_latency_{}", std::process::id());
    let info = store
        .create(&collection, knowledge.embedder.dimension)
        .await
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let dimension = knowledge.embedder.dimension;
    let mut unit_vector = || rng.unit_vector(dimension);
    let texts = corpus_chunks(corpus, rows);
    let started = Instant::now();
    for (batch_index, batch) in texts.chunks(2_000).enumerate() {
        let chunk_rows: Vec<ChunkRow> = batch
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let row = batch_index * 2_000 + i;
                ChunkRow {
                    doc_id: format!("doc{}", row / 10),
                    chunk_index: (row % 10) as i64,
                    text: text.clone(),
                    source: format!("latency/doc{}.md", row / 10),
                    tenant: DEFAULT_TENANT.to_owned(),
                    metadata: serde_json::json!({}),
                    keywords: text.clone(),
                    vector: unit_vector(),
                }
            })
            .collect();
        store
            .insert(&collection, info.full_text, chunk_rows)
            .await
            .unwrap();
    }
    store.flush(&collection).await.unwrap();
    let filled = started.elapsed().as_secs_f64();
    let vectors: Vec<Vec<f32>> = questions.iter().map(|_| unit_vector()).collect();
    let fusion = knowledge.retrieval.fusion;
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // Warm-up, then the two modes in turn, so both see the same machine.
    for round in 0..4 {
        for (question, vector) in questions.iter().zip(&vectors) {
            for mode in [RetrievalMode::Dense, RetrievalMode::Hybrid] {
                let query = Query {
                    vector,
                    text: &question.question,
                };
                let started = Instant::now();
                store
                    .search_mode(&collection, DEFAULT_TENANT, query, mode, DEPTH * 3, fusion)
                    .await
                    .unwrap();
                if round > 0 {
                    times
                        .entry(mode.as_str())
                        .or_default()
                        .push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    store.drop_collection(&collection).await.unwrap();
    println!();
    println!(
        "## Search latency on {rows} chunks on {} (filled and flushed in {filled:.1} s), {} searches per mode, {} results each",
        engine(),
        times.get("dense").map_or(0, Vec::len),
        DEPTH * 3
    );
    println!();
    println!("| mode | p50 (ms) | p90 (ms) | p99 (ms) |");
    println!("|---|---|---|---|");
    for mode in ["dense", "hybrid"] {
        let values = &times[mode];
        println!(
            "| {mode} | {:.2} | {:.2} | {:.2} |",
            pct(values, 50.0),
            pct(values, 90.0),
            pct(values, 99.0)
        );
    }
    println!();
    println!(
        "Hybrid adds {:.2} ms p50 over dense.",
        pct(&times["hybrid"], 50.0) - pct(&times["dense"], 50.0)
    );
}
