//! The grounding path, measured piece by piece and end to end.
//!
//! `make bench-rag` (scripts/bench-rag.sh) starts Milvus Lite and finds the embedding model, then
//! runs this program, which prints markdown tables of:
//!
//! 1. single-query embedding latency (`Embedder::embed_query`, one at a time, every question
//!    different), and the same questions again from the query cache;
//! 2. embeddings per second at batch 32 (`embed_passages`, ~40-word passages of real text);
//! 3. Milvus: insert rows/s of 100,000 random unit vectors, then search latency (top 4,
//!    tenant filter) with real query embeddings, as inserted and after a flush; the collection
//!    is dropped after;
//! 4. ingestion chunks/s end to end (`Knowledge::ingest`: chunk, embed, delete, insert) on the
//!    machine's licence and copyright texts;
//! 5. time to first byte of streaming chat through the release `warden` binary in front of a fake
//!    upstream (this program with `upstream PORT`), without and with retrieval from the collection
//!    of step 4, requests sent to the two in turn: the difference is what grounding adds to time
//!    to first token. In the same turns this program embeds and searches too, so the added time
//!    can be set against embed + search measured under the same conditions.
//!
//! Run with `BENCH_RAG_MILVUS=standalone scripts/bench-rag.sh` for the Milvus 2.3.5 engine.
//!
//! Environment: MILVUS_BENCH_URI, EMBED_TEST_MODEL_DIR and ORT_DYLIB_PATH (the script sets them);
//! options BENCH_RAG_QUERIES (default 1000), BENCH_RAG_BATCH_SECONDS (10), BENCH_RAG_ROWS
//! (100000), BENCH_RAG_SEARCH_SECONDS (40, the cap of each search run of step 3: Milvus Lite
//! searches 100,000 rows in hundreds of milliseconds), BENCH_RAG_DOCS (300), BENCH_RAG_INGEST_KB
//! (320), BENCH_RAG_REQUESTS (200).

#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a benchmark program: prints its tables, and any failure should stop it loudly"
)]

mod support;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Process, Rng, free_port, pct};
use warden::config::{Config, MapEnv};
use warden::knowledge::store::ChunkRow;
use warden::knowledge::{DEFAULT_TENANT, Document};

const DIMENSION: usize = 384;
const INSERT_CALL_ROWS: usize = 5_000;

fn main() {
    support::bench_main(upstream, orchestrate);
}

// ---------------------------------------------------------------- the fake upstream process

/// Requests whose prompt carried retrieved context (the template's first words).
static GROUNDED: AtomicUsize = AtomicUsize::new(0);

async fn upstream(port: u16) {
    let app = Router::new()
        .route("/v1/chat/completions", post(upstream_chat))
        .route(
            "/v1/models",
            get(|| async { "{\"object\":\"list\",\"data\":[]}" }),
        )
        .route(
            "/grounded",
            get(|| async { GROUNDED.load(Ordering::Relaxed).to_string() }),
        );
    support::serve_on(port, app).await;
}

/// A short stream, first chunk at once: time to first byte is Warden's work plus one hop.
async fn upstream_chat(body: Bytes) -> Response {
    if String::from_utf8_lossy(&body).contains("We have provided context information below") {
        GROUNDED.fetch_add(1, Ordering::Relaxed);
    }
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let frames = [
        chunk("{\"role\":\"assistant\",\"content\":\"The\"}", "null"),
        chunk("{\"content\":\" answer.\"}", "null"),
        chunk("{}", "\"stop\"") + "data: [DONE]\n\n",
    ]
    .map(|frame| Ok::<_, std::io::Error>(Bytes::from(frame)));
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(futures_util::stream::iter(frames)),
    )
        .into_response()
}

// ---------------------------------------------------------------- inputs

