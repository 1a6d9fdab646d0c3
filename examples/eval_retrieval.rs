//! Retrieval quality and cost, measured on several corpora (`make eval-retrieval`).
//!
//! scripts/eval-retrieval.sh builds each eval set's corpus (eval/sets/NAME), starts Milvus Lite,
//! ingests every corpus into its own collection with `warden ingest`, computes each set's
//! pure-BM25 baseline, then runs this program, which
//!
//! 1. asks every question of every set through `Knowledge::search_timed` — the call a chat
//!    request makes — in each mode (`dense`, `keyword`, `hybrid` as configured), with one chunk
//!    per document (`max_chunks_per_doc = 1`) and ten results, so the results rank documents,
//!    and prints hit@1, hit@3, hit@5 and MRR@10 per set and mode beside the baseline, hybrid's
//!    hit@1 by difficulty, and a summary over the sets with their mean;
//! 2. scores a grid of fusion settings on every set (the same search and selection, fusion
//!    varied) and chooses one leave-one-set-out: for each set, the setting best on the *other*
//!    sets, scored on the one left out — what a default tuned elsewhere gets on unseen text;
//! 3. with `EVAL_LATENCY_ROWS` > 0 (default 10,000), fills another collection with that many
//!    chunks of the first set's text (random unit vectors: search cost does not depend on what
//!    the vectors mean) and times the search step alone in dense and in hybrid mode.
//!
//! Arguments: one `NAME=COLLECTION,QUESTIONS,CORPUS_DIR[,BASELINE_JSON]` per set. Environment:
//! MILVUS_EVAL_URI, EMBED_MODEL_DIR and ORT_DYLIB_PATH (the script sets them); EVAL_ENGINE
//! (which Milvus, for the headings: `lite` or `lite25`); EVAL_LATENCY_ROWS; EVAL_RETRIEVAL,
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
use warden::config::{Config, Fusion, MapEnv, RetrievalMode};
use warden::knowledge::store::{ChunkRow, Query};
use warden::knowledge::{DEFAULT_TENANT, Knowledge, fusion_for, select};

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

