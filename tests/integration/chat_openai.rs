use serde_json::json;

use crate::common::*;
use crate::fake_upstream::Flavor;

#[tokio::test]
async fn non_streaming_passes_unknown_fields_through_and_strips_warden_options() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let body = json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]}],
        "tools": tools, "tool_choice": "auto", "response_format": {"type": "json_object"},
        "seed": 7, "logprobs": true, "top_logprobs": 2, "n": 1, "stop": ["\n\n"],
        "temperature": 0.3, "user": "u-1", "vendor_extension": {"x": 1},
        "warden": {}
    });
    let response = client()
        .post(warden.url("/v1/chat/completions"))
        .header("x-request-id", "client-req-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-req-42");
    let answer: serde_json::Value = response.json().await.unwrap();

    let sent = upstream.received().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["x-request-id"], "client-req-42");
    let mut expected = body.clone();
    expected.as_object_mut().unwrap().remove("warden");
    assert_eq!(
        sent.body, expected,
        "everything but `warden` is forwarded as sent"
    );

    let recorded: serde_json::Value =
        serde_json::from_str(&crate::fake_upstream::fixture("openai/chat.json")).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "llama3.2");
    assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(answer["choices"], recorded["choices"]);
    assert_eq!(answer["usage"], recorded["usage"]);
    assert_eq!(answer["system_fingerprint"], recorded["system_fingerprint"]);
}

#[tokio::test]
async fn upstream_model_name_replaces_the_client_facing_id() {
    let upstream = crate::fake_upstream::FakeUpstream::start(Flavor::OpenAi).await;
    let config = format!(
        "[backends.vllm]\nkind = \"openai\"\nbase_url = \"{}\"\n[[models]]\nid = \"chat\"\ntargets = [{{ backend = \"vllm\", model = \"meta-llama/Llama-3.2-1B-Instruct\" }}]\n",
        upstream.base_url()
    );
    let warden = Warden::start(&config).await;
    let mut body = chat_body(false);
    body["model"] = json!("chat");
    let answer: serde_json::Value = warden
        .post("/v1/chat/completions", body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        upstream.last_body()["model"],
        "meta-llama/Llama-3.2-1B-Instruct"
    );
    assert_eq!(answer["model"], "chat");
}

#[tokio::test]
async fn stream_relays_every_chunk_with_one_id_and_ends_with_done() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    let response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = sse_chunks(&text);
    assert_eq!(
        streamed_text(&chunks),
        fixture_text("openai/chat_stream_usage.sse")
    );
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert_eq!(chunk["model"], "llama3.2");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(
            chunk.get("usage").is_none(),
            "no usage unless asked: {chunk}"
        );
        assert!(!chunk["choices"].as_array().unwrap().is_empty());
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    // Warden asks upstream for usage even when the client did not.
    assert_eq!(
        upstream.last_body()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn include_usage_adds_one_usage_chunk_before_done() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = warden
        .post("/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let n = data.len();
    assert_eq!(data[n - 1], "[DONE]");
    let usage_chunk: serde_json::Value = serde_json::from_str(&data[n - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 31, "completion_tokens": 10, "total_tokens": 41})
    );
    let chunks = sse_chunks(&text);
    assert_eq!(
        chunks.iter().filter(|c| c.get("usage").is_some()).count(),
        1
    );
    assert_eq!(
        upstream.last_body()["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn streamed_tool_call_deltas_pass_through_in_order() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| s.stream_fixture = "openai/chat_tool_stream.sse".into());
    let text = warden
        .post("/v1/chat/completions", chat_body(true))
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&text);
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let parsed: serde_json::Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(
        parsed,
        json!({"location": "Paris, FR", "format": "celsius"})
    );
    let first_call = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .unwrap();
    assert_eq!(
        first_call["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_current_weather"
    );
    assert_eq!(
        first_call["choices"][0]["delta"]["tool_calls"][0]["index"],
        0
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn a_slow_stream_arrives_chunk_by_chunk() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = std::time::Duration::from_millis(150));
    let mut response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 200);
    // The first chunk is readable long before the upstream has sent the rest.
    let first = response.chunk().await.unwrap().unwrap();
    let frames_when_first_read = upstream
        .state
        .frames_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    let total = crate::fake_upstream::frames(
        crate::fake_upstream::fixture("openai/chat_stream_usage.sse").as_bytes(),
        Flavor::OpenAi,
    )
    .len();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    assert!(
        frames_when_first_read < total,
        "first chunk arrived only after {frames_when_first_read} of {total} frames"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_recorded_llama_cpp_stream_comes_out_with_one_id_and_usage_last() {
    // llama.cpp stamps `created` per chunk and sends `content: null` in its first delta.
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| s.stream_fixture = "llamacpp/chat_stream_usage.sse".into());
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = warden
        .post("/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&text);
    assert_eq!(
        streamed_text(&chunks),
        fixture_text("llamacpp/chat_stream_usage.sse")
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == chunks[0]["id"] && c["created"] == chunks[0]["created"])
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn a_recorded_llama_cpp_completion_passes_through() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| s.body_fixture = "llamacpp/chat.json".into());
    let answer: serde_json::Value = warden
        .post("/v1/chat/completions", chat_body(false))
        .await
        .json()
        .await
        .unwrap();
    let recorded: serde_json::Value =
        serde_json::from_str(&crate::fake_upstream::fixture("llamacpp/chat.json")).unwrap();
    let mut expected = recorded["choices"].clone();
    // Warden writes `logprobs: null` where llama.cpp leaves it out, as OpenAI does.
    expected[0]["logprobs"] = serde_json::Value::Null;
    assert_eq!(answer["choices"], expected);
    assert_eq!(
        answer["timings"], recorded["timings"],
        "llama.cpp's timings (numbers) pass through"
    );
    assert_eq!(answer["model"], "llama3.2");
}