/// The `i`-th of 12,000 different short questions (neighbours differ in every part).
fn question(i: usize) -> String {
    const ASKS: [&str; 10] = [
        "How do I",
        "Why can't I",
        "What happens when I",
        "Is it safe to",
        "When should I",
        "Who is allowed to",
        "Can I",
        "How long does it take to",
        "What does it cost to",
        "Where do I go to",
    ];
    const ACTIONS: [&str; 10] = [
        "reset",
        "update",
        "return",
        "clean",
        "install",
        "replace",
        "register",
        "repair",
        "configure",
        "redistribute",
    ];
    const THINGS: [&str; 10] = [
        "my router",
        "an invoice",
        "the heater",
        "a tomato plant",
        "modified source code",
        "my bicycle",
        "the password",
        "a dishwasher",
        "the library",
        "the warranty",
    ];
    const CONTEXTS: [&str; 12] = [
        "at home",
        "abroad",
        "after a power cut",
        "on a weekend",
        "without the manual",
        "for a small business",
        "in winter",
        "under the GPL",
        "before the deadline",
        "with a broken screen",
        "for my parents",
        "in under an hour",
    ];
    const ALL: usize = 10 * 10 * 10 * 12;
    assert!(i < ALL, "only {ALL} different questions");
    let k = i * 7919 % ALL; // 7919 is prime to 12,000: a permutation
    format!(
        "{} {} {} {}?",
        ASKS[k % 10],
        ACTIONS[k / 10 % 10],
        THINGS[k / 100 % 10],
        CONTEXTS[k / 1000]
    )
}

