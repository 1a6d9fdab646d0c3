//! Grounding end to end, against the real Milvus (`MILVUS_TEST_URI`: Lite in the everyday run,
//! the standalone engine in the compatibility run) and the real embedding model
//! (`EMBED_TEST_MODEL_DIR`, `ORT_DYLIB_PATH`). `make test` provides all three.

use serde_json::json;
use std::sync::{Arc, OnceLock};

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};
use crate::store::{milvus_uri, unique};
use warden::config::{Config, MapEnv};
use warden::knowledge::{DEFAULT_TENANT, Document, Knowledge, doc_id_for};

pub fn model_dir() -> String {
    std::env::var("EMBED_TEST_MODEL_DIR")
        .expect("EMBED_TEST_MODEL_DIR must name the embedding model folder (make test sets it)")
}

/// The `[embeddings]` and `[milvus]` sections for a test config.
pub fn knowledge_config() -> String {
    format!(
        "[embeddings]\nmodel_dir = \"{}\"\n[milvus]\nuri = \"{}\"\nconsistency = \"strong\"\ntimeout_ms = 20000\n",
        model_dir(),
        milvus_uri()
    )
}

/// One embedding model for the whole test binary: loading it takes a moment.
fn shared_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = format!(
            "[backends.b]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:9\"\n[[models]]\nid = \"m\"\ntargets = [{{ backend = \"b\", model = \"x\" }}]\n{}",
            knowledge_config()
        );
        Config::parse(&text, std::path::Path::new("t.toml"), &MapEnv::default()).unwrap()
    })
}

async fn knowledge() -> Arc<Knowledge> {
    let state = warden::AppState::new(shared_config().clone()).unwrap();
    state.knowledge.unwrap()
}

const CORPUS: &[(&str, &str)] = &[
    (
        "kestrel.md",
        "# Kestrel routers\n\nThe Kestrel K7 router ships with firmware 4.2. To reset it to factory settings, hold the recessed button on the back for twelve seconds until the light blinks amber.\n\nThe K7 supports WPA3 and up to 64 connected devices.",
    ),
    (
        "billing.txt",
        "Invoices are issued on the first business day of each month. Customers on the annual plan receive a single invoice in January. Refunds are processed within ten working days of approval.",
    ),
    (
        "garden.md",
        "# Tomato care\n\nWater tomato plants deeply twice a week rather than a little every day. Yellow lower leaves usually mean the plant needs more nitrogen.",
    ),
];

fn write_corpus(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-corpus-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    for (i, (name, text)) in CORPUS.iter().enumerate() {
        let path = if i == 2 {
            dir.join("nested").join(name)
        } else {
            dir.join(name)
        };
        std::fs::write(path, text).unwrap();
    }
    std::fs::write(dir.join("notes.pdf"), "%PDF not text").unwrap();
    dir
}

