//! Milvus going away mid-run: each retrieval fail mode does what it says, `/readyz` reports
//! it, and everything recovers when Milvus is back. This test runs its own Milvus Lite.

use serde_json::json;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};
use crate::retrieval::model_dir;

fn milvus(args: &[&str]) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/milvus.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "milvus.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Lite {
    pid: String,
}

impl Drop for Lite {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/milvus.sh"))
            .args(["stop", &self.pid])
            .output();
    }
}

fn start_lite(dir: &str, port: u16) -> Lite {
    Lite {
        pid: milvus(&["start-lite", dir, &port.to_string()]),
    }
}

fn ask() -> serde_json::Value {
    json!({"model": "llama3.2", "messages": [{"role": "user", "content": "How long is the warranty on the Zephyr fan?"}]})
}

#[tokio::test]
#[ignore = "needs the Milvus venv and the embedding model; `make test` runs it"]
async fn milvus_down_gives_the_configured_behaviour_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("warden-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir = dir.display().to_string();
    let lite = start_lite(&dir, port);

    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let knowledge = format!(
        "[embeddings]\nmodel_dir = \"{}\"\n[milvus]\nuri = \"http://127.0.0.1:{port}\"\nconsistency = \"strong\"\ntimeout_ms = 1500\n",
        model_dir()
    );
    let base = config_for(&[&upstream], "readiness_timeout_ms = 1500").replace(
        "balance = \"round_robin\"",
        "balance = \"round_robin\"\ncollection = \"manuals\"",
    );
    let failing = Warden::start(&format!("{base}\n{knowledge}")).await;
    let lenient = Warden::start(&format!(
        "{base}\n{knowledge}\n[retrieval]\non_unavailable = \"answer_without\"\n"
    ))
    .await;

    let state = warden::AppState::new(
        warden::config::Config::parse(
            &format!("{base}\n{knowledge}"),
            std::path::Path::new("t.toml"),
            &warden::config::MapEnv::default(),
        )
        .unwrap(),
    )
    .unwrap();
    let kb = state.knowledge.unwrap();
    kb.collection("manuals", true).await.unwrap();
    let doc = warden::knowledge::Document {
        source: "manual://zephyr".into(),
        title: None,
        text: "The Zephyr fan comes with a warranty of three years from the date of purchase."
            .into(),
    };
    kb.ingest("manuals", warden::knowledge::DEFAULT_TENANT, &doc)
        .await
        .unwrap();

    let answer: serde_json::Value = failing
        .post("/v1/chat/completions", ask())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["warden"]["sources"][0]["source"], "manual://zephyr");

    drop(lite);
    let response = failing.post("/v1/chat/completions", ask()).await;
    let status = response.status();
    if status != 503 {
        panic!(
            "expected 503, got {status}: {}",
            response.text().await.unwrap()
        );
    }
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "retrieval_unavailable");
    let ready = failing.get("/readyz").await;
    let ready_status = ready.status();
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready_status, 503, "{ready}");
    assert_eq!(ready["knowledge"]["milvus"], "down");

    let response = lenient.post("/v1/chat/completions", ask()).await;
    assert_eq!(response.status(), 200, "answered without context");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["warden"]["retrieval"]["status"], "unavailable");
    assert_eq!(
        upstream.last_body()["messages"].as_array().unwrap().len(),
        1,
        "no context was injected"
    );

    let _lite = start_lite(&dir, port);
    let mut recovered = false;
    for _ in 0..40 {
        let response = failing.post("/v1/chat/completions", ask()).await;
        if response.status() == 200 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(
                body["warden"]["sources"][0]["source"], "manual://zephyr",
                "the data survived the restart"
            );
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "retrieval works again once Milvus is back");
    assert_eq!(failing.get("/readyz").await.status(), 200);
}
