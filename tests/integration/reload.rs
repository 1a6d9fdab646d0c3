//! Reloading the config (what SIGHUP does, through `warden::cli::reload`): models and backends
//! change without a restart, requests in flight finish with what they started with, a bad file
//! keeps what is in force, and what did not change is kept, counts included.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

fn config_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-reload-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &std::path::Path) -> warden::SharedState {
    let config = warden::config::Config::load(path, &warden::config::MapEnv::default()).unwrap();
    warden::SharedState::new(warden::AppState::new(config).unwrap())
}

async fn model_ids(warden: &Warden) -> Vec<String> {
    let body: serde_json::Value = warden.get("/v1/models").await.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_reload_moves_models_to_new_backends_while_a_stream_in_flight_finishes_on_the_old() {
    let old = FakeUpstream::start(Flavor::OpenAi).await;
    let new = FakeUpstream::start(Flavor::Ollama).await;
    // Slow enough that the reload surely happens mid-stream.
    old.script(|s| s.frame_delay = Duration::from_millis(40));
    let path = config_file("backends", &config_for(&[&old], ""));
    let shared = load(&path);
    let warden = Warden::serve_state(shared.clone()).await;
    assert_eq!(model_ids(&warden).await, ["llama3.2"]);

    let mut stream = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(stream.status(), 200);
    let mut body = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();

    let second =
        "[[models]]\nid = \"second\"\ntargets = [{ backend = \"b0\", model = \"llama3.2:1b\" }]\n";
    std::fs::write(&path, format!("{}{second}", config_for(&[&new], ""))).unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(model_ids(&warden).await, ["llama3.2", "second"]);
    let answer = warden.post("/v1/chat/completions", chat_body(false)).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(new.calls(), 1, "new requests go to the new backend");
    assert_eq!(
        old.calls(),
        1,
        "only the stream that started before the reload"
    );

    while let Some(chunk) = stream.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(
        streamed_text(&sse_chunks(&body)),
        fixture_text("openai/chat_stream_usage.sse"),
        "the stream in flight is relayed whole from the backend it started on"
    );
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));

    std::fs::write(
        &path,
        format!("{}{second}\nbogus_setting = 1\n", config_for(&[&old], "")),
    )
    .unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(
        model_ids(&warden).await,
        ["llama3.2", "second"],
        "a file that does not validate keeps the config in force"
    );
    warden.post("/v1/chat/completions", chat_body(false)).await;
    assert_eq!(new.calls(), 2, "still the backend of the last good file");

    let metrics = warden.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("warden_config_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_config_reloads_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reload_keeps_what_did_not_change_and_rebuilds_what_did() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let other = FakeUpstream::start(Flavor::OpenAi).await;
    let base = config_for(&[&upstream], "");
    let path = config_file("parts", &base);
    let first = load(&path).current();

    let key = format!(
        "[[keys]]\nname = \"added\"\nkey_sha256 = \"{}\"\n",
        sha256_hex("sk-added")
    );
    std::fs::write(&path, format!("{base}{key}")).unwrap();
    let config = warden::config::Config::load(&path, &warden::config::MapEnv::default()).unwrap();
    let (keys_only, reloaded) = first.next(config).unwrap();
    assert!(reloaded.rebuilt.is_empty(), "{:?}", reloaded.rebuilt);
    assert!(
        std::sync::Arc::ptr_eq(&first.pool, &keys_only.pool),
        "backends kept, with their health"
    );
    assert!(std::sync::Arc::ptr_eq(&first.metrics, &keys_only.metrics));
    assert_eq!(keys_only.access.keys.len(), 1);

    std::fs::write(
        &path,
        format!("{}{key}", config_for(&[&other], ""))
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    )
    .unwrap();
    let config = warden::config::Config::load(&path, &warden::config::MapEnv::default()).unwrap();
    let (moved, reloaded) = keys_only.next(config).unwrap();
    assert_eq!(reloaded.rebuilt, ["backends"]);
    assert_eq!(reloaded.needs_restart, ["server.listen"]);
    assert!(!std::sync::Arc::ptr_eq(&keys_only.pool, &moved.pool));
    assert_eq!(moved.started_at, first.started_at);
}

#[tokio::test]
async fn a_reload_does_not_give_callers_a_fresh_minute() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let key = |name: &str, secret: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 2\n",
            sha256_hex(secret)
        )
    };
    let base = config_for(&[&upstream], "");
    let path = config_file("counts", &format!("{base}{}", key("steady", "sk-steady")));
    let shared = load(&path);
    let warden = Warden::serve_state(shared.clone()).await;
    let chat = |secret: &'static str| {
        client()
            .post(warden.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .json(&json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(chat("sk-steady").await.unwrap().status(), 200);
    assert_eq!(chat("sk-steady").await.unwrap().status(), 200);
    assert_eq!(chat("sk-steady").await.unwrap().status(), 429);

    std::fs::write(
        &path,
        format!(
            "{base}{}{}",
            key("steady", "sk-steady"),
            key("newcomer", "sk-newcomer")
        ),
    )
    .unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(chat("sk-newcomer").await.unwrap().status(), 200);
    let refused = chat("sk-steady").await.unwrap();
    assert_eq!(
        refused.status(),
        429,
        "an unchanged key keeps its count through a reload"
    );
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");

    std::fs::write(
        &path,
        format!(
            "{base}{}",
            key("steady", "sk-steady").replace("= 2\n", "= 5\n")
        ),
    )
    .unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(
        chat("sk-steady").await.unwrap().status(),
        200,
        "a changed limit starts its own count"
    );
}

#[tokio::test]
async fn a_refused_reload_leaves_the_policies_as_they_were() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| {
        g.rules
            .push(("hotwire".to_owned(), "unsafe\nS2".to_owned()))
    });
    let (base, dir) = guarded_config("refused-reload", &upstream, "first");
    let path = config_file("refused", &base);
    let shared = load(&path);
    let warden = Warden::serve_state(shared.clone()).await;
    let url = warden.url("");
    let refusal = || answer(&url, "how to hotwire a car");
    assert_eq!(refusal().await, "first");

    // New policies, but the config names an embedding model that cannot load: refused whole.
    std::fs::write(
        dir.join("default.toml"),
        test_policy("refusal = \"second\"", 1000, "buffered"),
    )
    .unwrap();
    std::fs::write(
        &path,
        format!("{base}[embeddings]\nmodel_dir = \"/nonexistent/model\"\n"),
    )
    .unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(
        refusal().await,
        "first",
        "a refused reload touches nothing, the policies included"
    );
    // The console's Policies page shows the last reload and why it failed.
    let (_, outcome, error) = shared.current().metrics.last_reload().unwrap();
    assert_eq!(outcome, "failed");
    assert!(error.unwrap().contains("/nonexistent/model"));

    std::fs::write(&path, &base).unwrap();
    warden::cli::reload(&shared).await;
    assert_eq!(refusal().await, "second");
    let (time, outcome, error) = shared.current().metrics.last_reload().unwrap();
    assert_eq!((outcome, error), ("ok", None));
    assert!(time.ends_with('Z'), "{time}");
}