/// A web page served on 127.0.0.1, for URL ingestion.
async fn serve_page(html: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/manual.html",
        axum::routing::get(move || async move {
            ([("content-type", "text/html; charset=utf-8")], html)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/manual.html"), task)
}

const PAGE: &str = "<html><head><title>Aurora heater manual</title><script>var tracking = 1;</script></head><body><nav>Home | Products</nav><h1>Aurora heater</h1><p>The Aurora heater switches itself off when it tips over, and the <b>overheat fuse</b> trips at 85&nbsp;degrees.</p></body></html>";

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn ingested_documents_are_found_and_injected_into_the_prompt() {
    let knowledge = knowledge().await;
    let collection = unique("kb");
    let dir = write_corpus("inject");
    let (url, _page) = serve_page(PAGE).await;
    knowledge.collection(&collection, true).await.unwrap();
    let report = knowledge
        .ingest_sources(
            &collection,
            DEFAULT_TENANT,
            &[dir.display().to_string(), url.clone()],
            |_, _, _| {},
        )
        .await;
    assert_eq!(report.documents, 4, "three files and one page: {report:?}");
    assert!(
        report.failed.is_empty(),
        "the .pdf is not even picked up: {report:?}"
    );

    for (question, expected) in [
        ("How do I factory reset my K7?", "twelve seconds"),
        ("When are invoices sent out?", "first business day"),
        (
            "At what temperature does the heater's fuse trip?",
            "85 degrees",
        ),
        (
            "Why are the bottom leaves of my tomatoes turning yellow?",
            "nitrogen",
        ),
    ] {
        let hits = knowledge
            .search(&collection, DEFAULT_TENANT, question, 3)
            .await
            .unwrap();
        assert!(
            hits[0].text.contains(expected),
            "{question}: top hit {:?}",
            hits[0].text
        );
    }

    // Through the chat endpoint: the chunk reaches the model in the notebook's QA template.
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let config = format!(
        "{}\n{}",
        config_for(&[&upstream], "").replace(
            "balance = \"round_robin\"",
            &format!("balance = \"round_robin\"\ncollection = \"{collection}\"")
        ),
        knowledge_config()
    );
    let warden = Warden::start(&config).await;
    let response = warden
        .post("/v1/chat/completions", json!({"model": "llama3.2", "messages": [{"role": "user", "content": "How do I factory reset my K7?"}]}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["x-warden-sources"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
            >= 1
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let sources = body["warden"]["sources"].as_array().unwrap();
    assert!(
        sources[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("kestrel.md")
    );
    let sent = upstream.last_body();
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(
        system.starts_with("We have provided context information below. \n---------------------\n"),
        "{system}"
    );
    assert!(system.contains("twelve seconds"));
    assert!(system.ends_with(
        "Given this information, please answer the question: How do I factory reset my K7?\n"
    ));
    assert_eq!(
        sent["messages"][1]["content"],
        "How do I factory reset my K7?"
    );

    // Streaming: the sources ride on the first chunk.
    let text = warden
        .post("/v1/chat/completions", json!({"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": "When are invoices sent out?"}]}))
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&text);
    assert!(
        chunks[0]["warden"]["sources"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("billing.txt")
    );

    // Off for one request, and another collection for another.
    let _ = warden
        .post("/v1/chat/completions", json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "warden": {"rag": false}}))
        .await;
    assert_eq!(
        upstream.last_body()["messages"].as_array().unwrap().len(),
        1
    );
    let missing = warden
        .post("/v1/chat/completions", json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "warden": {"collection": "no_such_collection"}}))
        .await;
    assert_eq!(missing.status(), 404);
    knowledge.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn reingesting_replaces_and_deleting_removes() {
    let knowledge = knowledge().await;
    let collection = unique("reingest");
    knowledge.collection(&collection, true).await.unwrap();
    let long: String = (0..60)
        .map(|i| format!("Sentence number {i} talks about the weather in town. "))
        .collect();
    let document = Document {
        source: "memo://weather".to_owned(),
        title: None,
        text: long,
    };
    let first = knowledge
        .ingest(&collection, DEFAULT_TENANT, &document)
        .await
        .unwrap();
    assert!(first > 1, "a long document makes several chunks");
    let again = knowledge
        .ingest(&collection, DEFAULT_TENANT, &document)
        .await
        .unwrap();
    assert_eq!(first, again);
    let doc_id = doc_id_for("memo://weather");
    assert_eq!(
        knowledge
            .store
            .count_document(&collection, DEFAULT_TENANT, &doc_id)
            .await
            .unwrap(),
        first,
        "no duplicates"
    );
    knowledge
        .store
        .delete_document(&collection, DEFAULT_TENANT, &doc_id)
        .await
        .unwrap();
    assert_eq!(
        knowledge
            .store
            .count_document(&collection, DEFAULT_TENANT, &doc_id)
            .await
            .unwrap(),
        0
    );
    knowledge.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn a_collection_of_another_dimension_is_a_clear_error() {
    let knowledge = knowledge().await;
    let collection = unique("dim");
    knowledge.store.create(&collection, 8).await.unwrap();
    let err = knowledge.collection(&collection, true).await.unwrap_err();
    assert!(
        err.to_string().contains("8 dimensions") && err.to_string().contains("384"),
        "{err}"
    );
    let err = knowledge
        .search(&collection, DEFAULT_TENANT, "anything", 3)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dimensions"), "{err}");
    knowledge.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs the embedding model; `make test` runs it"]
async fn paraphrases_score_clearly_above_unrelated_sentences() {
    let knowledge = knowledge().await;
    let e = &knowledge.embedder;
    let v = e
        .embed_passages(&[
            "A man is playing a guitar.".to_owned(),
            "Someone plays an instrument.".to_owned(),
            "The stock market fell sharply today.".to_owned(),
        ])
        .await
        .unwrap();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let norm = cosine(&v[0], &v[0]);
    assert!((norm - 1.0).abs() < 1e-3, "vectors are normalised");
    let paraphrase = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[0], &v[2]);
    assert!(
        paraphrase > 0.4 && unrelated < 0.2 && paraphrase - unrelated > 0.3,
        "paraphrase {paraphrase}, unrelated {unrelated}"
    );
    assert_eq!(v[0].len(), 384);
}
