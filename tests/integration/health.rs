use serde_json::json;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

#[tokio::test]
async fn models_lists_the_configured_ids_in_openai_shape() {
    let (_upstream, warden) = single(Flavor::OpenAi).await;
    let list: serde_json::Value = warden.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], "llama3.2");
    assert_eq!(list["data"][0]["object"], "model");
    let one: serde_json::Value = warden
        .get("/v1/models/llama3.2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "llama3.2");
    assert_eq!(warden.get("/v1/models/nope").await.status(), 404);
}

#[tokio::test]
async fn healthz_is_always_ok() {
    let (_upstream, warden) = single(Flavor::Ollama).await;
    let response = warden.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_probes_each_backend_and_names_the_one_down() {
    let ollama = FakeUpstream::start(Flavor::Ollama).await;
    let openai = FakeUpstream::start(Flavor::OpenAi).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = format!(
        "[backends.local]\nkind = \"ollama\"\nbase_url = \"{}\"\n\
         [backends.vllm]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [backends.gone]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
         [[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"local\", model = \"llama3.2:1b\" }}, {{ backend = \"gone\", model = \"x\" }}]\n\
         [[models]]\nid = \"big\"\ntargets = [{{ backend = \"vllm\", model = \"not-served\" }}]\n",
        ollama.base_url(),
        openai.base_url()
    );
    let warden = Warden::start(&config).await;
    let response = warden.get("/readyz").await;
    assert_eq!(response.status(), 200, "every model has a backend up");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["backends"]["local"]["status"], "up");
    assert_eq!(body["backends"]["gone"]["status"], "down");
    assert_eq!(body["backends"]["gone"]["code"], "upstream_unreachable");
    assert_eq!(body["models"]["llama3.2"]["backends_up"], json!(["local"]));
    assert_eq!(
        body["models"]["big"]["not_listed_upstream"],
        json!(["not-served"])
    );

    let only_gone = format!(
        "[backends.gone]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         [[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"gone\", model = \"llama3.2:1b\" }}]\n"
    );
    let warden = Warden::start(&only_gone).await;
    let response = warden.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["models"]["llama3.2"]["status"], "unavailable");
}