/// Real English text: the machine's licences and package copyright files (distinct texts of at
/// most 8 KiB, in path order, up to `max_docs` and `max_bytes` in all); generated paragraphs when
/// there are none.
fn corpus(max_docs: usize, max_bytes: usize) -> Vec<Document> {
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/share/common-licenses") {
        let mut found: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        found.sort();
        paths.extend(found);
    }
    if let Ok(entries) = std::fs::read_dir("/usr/share/doc") {
        let mut found: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("copyright")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        paths.extend(found);
    }
    let mut seen = std::collections::HashSet::new();
    let mut documents = Vec::new();
    let mut bytes = 0;
    for path in paths {
        if documents.len() >= max_docs || bytes >= max_bytes {
            break;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.trim().len() < 200 || text.len() > 8192 || !seen.insert(text.clone()) {
            continue;
        }
        bytes += text.len();
        documents.push(Document {
            source: path.display().to_string(),
            title: None,
            text,
        });
    }
    if documents.is_empty() {
        for d in 0..max_docs.min(300) {
            let text = (0..6)
                .map(|s| {
                    format!(
                        "{} The answer depends on the model, the season and the paperwork, and the manual explains each step in plain words.",
                        question(d * 6 + s)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            documents.push(Document {
                source: format!("generated/{d}.txt"),
                title: None,
                text,
            });
        }
    }
    documents
}

// ---------------------------------------------------------------- helpers

async fn wait_for(url: &str, tries: usize) {
    let client = reqwest::Client::new();
    for _ in 0..tries {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make bench-rag`"))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn latency_row(name: &str, values: &[f64]) {
    println!(
        "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
        values.len(),
        pct(values, 50.0),
        pct(values, 90.0),
        pct(values, 99.0),
        pct(values, 100.0)
    );
}

fn latency_header() {
    println!("| measure (ms) | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
}

// ---------------------------------------------------------------- orchestration

async fn orchestrate() {
    let queries = env_or("BENCH_RAG_QUERIES", 1000);
    let batch_seconds = env_or("BENCH_RAG_BATCH_SECONDS", 10) as f64;
    let rows = env_or("BENCH_RAG_ROWS", 100_000);
    let search_seconds = env_or("BENCH_RAG_SEARCH_SECONDS", 40) as f64;
    let requests = env_or("BENCH_RAG_REQUESTS", 200);
    let milvus_uri = required("MILVUS_BENCH_URI");
    let model_dir = required("EMBED_TEST_MODEL_DIR");
    required("ORT_DYLIB_PATH");
    let knowledge_config = format!(
        "[embeddings]\nmodel_dir = \"{model_dir}\"\n[milvus]\nuri = \"{milvus_uri}\"\nconsistency = \"bounded\"\ntimeout_ms = 60000\n"
    );
    let text = format!(
        "[backends.b]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[models]]\nid = \"m\"\ntargets = [{{ backend = \"b\", model = \"x\" }}]\n{knowledge_config}"
    );
    let config = Config::parse(
        &text,
        std::path::Path::new("bench.toml"),
        &MapEnv::default(),
    )
    .unwrap();
    let loading = Instant::now();
    let state = warden::AppState::new(config).unwrap();
    let load_seconds = loading.elapsed().as_secs_f64();
    let embedder = state.embedder.clone().unwrap();
    let knowledge = state.knowledge.clone().unwrap();
    let store = knowledge.store.clone();
    let documents = corpus(
        env_or("BENCH_RAG_DOCS", 300),
        env_or("BENCH_RAG_INGEST_KB", 320) * 1024,
    );

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("# Warden grounding benchmark");
    println!();
    println!(
        "machine: {cores} cores, shared by Milvus, the model, warden and this client; model {} ({} dimensions, loaded in {load_seconds:.1} s), Milvus {} at {milvus_uri}",
        embedder.model_id,
        embedder.dimension,
        std::env::var("BENCH_RAG_MILVUS").unwrap_or_else(|_| "(engine not named)".to_owned())
    );

    // 1. One query at a time.
    println!();
    println!("## 1. Query embedding, one at a time ({queries} different questions)");
    println!();
    for i in 0..20 {
        embedder.embed_query(&question(11_000 + i)).await.unwrap();
    }
    let texts: Vec<String> = (0..queries).map(question).collect();
    let mut vectors = Vec::with_capacity(queries);
    let mut cold = Vec::with_capacity(queries);
    for text in &texts {
        let start = Instant::now();
        vectors.push(embedder.embed_query(text).await.unwrap());
        cold.push(ms(start));
    }
    let mut cached = Vec::with_capacity(queries);
    for text in &texts {
        let start = Instant::now();
        let _ = embedder.embed_query(text).await.unwrap();
        cached.push(ms(start));
    }
    let tokens = texts
        .iter()
        .map(|t| embedder.count_tokens(t))
        .sum::<usize>() as f64
        / queries as f64;
    latency_header();
    latency_row("embed_query, model run", &cold);
    latency_row("embed_query, cache hit", &cached);
    println!();
    println!("questions average {tokens:.1} tokens (with [CLS]/[SEP])");
    let embed_p50 = pct(&cold, 50.0);

    // 2. Batches of 32 passages.
    println!();
    println!("## 2. Passage embedding at batch 32 (~{batch_seconds:.0} s)");
    println!();
    let words: Vec<&str> = documents
        .iter()
        .flat_map(|d| d.text.split_whitespace())
        .collect();
    let passages: Vec<String> = words.chunks(40).map(|w| w.join(" ")).collect();
    let batches: Vec<Vec<String>> = passages.chunks(32).map(<[String]>::to_vec).collect();
    let batches: Vec<Vec<String>> = batches.into_iter().filter(|b| b.len() == 32).collect();
    assert!(!batches.is_empty(), "not enough text for one batch");
    embedder.embed_passages(&batches[0]).await.unwrap();
    let mut batch_ms = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < batch_seconds {
        let batch = &batches[batch_ms.len() % batches.len()];
        let start = Instant::now();
        let out = embedder.embed_passages(batch).await.unwrap();
        assert_eq!(out.len(), 32);
        batch_ms.push(ms(start));
    }
    let seconds = started.elapsed().as_secs_f64();
    // A batch is padded to its longest text: that, not the mean, sets its cost.
    let used = &batches[..batch_ms.len().min(batches.len())];
    let tokens: Vec<Vec<usize>> = used
        .iter()
        .map(|b| b.iter().map(|t| embedder.count_tokens(t)).collect())
        .collect();
    let passage_tokens = tokens.iter().flatten().sum::<usize>() as f64 / (used.len() * 32) as f64;
    let longest = tokens
        .iter()
        .map(|b| b.iter().copied().max().unwrap_or(0))
        .sum::<usize>() as f64
        / used.len() as f64;
    println!("| batches | texts | seconds | embeddings/s | batch p50 (ms) | batch p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {seconds:.2} | {:.1} | {:.1} | {:.1} |",
        batch_ms.len(),
        batch_ms.len() * 32,
        (batch_ms.len() * 32) as f64 / seconds,
        pct(&batch_ms, 50.0),
        pct(&batch_ms, 99.0)
    );
    println!();
    println!(
        "passages: 40 words of licence text, {passage_tokens:.0} tokens on average, the longest of a batch {longest:.0} on average (a batch is padded to its longest)"
    );

    // 3. Milvus: insert and search.
    println!();
    println!(
        "## 3. Milvus: {rows} chunks of random unit vectors, top-4 search with a tenant filter"
    );
    println!();
    let collection = format!("bench_rag_{}", std::process::id());
    let start = Instant::now();
    let full_text = store
        .create(&collection, DIMENSION)
        .await
        .unwrap()
        .full_text;
    let create_seconds = start.elapsed().as_secs_f64();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut insert_seconds = 0.0;
    let mut inserted = 0;
    while inserted < rows {
        let n = INSERT_CALL_ROWS.min(rows - inserted);
        let batch: Vec<ChunkRow> = (inserted..inserted + n)
            .map(|i| ChunkRow {
                doc_id: format!("doc{}", i / 10),
                chunk_index: (i % 10) as i64,
                text: format!("Chunk {i} of the synthetic corpus: a short text."),
                source: format!("bench/doc{}.txt", i / 10),
                tenant: DEFAULT_TENANT.to_owned(),
                metadata: serde_json::json!({"title": null}),
                keywords: format!("Chunk {i} of the synthetic corpus: a short text."),
                vector: rng.unit_vector(DIMENSION),
            })
            .collect();
        let start = Instant::now();
        inserted += store.insert(&collection, full_text, batch).await.unwrap();
        insert_seconds += start.elapsed().as_secs_f64();
    }
    // Milvus Lite keeps unflushed rows in a Python memtable that every search scans (Warden never
    // flushes); a flush turns them into indexed segments. Both states are measured, each capped.
    let as_inserted = searches(&store, &collection, &vectors, search_seconds).await;
    let start = Instant::now();
    flush(&milvus_uri, &collection).await;
    let flush_seconds = start.elapsed().as_secs_f64();
    let flushed = searches(&store, &collection, &vectors, search_seconds).await;
    store.drop_collection(&collection).await.unwrap();
    println!("| create + index + load (s) | rows inserted | insert seconds | rows/s | flush (s) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {create_seconds:.2} | {inserted} | {insert_seconds:.1} | {:.0} | {flush_seconds:.1} |",
        inserted as f64 / insert_seconds
    );
    println!();
    latency_header();
    latency_row("first search after the inserts", &as_inserted.first);
    latency_row("search, as inserted (no flush)", &as_inserted.ms);
    latency_row("first search after a flush", &flushed.first);
    latency_row("search, after a flush", &flushed.ms);
    println!();
    println!(
        "top 4, `tenant == \"default\"`, query vectors from section 1; each run stops at {} searches or {search_seconds:.0} s; searches with fewer than 4 hits: {}; collection dropped",
        vectors.len(),
        as_inserted.short + flushed.short
    );
    let search_p50 = pct(&flushed.ms, 50.0);

    // 4. Ingestion.
    println!();
    println!("## 4. Ingestion end to end (read text, chunk, embed, delete old, insert)");
    println!();
    let docs_collection = format!("bench_rag_docs_{}", std::process::id());
    knowledge.collection(&docs_collection, true).await.unwrap();
    let bytes: usize = documents.iter().map(|d| d.text.len()).sum();
    let mut chunks = 0;
    let start = Instant::now();
    for document in &documents {
        chunks += knowledge
            .ingest(&docs_collection, DEFAULT_TENANT, document)
            .await
            .unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("| documents | KiB | chunks | seconds | chunks/s | KiB/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {chunks} | {seconds:.1} | {:.1} | {:.1} |",
        documents.len(),
        bytes / 1024,
        chunks as f64 / seconds,
        bytes as f64 / 1024.0 / seconds
    );
    println!();
    println!(
        "text: {} (chunks of {} tokens, {} overlapping)",
        if documents[0].source.starts_with("generated/") {
            "generated paragraphs (no licence files on this machine)".to_owned()
        } else {
            "/usr/share/common-licenses/* and /usr/share/doc/*/copyright".to_owned()
        },
        knowledge.retrieval.chunk_tokens,
        knowledge.retrieval.chunk_overlap_tokens
    );
    let mut small_search_ms = Vec::new();
    for vector in vectors.iter().take(requests) {
        let start = Instant::now();
        store
            .search(&docs_collection, DEFAULT_TENANT, vector, 4, 0.0)
            .await
            .unwrap();
        small_search_ms.push(ms(start));
    }
    println!(
        "search on this collection as ingested (top 4, {} searches): p50 {:.3} ms, p99 {:.3} ms",
        small_search_ms.len(),
        pct(&small_search_ms, 50.0),
        pct(&small_search_ms, 99.0)
    );

    // 5. Time to first token through warden, without and with retrieval.
    println!();
    println!(
        "## 5. Streaming chat through warden: time to first byte without and with retrieval ({requests} requests each, one at a time, in turn, every question different)"
    );
    println!();
    let me = std::env::current_exe().unwrap();
    let warden_bin = me.parent().unwrap().parent().unwrap().join("warden");
    assert!(
        warden_bin.exists(),
        "build the release binary first: cargo build --release --bin warden"
    );
    let dir = std::env::temp_dir().join(format!("warden-bench-rag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    // Each warden has its own fake upstream (which counts the prompts with context); the two are
    // sent requests in turn, so whatever else loads the machine weighs on both alike.
    let mut setups = Vec::new();
    for (name, model_extra, extra) in [
        ("retrieval off", String::new(), String::new()),
        (
            "retrieval on",
            format!("collection = \"{docs_collection}\"\n"),
            knowledge_config.clone(),
        ),
    ] {
        let upstream_port = free_port();
        let upstream = Process(
            Command::new(&me)
                .args(["upstream", &upstream_port.to_string()])
                .spawn()
                .unwrap(),
        );
        let upstream_url = format!("http://127.0.0.1:{upstream_port}");
        wait_for(&format!("{upstream_url}/v1/models"), 200).await;
        let (warden, url) =
            start_warden(&warden_bin, &dir, upstream_port, &model_extra, &extra).await;
        for i in 0..20 {
            one_stream(&client, &url, &question(2_000 + setups.len() * 100 + i)).await;
        }
        setups.push((name, upstream, upstream_url, warden, url));
    }
    let mut ttfb = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    let mut errors = [0, 0];
    // And in the same turns, what retrieval costs here: embed the question, then search (what
    // `Knowledge::search` does), each timed.
    let mut turn_embed = Vec::with_capacity(requests);
    let mut turn_search = Vec::with_capacity(requests);
    let mut in_process = Vec::with_capacity(requests);
    for i in 0..requests {
        for (s, (_, _, _, _, url)) in setups.iter().enumerate() {
            match one_stream(&client, url, &question(3_000 + s * 2_000 + i)).await {
                Some(ms) => ttfb[s].push(ms),
                None => errors[s] += 1,
            }
        }
        let start = Instant::now();
        let vector = embedder.embed_query(&question(7_000 + i)).await.unwrap();
        let embedded = Instant::now();
        store
            .search(&docs_collection, DEFAULT_TENANT, &vector, 4, 0.0)
            .await
            .unwrap();
        turn_embed.push((embedded - start).as_secs_f64() * 1000.0);
        turn_search.push(ms(embedded));
        in_process.push(ms(start));
    }
    let mut results = Vec::new();
    for (s, (name, upstream, upstream_url, warden, _)) in setups.into_iter().enumerate() {
        let grounded = grounded(&client, &upstream_url).await;
        drop(warden);
        drop(upstream);
        results.push((name, std::mem::take(&mut ttfb[s]), errors[s], grounded));
    }
    store.drop_collection(&docs_collection).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    println!("| setup | n | errors | prompts with context | TTFB p50 (ms) | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, ttfb, errors, grounded) in &results {
        println!(
            "| {name} | {} | {errors} | {grounded} | {:.3} | {:.3} | {:.3} | {:.3} |",
            ttfb.len(),
            pct(ttfb, 50.0),
            pct(ttfb, 90.0),
            pct(ttfb, 99.0),
            pct(ttfb, 100.0)
        );
    }
    for (name, values) in [
        ("embed", &turn_embed),
        ("search", &turn_search),
        ("embed + search", &in_process),
    ] {
        println!(
            "| this process, same turns: {name} | {} | | | {:.3} | {:.3} | {:.3} | {:.3} |",
            values.len(),
            pct(values, 50.0),
            pct(values, 90.0),
            pct(values, 99.0),
            pct(values, 100.0)
        );
    }
    let (off, on) = (&results[0].1, &results[1].1);
    let added_p50 = pct(on, 50.0) - pct(off, 50.0);
    let added_p99 = pct(on, 99.0) - pct(off, 99.0);
    let small_p50 = pct(&small_search_ms, 50.0);
    println!();
    println!(
        "added time to first byte: p50 {added_p50:.3} ms, p99 {added_p99:.3} ms (after 20 warm-up requests each, not counted; prompts with context: what each fake upstream received, warm-up included)"
    );
    println!(
        "compare: embed p50 {embed_p50:.3} ms + search p50 {search_p50:.3} ms ({rows} chunks, flushed) + 1 ms = {:.3} ms; with the search p50 on this {chunks}-chunk collection, as ingested ({small_p50:.3} ms): {:.3} ms",
        embed_p50 + search_p50 + 1.0,
        embed_p50 + small_p50 + 1.0
    );
    println!(
        "and in the same turns as the requests: embed p50 {:.3} ms, search p50 {:.3} ms, embed + search p50 {:.3} ms + 1 ms = {:.3} ms",
        pct(&turn_embed, 50.0),
        pct(&turn_search, 50.0),
        pct(&in_process, 50.0),
        pct(&in_process, 50.0) + 1.0
    );
}

/// Searches, one at a time, one per query vector, until the vectors or `seconds` run out.
struct Searches {
    first: Vec<f64>,
    ms: Vec<f64>,
    short: usize,
}

async fn searches(
    store: &warden::knowledge::store::Store,
    collection: &str,
    vectors: &[std::sync::Arc<Vec<f32>>],
    seconds: f64,
) -> Searches {
    let mut run = Searches {
        first: Vec::new(),
        ms: Vec::new(),
        short: 0,
    };
    let started = Instant::now();
    for (i, vector) in vectors.iter().enumerate() {
        if started.elapsed().as_secs_f64() >= seconds {
            break;
        }
        let start = Instant::now();
        let hits = store
            .search(collection, DEFAULT_TENANT, vector, 4, 0.0)
            .await
            .unwrap();
        if i == 0 {
            run.first.push(ms(start));
        } else {
            run.ms.push(ms(start));
        }
        run.short += usize::from(hits.len() < 4);
    }
    run
}

/// A Milvus flush (Warden's store has none: it never needs one), through the SDK directly.
async fn flush(uri: &str, collection: &str) {
    use milvus::v2::prelude::*;
    let connect = ConnectConfig::new()
        .uri(uri.to_owned())
        .telemetry(TelemetryConfig::new().enabled(false));
    let client = ClientV2::new(&connect).await.unwrap();
    let request = FlushRequest::builder()
        .collection_names([collection])
        .build()
        .unwrap();
    client.flush(request).await.unwrap();
}

async fn grounded(client: &reqwest::Client, upstream_url: &str) -> usize {
    client
        .get(format!("{upstream_url}/grounded"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts `warden serve` in front of the fake upstream; `model_extra` goes into the model's
/// table, `extra` at the end of the file.
async fn start_warden(
    warden_bin: &std::path::Path,
    dir: &std::path::Path,
    upstream_port: u16,
    model_extra: &str,
    extra: &str,
) -> (Process, String) {
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n\
         [backends.fake]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{upstream_port}/v1\"\n\
         [[models]]\nid = \"llama3.2\"\n{model_extra}targets = [{{ backend = \"fake\", model = \"llama3.2\" }}]\n{extra}"
    );
    let path = dir.join(format!("warden-{port}.toml"));
    std::fs::write(&path, config).unwrap();
    let process = Process(
        Command::new(warden_bin)
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for(&format!("http://127.0.0.1:{port}/healthz"), 1200).await;
    (
        process,
        format!("http://127.0.0.1:{port}/v1/chat/completions"),
    )
}

/// Time to the first body byte of one streaming request; `None` unless it ends with `[DONE]`.
async fn one_stream(client: &reqwest::Client, url: &str, question: &str) -> Option<f64> {
    let body = serde_json::json!({"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": question}]})
        .to_string();
    let sent = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut bytes = response.bytes_stream();
    let mut ttfb = None;
    let mut text = String::new();
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.ok()?;
        ttfb.get_or_insert_with(|| ms(sent));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.contains("data: [DONE]").then_some(ttfb?)
}