/// The corpus document a source path names: `/…/eval-corpus/tar.1.md` → `tar.1`,
/// `/…/os.path.html` → `os.path`.
fn document_of(source: &str) -> String {
    let name = Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(source);
    name.strip_suffix(".md")
        .or_else(|| name.strip_suffix(".html"))
        .unwrap_or(name)
        .to_owned()
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

struct EvalSet {
    name: String,
    collection: String,
    questions: Vec<Question>,
    corpus: std::path::PathBuf,
    baseline: Option<Scores>,
}

impl EvalSet {
    fn parse(arg: &str) -> EvalSet {
        let (name, rest) = arg.split_once('=').unwrap_or_else(|| {
            panic!("`{arg}`: expected NAME=COLLECTION,QUESTIONS,CORPUS_DIR[,BASELINE_JSON]")
        });
        let parts: Vec<&str> = rest.split(',').collect();
        let [collection, questions, corpus, baseline @ ..] = parts.as_slice() else {
            panic!("`{arg}`: expected NAME=COLLECTION,QUESTIONS,CORPUS_DIR[,BASELINE_JSON]");
        };
        let questions = std::fs::read_to_string(questions)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let baseline = baseline.first().map(|path| {
            let value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            Scores {
                hit1: value["hit@1"].as_f64().unwrap(),
                hit3: value["hit@3"].as_f64().unwrap(),
                hit5: value["hit@5"].as_f64().unwrap(),
                mrr10: value["mrr@10"].as_f64().unwrap(),
            }
        });
        EvalSet {
            name: name.to_owned(),
            collection: (*collection).to_owned(),
            questions,
            corpus: std::path::PathBuf::from(corpus),
            baseline,
        }
    }
}

/// The rank (1-based) of the expected document among hits, if there.
fn rank_of(hits: &[warden::knowledge::store::Hit], doc: &str) -> Option<usize> {
    hits.iter()
        .position(|h| document_of(&h.source) == doc)
        .map(|i| i + 1)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        !args.is_empty(),
        "usage: eval_retrieval NAME=COLLECTION,QUESTIONS,CORPUS_DIR[,BASELINE_JSON]..."
    );
    let sets: Vec<EvalSet> = args.iter().map(|a| EvalSet::parse(a)).collect();
    let uri = required("MILVUS_EVAL_URI");
    let knowledge = knowledge(&uri);
    for set in &sets {
        let info = knowledge.collection(&set.collection, false).await.unwrap();
        assert!(
            info.full_text,
            "`{}` has no full-text index: this Milvus cannot search by keyword",
            set.collection
        );
    }

    // 1. Every set, every mode, through the chat path's own call.
    let mut summary: Vec<(String, BTreeMap<&str, Scores>)> = Vec::new();
    for set in &sets {
        println!(
            "## Retrieval quality: {}, {} questions, {} on {}, fusion {:?}",
            set.name,
            set.questions.len(),
            set.collection,
            engine(),
            knowledge.retrieval.fusion
        );
        println!();
        println!("| mode | hit@1 | hit@3 | hit@5 | MRR@10 | search p50 (ms) |");
        println!("|---|---|---|---|---|---|");
        let mut scores = BTreeMap::new();
        if let Some(baseline) = set.baseline {
            baseline.row("BM25 baseline (no Milvus)", "–");
            scores.insert("bm25", baseline);
        }
        let mut hybrid_ranks = Vec::new();
        for mode in MODES {
            let mut ranks = Vec::new();
            let mut search_ms = Vec::new();
            for question in &set.questions {
                let (found, timings) = knowledge
                    .search_timed(
                        &set.collection,
                        DEFAULT_TENANT,
                        &question.question,
                        DEPTH,
                        Some(mode),
                    )
                    .await;
                let found = found.unwrap();
                assert_eq!(found.mode, mode, "searched in another mode than asked");
                search_ms.push(timings.search.as_secs_f64() * 1000.0);
                let rank = rank_of(&found.hits, &question.doc);
                if mode == RetrievalMode::Hybrid && rank != Some(1) {
                    let documents: Vec<String> = found
                        .hits
                        .iter()
                        .take(3)
                        .map(|h| document_of(&h.source))
                        .collect();
                    eprintln!(
                        "hybrid miss: {}/{} ({}) expected {} at {:?}, got {:?}",
                        set.name, question.id, question.difficulty, question.doc, rank, documents
                    );
                }
                ranks.push(rank);
            }
            let mode_scores = Scores::of(&ranks);
            mode_scores.row(mode.as_str(), &format!("{:.2}", pct(&search_ms, 50.0)));
            scores.insert(mode.as_str(), mode_scores);
            if mode == RetrievalMode::Hybrid {
                hybrid_ranks = ranks;
            }
        }
        println!();
        println!("Hybrid hit@1 by difficulty ({}):", set.name);
        println!();
        let mut by_difficulty: BTreeMap<&str, Vec<Option<usize>>> = BTreeMap::new();
        for (question, rank) in set.questions.iter().zip(&hybrid_ranks) {
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
        println!();
        summary.push((set.name.clone(), scores));
    }
    print_summary(&summary);

    // 2. Fusion settings over every set, and the leave-one-set-out choice.
    fusion_grid(&knowledge, &sets).await;

    let rows: usize = std::env::var("EVAL_LATENCY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if rows > 0 {
        latency(&knowledge, &sets[0].questions, &sets[0].corpus, rows).await;
    }
}

/// hit@1 (MRR@10) per set and mode, the mean over the sets, and hybrid against its best half.
fn print_summary(summary: &[(String, BTreeMap<&str, Scores>)]) {
    println!("## Summary: hit@1 (MRR@10) per set");
    println!();
    println!("| set | BM25 baseline | dense | keyword | hybrid | hybrid − best half (hit@1) |");
    println!("|---|---|---|---|---|---|");
    let cell = |s: Option<&Scores>| {
        s.map_or("–".to_owned(), |s| {
            format!("{:.3} ({:.3})", s.hit1, s.mrr10)
        })
    };
    let mut means: BTreeMap<&str, Vec<Scores>> = BTreeMap::new();
    for (name, scores) in summary {
        for (mode, s) in scores {
            means.entry(mode).or_default().push(*s);
        }
        let best_half = scores["dense"].hit1.max(scores["keyword"].hit1);
        println!(
            "| {name} | {} | {} | {} | {} | {:+.3} |",
            cell(scores.get("bm25")),
            cell(scores.get("dense")),
            cell(scores.get("keyword")),
            cell(scores.get("hybrid")),
            scores["hybrid"].hit1 - best_half
        );
    }
    let mean = |mode: &str| {
        means.get(mode).map(|all| {
            let n = all.len() as f64;
            Scores {
                hit1: all.iter().map(|s| s.hit1).sum::<f64>() / n,
                hit3: all.iter().map(|s| s.hit3).sum::<f64>() / n,
                hit5: all.iter().map(|s| s.hit5).sum::<f64>() / n,
                mrr10: all.iter().map(|s| s.mrr10).sum::<f64>() / n,
            }
        })
    };
    println!(
        "| **mean** | {} | {} | {} | {} | |",
        cell(mean("bm25").as_ref()),
        cell(mean("dense").as_ref()),
        cell(mean("keyword").as_ref()),
        cell(mean("hybrid").as_ref()),
    );
    println!();
}

/// The fusion settings the grid tries, with the lexical shift each uses.
fn candidates() -> Vec<(String, Fusion, f32)> {
    let mut out: Vec<(String, Fusion, f32)> = Vec::new();
    for k in [1, 2, 5, 10, 20, 40, 60] {
        out.push((format!("rrf k={k}"), Fusion::Rrf { k }, 0.0));
    }
    for dense in [0.3_f32, 0.4, 0.5, 0.6, 0.7] {
        out.push((
            format!("weighted {dense:.1}/{:.1}", 1.0 - dense),
            Fusion::Weighted {
                dense,
                keyword: 1.0 - dense,
            },
            0.0,
        ));
    }
    for dense in [0.3_f32, 0.4, 0.5, 0.6, 0.7] {
        let keyword = 1.0 - dense;
        out.push((
            format!("min_max {dense:.1}/{keyword:.1}"),
            Fusion::MinMax { dense, keyword },
            0.0,
        ));
        out.push((
            format!("dbsf {dense:.1}/{keyword:.1}"),
            Fusion::Dbsf { dense, keyword },
            0.0,
        ));
    }
    // Per-question weighting: a question that names something exactly leans on keyword.
    for shift in [0.1_f32, 0.2, 0.3] {
        for (name, fusion) in [
            (
                "min_max",
                Fusion::MinMax {
                    dense: 0.5,
                    keyword: 0.5,
                },
            ),
            (
                "dbsf",
                Fusion::Dbsf {
                    dense: 0.5,
                    keyword: 0.5,
                },
            ),
        ] {
            out.push((
                format!("{name} 0.5/0.5, lexical shift {shift:.1}"),
                fusion,
                shift,
            ));
        }
    }
    out
}

async fn fusion_grid(knowledge: &Knowledge, sets: &[EvalSet]) {
    let candidates = candidates();
    let depth = (DEPTH * 3).max(20);
    let min_score = knowledge.retrieval.min_score(RetrievalMode::Hybrid);
    // scores[candidate][set]
    let mut scores: Vec<Vec<Scores>> = vec![Vec::new(); candidates.len()];
    for set in sets {
        let mut vectors = Vec::with_capacity(set.questions.len());
        for question in &set.questions {
            vectors.push(
                knowledge
                    .embedder
                    .embed_query(&question.question)
                    .await
                    .unwrap(),
            );
        }
        for (c, (_, fusion, shift)) in candidates.iter().enumerate() {
            let mut ranks = Vec::with_capacity(set.questions.len());
            for (question, vector) in set.questions.iter().zip(&vectors) {
                let hits = knowledge
                    .store
                    .search_mode(
                        &set.collection,
                        DEFAULT_TENANT,
                        Query {
                            vector,
                            text: &question.question,
                        },
                        RetrievalMode::Hybrid,
                        depth,
                        fusion_for(*fusion, *shift, &question.question),
                    )
                    .await
                    .unwrap();
                let hits = select(hits, min_score, 1, DEPTH);
                ranks.push(rank_of(&hits, &question.doc));
            }
            scores[c].push(Scores::of(&ranks));
        }
    }
    println!("## Fusion settings: hybrid hit@1 (MRR@10) per set");
    println!();
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    println!(
        "| fusion | {} | mean hit@1 | mean MRR@10 |",
        names.join(" | ")
    );
    println!("|---|{}---|---|", "---|".repeat(sets.len()));
    let mean_over = |c: usize, skip: Option<usize>| {
        let kept: Vec<&Scores> = scores[c]
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, s)| s)
            .collect();
        let n = kept.len().max(1) as f64;
        (
            kept.iter().map(|s| s.hit1).sum::<f64>() / n,
            kept.iter().map(|s| s.mrr10).sum::<f64>() / n,
        )
    };
    for (c, (label, _, _)) in candidates.iter().enumerate() {
        let cells: Vec<String> = scores[c]
            .iter()
            .map(|s| format!("{:.3} ({:.3})", s.hit1, s.mrr10))
            .collect();
        let (hit1, mrr) = mean_over(c, None);
        println!("| {label} | {} | {hit1:.3} | {mrr:.3} |", cells.join(" | "));
    }
    println!();
    if sets.len() < 2 {
        return;
    }
    println!(
        "## Leave one set out: the setting best on the other sets, scored on the one left out"
    );
    println!();
    println!(
        "| left out | chosen on the others | its hit@1 there | best setting there | best hit@1 there |"
    );
    println!("|---|---|---|---|---|");
    for held in 0..sets.len() {
        let best_on = |skip: Option<usize>, only: Option<usize>| {
            (0..candidates.len())
                .max_by(|&a, &b| {
                    let score = |c: usize| match only {
                        Some(i) => (scores[c][i].hit1, scores[c][i].mrr10),
                        None => mean_over(c, skip),
                    };
                    score(a)
                        .partial_cmp(&score(b))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(0)
        };
        let chosen = best_on(Some(held), None);
        let oracle = best_on(None, Some(held));
        println!(
            "| {} | {} | {:.3} | {} | {:.3} |",
            sets[held].name,
            candidates[chosen].0,
            scores[chosen][held].hit1,
            candidates[oracle].0,
            scores[oracle][held].hit1
        );
    }
    println!();
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
        .filter(|p| p.extension().is_some_and(|e| e == "md" || e == "html"))
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
    assert!(
        !pieces.is_empty(),
        "no Markdown or HTML in {}",
        dir.display()
    );
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
    // Dense, then hybrid under the configured fusion and under each other kind (Milvus's RRF in
    // one request; Warden's min–max, two requests at once), in turn, so all see the same machine.
    let configured = knowledge.retrieval.fusion;
    let mut setups: Vec<(String, RetrievalMode, Fusion)> = vec![
        ("dense".to_owned(), RetrievalMode::Dense, configured),
        (
            format!("hybrid, {configured:?} (configured)"),
            RetrievalMode::Hybrid,
            configured,
        ),
    ];
    for other in [
        Fusion::Rrf { k: 10 },
        Fusion::MinMax {
            dense: 0.5,
            keyword: 0.5,
        },
    ] {
        if other != configured {
            setups.push((format!("hybrid, {other:?}"), RetrievalMode::Hybrid, other));
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    // Warm-up first.
    for round in 0..4 {
        for (question, vector) in questions.iter().zip(&vectors) {
            for (i, (_, mode, fusion)) in setups.iter().enumerate() {
                let query = Query {
                    vector,
                    text: &question.question,
                };
                let started = Instant::now();
                store
                    .search_mode(
                        &collection,
                        DEFAULT_TENANT,
                        query,
                        *mode,
                        DEPTH * 3,
                        *fusion,
                    )
                    .await
                    .unwrap();
                if round > 0 {
                    times[i].push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    store.drop_collection(&collection).await.unwrap();
    println!();
    println!(
        "## Search latency on {rows} chunks on {} (filled and flushed in {filled:.1} s), {} searches per setup, {} results each",
        engine(),
        times[0].len(),
        DEPTH * 3
    );
    println!();
    println!("| setup | p50 (ms) | p90 (ms) | p99 (ms) | p50 over dense (ms) |");
    println!("|---|---|---|---|---|");
    let dense_p50 = pct(&times[0], 50.0);
    for ((label, _, _), values) in setups.iter().zip(&times) {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            pct(values, 50.0),
            pct(values, 90.0),
            pct(values, 99.0),
            pct(values, 50.0) - dense_p50
        );
    }
}
