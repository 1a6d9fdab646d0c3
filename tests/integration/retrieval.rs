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
    let first_sources: usize = response.headers()["x-warden-sources"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first_sources >= 1);
    let body: serde_json::Value = response.json().await.unwrap();
    let sources = body["warden"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), first_sources);
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
    let streamed_sources = chunks[0]["warden"]["sources"].as_array().unwrap().len();

    // Operators see the same: chunks injected per collection, and the embed and search stages.
    let metrics = warden.get("/metrics").await.text().await.unwrap();
    let series = |name: &str| -> f64 {
        metric(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(
        series(&format!(
            "warden_retrieval_sources_total{{collection=\"{collection}\"}}"
        )),
        (first_sources + streamed_sources) as f64
    );
    assert_eq!(
        series("warden_stage_duration_seconds_count{stage=\"embed\"}"),
        2.0
    );
    assert_eq!(
        series("warden_stage_duration_seconds_count{stage=\"search\"}"),
        2.0
    );

    // The Responses API grounds the same way and reports the sources in its `warden` object,
    // whole and streamed (on the final response).
    let whole: serde_json::Value = warden
        .post(
            "/v1/responses",
            json!({"model": "llama3.2", "input": "How do I factory reset my K7?"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        whole["warden"]["sources"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("kestrel.md"),
        "{whole}"
    );
    assert!(
        upstream.last_body()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("twelve seconds")
    );
    let streamed = warden
        .post(
            "/v1/responses",
            json!({"model": "llama3.2", "input": "When are invoices sent out?", "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap();
    let last = crate::responses::response_events(&streamed).pop().unwrap();
    assert!(
        last["response"]["warden"]["sources"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("billing.txt"),
        "{last}"
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

#[tokio::test]
#[ignore = "needs the embedding model; `make test` runs it"]
async fn text_past_the_shipped_tokenizers_128_tokens_still_counts_in_the_embedding() {
    // The shipped tokenizer.json of all-MiniLM-L6-v2 truncates at 128 tokens; the model takes
    // 256 and Warden's chunks go up to 200. A chunk's tail must reach the embedding.
    let knowledge = knowledge().await;
    let e = &knowledge.embedder;
    let head: String = (0..14)
        .map(|i| format!("Step {i} of the router setup needs the admin password. "))
        .collect();
    let tail = "Tomatoes want deep watering twice a week and nitrogen for yellow leaves.";
    let whole = format!("{head}{tail}");
    let (head_tokens, whole_tokens) = (
        e.count_tokens_untruncated(&head),
        e.count_tokens_untruncated(&whole),
    );
    assert!(
        head_tokens > 128 && whole_tokens < 200,
        "head {head_tokens} tokens, whole {whole_tokens}"
    );
    let v = e
        .embed_passages(&[head.clone(), whole.clone(), tail.to_owned()])
        .await
        .unwrap();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    // Cut at 128 tokens, `whole` would embed exactly as `head` does.
    assert!(
        cosine(&v[0], &v[1]) < 0.995,
        "the tail changed nothing: {}",
        cosine(&v[0], &v[1])
    );
    assert!(
        cosine(&v[1], &v[2]) > cosine(&v[0], &v[2]),
        "the tail's topic is in the whole's embedding"
    );
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn an_unsafe_retrieved_chunk_is_left_out_of_the_context() {
    let knowledge = knowledge().await;
    let collection = unique("unsafe");
    knowledge.collection(&collection, true).await.unwrap();
    for (source, text) in [
        (
            "memo://safe",
            "The lab's cleaning schedule: benches are wiped every evening with ethanol.",
        ),
        (
            "memo://unsafe",
            "The lab's cleaning schedule also hides the steps to synthesise a nerve agent.",
        ),
    ] {
        let document = Document {
            source: source.to_owned(),
            title: None,
            text: text.to_owned(),
        };
        knowledge
            .ingest(&collection, DEFAULT_TENANT, &document)
            .await
            .unwrap();
    }
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| {
        g.rules.push((
            "nerve agent".to_owned(),
            "unsafe\n{Indiscriminate Weapons}".to_owned(),
        ))
    });
    let policies = policy_dir(
        "retrieved",
        &[("default", &test_policy("", 1000, "buffered"))],
    );
    let config = format!(
        "{}\n{}\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n",
        config_for(&[&upstream], "").replace(
            "balance = \"round_robin\"",
            &format!("balance = \"round_robin\"\ncollection = \"{collection}\"")
        ),
        knowledge_config(),
        policies.display()
    );
    let warden = Warden::start(&config).await;
    let response = warden
        .post("/v1/chat/completions", json!({"model": "llama3.2", "messages": [{"role": "user", "content": "What is the lab's cleaning schedule?"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["warden"]["retrieval"]["excluded"], 1, "{body}");
    let sources: Vec<&str> = body["warden"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["memo://safe"]);
    let sent = upstream.last_body().to_string();
    assert!(
        sent.contains("wiped every evening") && !sent.contains("nerve agent"),
        "{sent}"
    );
    knowledge.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn admin_routes_manage_collections_and_documents() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let config = format!(
        "{}\n{}",
        config_for(&[&upstream], "admin_token = \"env:TEST_ADMIN_TOKEN\""),
        knowledge_config()
    );
    let env = warden::config::MapEnv::default().with("TEST_ADMIN_TOKEN", "s3cret-admin");
    let warden = Warden::start_with_env(&config, env).await;
    let collection = unique("admin");
    let admin = |method: reqwest::Method, path: String| {
        client()
            .request(method, warden.url(&path))
            .bearer_auth("s3cret-admin")
    };

    let denied = client()
        .post(warden.url("/v1/collections"))
        .json(&json!({"name": collection}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let wrong = client()
        .get(warden.url("/v1/collections"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let created = admin(reqwest::Method::POST, "/v1/collections".into())
        .json(&json!({"name": collection}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let again = admin(reqwest::Method::POST, "/v1/collections".into())
        .json(&json!({"name": collection}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let bad_name = admin(reqwest::Method::POST, "/v1/collections".into())
        .json(&json!({"name": "a\" or 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_name.status(), 400);

    let added: serde_json::Value = admin(reqwest::Method::POST, format!("/v1/collections/{collection}/documents"))
        .json(&json!({"text": "The Nimbus kettle boils a litre of water in ninety seconds.", "source": "manual://nimbus"}))
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(added["chunks"], 1);
    assert_eq!(added["id"], doc_id_for("manual://nimbus"));
    let (url, _page) = serve_page(PAGE).await;
    let from_url: serde_json::Value = admin(
        reqwest::Method::POST,
        format!("/v1/collections/{collection}/documents"),
    )
    .json(&json!({"url": url}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(from_url["title"], "Aurora heater manual");
    let uploaded = admin(
        reqwest::Method::POST,
        format!("/v1/collections/{collection}/files?source=guide.md"),
    )
    .header("content-type", "text/markdown")
    .body("# Guide\n\nThe Orbit lamp dims when you tap it twice.")
    .send()
    .await
    .unwrap();
    assert_eq!(uploaded.status(), 200);

    let listed: serde_json::Value = admin(reqwest::Method::GET, "/v1/collections".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == collection.as_str())
        .expect("listed");
    assert_eq!(entry["dimension"], 384);

    let state = warden::AppState::new(shared_config().clone()).unwrap();
    let kb = state.knowledge.unwrap();
    let hits = kb
        .search(
            &collection,
            DEFAULT_TENANT,
            "how fast does the kettle boil",
            1,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].source, "manual://nimbus");
    let deleted = admin(
        reqwest::Method::DELETE,
        format!(
            "/v1/collections/{collection}/documents/{}",
            doc_id_for("manual://nimbus")
        ),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        kb.store
            .count_document(&collection, DEFAULT_TENANT, &doc_id_for("manual://nimbus"))
            .await
            .unwrap(),
        0
    );

    let dropped = admin(
        reqwest::Method::DELETE,
        format!("/v1/collections/{collection}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(dropped.status(), 200);
    let gone = admin(
        reqwest::Method::DELETE,
        format!("/v1/collections/{collection}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn the_ingest_command_reports_and_skips_what_it_cannot_read() {
    let collection = unique("cli");
    let dir = write_corpus("cli");
    std::fs::write(dir.join("broken.txt"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let config_path = dir.join("warden.toml");
    std::fs::write(
        &config_path,
        format!("{}\n{}", config_for(&[&upstream], ""), knowledge_config()),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let config_path = config_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
            for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("WARDEN_")) {
                command.env_remove(name);
            }
            command
                .args(&args)
                .arg("--config")
                .arg(&config_path)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "ingest".into(),
        "--collection".into(),
        collection.clone(),
        dir.display().to_string(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one document failed: {stdout}");
    assert!(stdout.contains("ingested 3 documents"), "{stdout}");
    assert!(
        stdout.contains("skipped") && stdout.contains("broken.txt") && stdout.contains("UTF-8"),
        "{stdout}"
    );

    let out = run(vec!["collections".into(), "list".into()])
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("{collection}\t384 dimensions")),
        "{listed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kestrel = std::fs::canonicalize(dir.join("kestrel.md"))
        .unwrap()
        .display()
        .to_string();
    let out = run(vec![
        "docs".into(),
        "delete".into(),
        "--collection".into(),
        collection.clone(),
        doc_id_for(&kestrel),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("chunks) from"));
    // Gone now, and another tenant's is as absent: a failure that says nothing was deleted.
    for tenant in ["default", "someone-else"] {
        let out = run(vec![
            "docs".into(),
            "delete".into(),
            "--collection".into(),
            collection.clone(),
            "--tenant".into(),
            tenant.into(),
            doc_id_for(&kestrel),
        ])
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing deleted"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(vec![
        "collections".into(),
        "drop".into(),
        collection.clone(),
    ])
    .await
    .unwrap();
    assert!(out.status.success());
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn a_tenant_never_receives_another_tenants_chunks() {
    let hex = sha256_hex;
    let collection = unique("tenants");
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let config = format!(
        "{}\n{}\n[[keys]]\nname = \"a\"\nkey_sha256 = \"{}\"\ntenant = \"tenant-a\"\nadmin = true\n\
         [[keys]]\nname = \"b\"\nkey_sha256 = \"{}\"\ntenant = \"tenant-b\"\nadmin = true\n",
        config_for(&[&upstream], "").replace(
            "balance = \"round_robin\"",
            &format!("balance = \"round_robin\"\ncollection = \"{collection}\"")
        ),
        knowledge_config(),
        hex("key-a"),
        hex("key-b")
    );
    let warden = Warden::start(&config).await;
    let ingest = |key: &'static str, text: &'static str, source: &'static str| {
        client()
            .post(warden.url(&format!("/v1/collections/{collection}/documents")))
            .bearer_auth(key)
            .json(&json!({"text": text, "source": source, "create": true}))
            .send()
    };
    assert_eq!(
        ingest(
            "key-a",
            "Project Falcon's launch code is 7741 and its budget is four million.",
            "a://falcon"
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        ingest(
            "key-b",
            "Project Heron's launch date is in May and its budget is two million.",
            "b://heron"
        )
        .await
        .unwrap()
        .status(),
        200
    );

    let ask = |key: &'static str, question: String, options: serde_json::Value| {
        client()
            .post(warden.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "llama3.2", "messages": [{"role": "user", "content": question}], "warden": options}))
            .send()
    };
    let attempts = [
        "What is Project Falcon's launch code?".to_owned(),
        "Falcon launch code\" or tenant == \"tenant-a".to_owned(),
        "tenant != 'tenant-b' || doc_id like '%' Falcon budget".to_owned(),
    ];
    for question in attempts {
        let response = ask("key-b", question.clone(), json!({"top_k": 10}))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{question}");
        let body: serde_json::Value = response.json().await.unwrap();
        let sources: Vec<&str> = body["warden"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap())
            .collect();
        assert!(
            sources.iter().all(|s| s.starts_with("b://")),
            "{question}: {sources:?}"
        );
        assert!(
            !upstream.last_body().to_string().contains("7741"),
            "{question}"
        );
    }
    // Nothing in the request can name another tenant or widen the filter.
    let widened = ask("key-b", "Falcon".into(), json!({"tenant": "tenant-a"}))
        .await
        .unwrap();
    assert_eq!(widened.status(), 400);
    let crafted = ask(
        "key-b",
        "Falcon".into(),
        json!({"collection": format!("{collection}\" or tenant != \"x")}),
    )
    .await
    .unwrap();
    assert_eq!(crafted.status(), 400);
    // The owner does get it.
    let own: serde_json::Value = ask(
        "key-a",
        "What is Project Falcon's launch code?".into(),
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(own["warden"]["sources"][0]["source"], "a://falcon");
    // A tenant cannot delete another tenant's document either.
    let deleted = client()
        .delete(warden.url(&format!(
            "/v1/collections/{collection}/documents/{}",
            doc_id_for("a://falcon")
        )))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404, "nothing of tenant-b's was deleted");
    let body: serde_json::Value = deleted.json().await.unwrap();
    assert_eq!(body["error"]["code"], "document_not_found");
    let still: serde_json::Value = ask(
        "key-a",
        "What is Project Falcon's launch code?".into(),
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(still["warden"]["sources"][0]["source"], "a://falcon");
    let kb = knowledge().await;
    kb.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs the embedding model; `make test` runs it"]
async fn asking_for_cuda_where_it_cannot_load_is_a_start_up_error() {
    // The CPU build of ONNX Runtime has no CUDA provider: never a silent fall-back to the CPU.
    let text = format!(
        "[backends.b]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:9\"\n[[models]]\nid = \"m\"\ntargets = [{{ backend = \"b\", model = \"x\" }}]\n[embeddings]\nmodel_dir = \"{}\"\ndevice = \"cuda\"\n",
        model_dir()
    );
    let config = Config::parse(&text, std::path::Path::new("t.toml"), &MapEnv::default()).unwrap();
    let err = match warden::AppState::new(config) {
        Ok(_) => panic!("CUDA was asked for and could not be used, yet start-up went on"),
        Err(err) => err,
    };
    assert!(err.to_lowercase().contains("cuda"), "{err}");
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn chat_requests_search_in_their_mode_within_the_limits_of_the_config() {
    let full_text = crate::store::server_has_full_text();
    let knowledge = knowledge().await;
    let collection = unique("modes");
    let dir = write_corpus("modes");
    std::fs::write(
        dir.join("errors.md"),
        "# Kestrel error codes\n\n## Boot errors\n\nERR_K7_0042 means the firmware image failed its checksum: reflash it from the recovery menu.\n\n## Network errors\n\nERR_K7_0077 means the WAN cable is unplugged.",
    )
    .unwrap();
    knowledge.collection(&collection, true).await.unwrap();
    let report = knowledge
        .ingest_sources(
            &collection,
            DEFAULT_TENANT,
            &[dir.display().to_string()],
            |_, _, _| {},
        )
        .await;
    assert_eq!(report.documents, 4, "{report:?}");

    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let config = format!(
        "{}\n{}[retrieval]\ntop_k = 3\nmax_chunks_per_doc = 1\ncontext_tokens = 70\n",
        config_for(&[&upstream], "").replace(
            "balance = \"round_robin\"",
            &format!("balance = \"round_robin\"\ncollection = \"{collection}\"")
        ),
        knowledge_config()
    );
    let warden = Warden::start(&config).await;
    // What the server can do is reported where operators look, once found out (readiness
    // checks start the probe and never wait for it).
    let mut ready = serde_json::Value::Null;
    for _ in 0..100 {
        ready = warden.get("/readyz").await.json().await.unwrap();
        if !ready["knowledge"]["full_text"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(ready["knowledge"]["full_text"], full_text, "{ready}");
    assert_eq!(
        ready["knowledge"]["mode"],
        if full_text { "hybrid" } else { "dense" },
        "{ready}"
    );
    let ask = |question: &str, mode: Option<&str>| {
        let mut body =
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": question}]});
        if let Some(mode) = mode {
            body["warden"] = json!({"retrieval": mode});
        }
        body
    };

    // The default mode is hybrid where the server has full text, else dense (and it says so).
    let body: serde_json::Value = warden
        .post(
            "/v1/chat/completions",
            ask("What does ERR_K7_0042 mean?", None),
        )
        .await
        .json()
        .await
        .unwrap();
    let retrieval = &body["warden"]["retrieval"];
    if full_text {
        assert_eq!(retrieval["mode"], "hybrid", "{body}");
        assert!(retrieval.get("requested_mode").is_none(), "{body}");
    } else {
        assert_eq!(retrieval["mode"], "dense", "{body}");
        assert_eq!(retrieval["requested_mode"], "hybrid", "{body}");
    }
    let sources = body["warden"]["sources"].as_array().unwrap();
    assert!(
        sources[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("errors.md"),
        "{body}"
    );
    // The chunk's section, from the document's headings.
    assert!(
        sources[0]["section"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Kestrel error codes"),
        "{body}"
    );
    // At most one chunk per document, and within the context budget.
    let mut docs: Vec<&str> = sources
        .iter()
        .map(|s| s["doc_id"].as_str().unwrap())
        .collect();
    docs.dedup();
    assert_eq!(docs.len(), sources.len(), "{body}");
    let system = upstream.last_body()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("ERR_K7_0042"), "{system}");
    let context_tokens = knowledge.embedder.count_tokens_untruncated(
        system
            .split("---------------------\n")
            .nth(1)
            .unwrap_or_default(),
    );
    assert!(
        context_tokens <= 70,
        "context of {context_tokens} tokens: {system}"
    );

    // Keyword mode per request: exact codes are found by their words alone.
    let body: serde_json::Value = warden
        .post("/v1/chat/completions", ask("ERR_K7_0077", Some("keyword")))
        .await
        .json()
        .await
        .unwrap();
    let retrieval = &body["warden"]["retrieval"];
    if full_text {
        assert_eq!(retrieval["mode"], "keyword", "{body}");
        let sources = body["warden"]["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 1, "only one document has the code: {body}");
        assert!(
            sources[0]["source"]
                .as_str()
                .unwrap()
                .ends_with("errors.md")
        );
    } else {
        assert_eq!(retrieval["mode"], "dense", "{body}");
        assert_eq!(retrieval["requested_mode"], "keyword", "{body}");
    }
    let bad = warden
        .post("/v1/chat/completions", ask("anything", Some("fuzzy")))
        .await;
    assert_eq!(bad.status(), 400);
    knowledge.store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Milvus and the embedding model; `make test` runs it"]
async fn a_reload_keeps_the_embedding_model_and_makes_the_collections_models_name() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let collection = unique("reloaded");
    let dir = std::env::temp_dir().join(format!("warden-reload-rag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warden.toml");
    let base = format!("{}\n{}", config_for(&[&upstream], ""), knowledge_config());
    std::fs::write(&path, &base).unwrap();
    let config = Config::load(&path, &MapEnv::default()).unwrap();
    let shared = warden::SharedState::new(warden::AppState::new(config).unwrap());
    let first = shared.current();
    let store = first.knowledge.as_ref().unwrap().store.clone();
    assert!(!store.has_collection(&collection).await.unwrap());

    // The model now searches a collection that does not exist yet, with another top_k.
    std::fs::write(
        &path,
        format!(
            "{}\n[retrieval]\ntop_k = 2\n",
            base.replace(
                "balance = \"round_robin\"",
                &format!("balance = \"round_robin\"\ncollection = \"{collection}\"")
            )
        ),
    )
    .unwrap();
    warden::cli::reload(&shared).await;
    let next = shared.current();
    assert!(!Arc::ptr_eq(&first, &next), "a new generation is in force");
    let (before, after) = (
        first.knowledge.as_ref().unwrap(),
        next.knowledge.as_ref().unwrap(),
    );
    assert!(
        Arc::ptr_eq(&before.embedder, &after.embedder),
        "the embedding model is not loaded again"
    );
    assert!(
        Arc::ptr_eq(&before.store, &after.store),
        "nor the Milvus client made again"
    );
    assert_eq!(after.retrieval.top_k, 2);
    assert!(
        store.has_collection(&collection).await.unwrap(),
        "the reload made the collection the model names"
    );
    store.drop_collection(&collection).await.unwrap();
}
