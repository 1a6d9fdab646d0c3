//! Warden in front of a real OpenAI-compatible server: llama.cpp's `llama-server` with a small
//! GGUF model, built and fetched by `scripts/llama-server.sh`. The model is a tiny base model:
//! the tests check the protocol, never the text.

use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_llama() -> (Server, u16) {
    let bin = std::env::var("LLAMA_SERVER_BIN").expect("LLAMA_SERVER_BIN (make test sets it)");
    let model = std::env::var("LLAMA_MODEL").expect("LLAMA_MODEL (make test sets it)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args([
            "-m",
            &model,
            "--alias",
            "gemma3-270m",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args([
            "-t",
            "2",
            "-c",
            "4096",
            "-np",
            "2",
            "--no-jinja",
            "--chat-template",
            "gemma",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    for _ in 0..300 {
        if let Ok(response) = client()
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            && response.status() == 200
        {
            return (server, port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("llama-server did not become healthy");
}

#[tokio::test]
#[ignore = "needs llama-server (LLAMA_SERVER_BIN, LLAMA_MODEL); `make test` runs it"]
async fn warden_speaks_to_a_real_llama_cpp_server() {
    let (_server, port) = start_llama().await;
    let config = format!(
        "[backends.llama]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
         [backends.llama.timeouts]\nfirst_token_ms = 120000\n\
         [[models]]\nid = \"small\"\ntargets = [{{ backend = \"llama\", model = \"gemma3-270m\" }}]\n"
    );
    let warden = Warden::start(&config).await;
    let question = json!([{"role": "user", "content": "Why is the sky blue?"}]);

    let response = warden
        .post(
            "/v1/chat/completions",
            json!({"model": "small", "messages": question, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["model"], "small");
    assert!(answer["choices"][0]["message"]["content"].is_string());
    assert!(["stop", "length"].contains(&answer["choices"][0]["finish_reason"].as_str().unwrap()));
    let usage = &answer["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let body = json!({"model": "small", "messages": question, "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}});
    let response = warden.post("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = sse_chunks(&text);
    assert!(chunks.len() >= 3, "{text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == chunks[0]["id"] && c["model"] == "small")
    );
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // The Responses API over the same server, whole and streamed.
    let ask = json!({"model": "small", "input": "Why is the sky blue?", "max_output_tokens": 8, "temperature": 0});
    let response = warden.post("/v1/responses", ask.clone()).await;
    assert_eq!(response.status(), 200);
    let whole: serde_json::Value = response.json().await.unwrap();
    assert_eq!(whole["object"], "response");
    assert!(
        ["completed", "incomplete"].contains(&whole["status"].as_str().unwrap()),
        "{whole}"
    );
    if whole["status"] == "incomplete" {
        assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");
    }
    assert!(
        whole["output"][0]["content"][0]["text"].is_string(),
        "{whole}"
    );
    assert!(whole["usage"]["output_tokens"].as_u64().unwrap() >= 1);
    let mut streamed = ask;
    streamed["stream"] = json!(true);
    let text = warden
        .post("/v1/responses", streamed)
        .await
        .text()
        .await
        .unwrap();
    let events = crate::responses::response_events(&text);
    let last = events.last().unwrap();
    assert!(
        ["response.completed", "response.incomplete"].contains(&last["type"].as_str().unwrap()),
        "{text}"
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    assert!(last["response"]["usage"]["output_tokens"].as_u64().unwrap() >= 1);

    // A prompt longer than the server's context: its own 400 comes through with its message.
    let long = "word ".repeat(6000);
    let response = warden
        .post("/v1/chat/completions", json!({"model": "small", "messages": [{"role": "user", "content": long}], "max_tokens": 4}))
        .await;
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().len() > 10,
        "{error}"
    );
}
