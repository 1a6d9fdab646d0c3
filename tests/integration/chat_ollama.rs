use serde_json::json;

use crate::common::*;
use crate::fake_upstream::Flavor;

#[tokio::test]
async fn request_is_translated_to_ollama_chat() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    let body = json!({
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}
            ]}
        ],
        "temperature": 0.2, "top_p": 0.8, "seed": 11, "stop": ["END"], "max_tokens": 50,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object"}}}]
    });
    let response = warden.post("/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let sent = upstream.received().pop().unwrap();
    assert_eq!(sent.path, "/api/chat");
    let b = sent.body;
    assert_eq!(b["model"], "llama3.2:1b");
    assert_eq!(b["stream"], false);
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(b["messages"][1]["content"], "What is in this picture?");
    assert_eq!(
        b["messages"][1]["images"],
        json!(["iVBORw0KGgoAAAANSUhEUg=="])
    );
    assert_eq!(
        b["options"],
        json!({"temperature": 0.2, "top_p": 0.8, "seed": 11, "stop": ["END"], "num_predict": 50})
    );
    assert_eq!(b["format"], json!({"type": "object"}));
    assert_eq!(b["tools"][0]["function"]["name"], "get_current_weather");
    assert!(sent.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn non_streaming_answer_is_an_openai_completion() {
    let (_upstream, warden) = single(Flavor::Ollama).await;
    let answer: serde_json::Value = warden
        .post("/v1/chat/completions", chat_body(false))
        .await
        .json()
        .await
        .unwrap();
    let recorded: serde_json::Value =
        serde_json::from_str(&crate::fake_upstream::fixture("ollama/chat.json")).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "llama3.2");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        recorded["message"]["content"]
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let prompt = recorded["prompt_eval_count"].as_u64().unwrap();
    let completion = recorded["eval_count"].as_u64().unwrap();
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    );
}

#[tokio::test]
async fn ndjson_stream_becomes_openai_chunks_with_usage_when_asked() {
    let (_upstream, warden) = single(Flavor::Ollama).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = warden
        .post("/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = sse_chunks(&text);
    assert_eq!(
        streamed_text(&chunks),
        fixture_text("ollama/chat_stream.ndjson")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = &chunks[0]["id"];
    assert!(
        chunks
            .iter()
            .all(|c| &c["id"] == id && c["created"] == chunks[0]["created"])
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 31, "completion_tokens": 11, "total_tokens": 42})
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tool_calls_stream_with_index_id_and_tool_calls_finish() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| s.stream_fixture = "ollama/chat_tool_stream.ndjson".into());
    let text = warden
        .post("/v1/chat/completions", chat_body(true))
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&text);
    let call_chunk = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .unwrap();
    let call = &call_chunk["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["index"], 0);
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_current_weather");
    let arguments: serde_json::Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments,
        json!({"location": "Paris, FR", "format": "celsius"})
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn non_streaming_tool_call_has_string_arguments() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| s.body_fixture = "ollama/chat_tool.json".into());
    let answer: serde_json::Value = warden
        .post("/v1/chat/completions", chat_body(false))
        .await
        .json()
        .await
        .unwrap();
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_current_weather");
    assert!(call["function"]["arguments"].is_string());
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn length_done_reason_maps_to_length() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| s.stream_fixture = "ollama/chat_length_stream.ndjson".into());
    let text = warden
        .post("/v1/chat/completions", chat_body(true))
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn an_error_line_mid_stream_becomes_an_error_event_then_done() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| s.stream_fixture = "ollama/error_midstream.ndjson".into());
    let response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 200, "the stream had begun");
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    let n = data.len();
    assert_eq!(data[n - 1], "[DONE]");
    let error: serde_json::Value = serde_json::from_str(&data[n - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected EOF")
    );
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(streamed_text(&sse_chunks(&text)), "The sky is");
}

#[tokio::test]
async fn an_unknown_upstream_model_is_a_404_with_the_upstream_message() {
    let (upstream, warden) = single(Flavor::Ollama).await;
    upstream.script(|s| {
        s.status = 404;
        s.body_fixture = "ollama/error_model_not_found.json".into();
    });
    let response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&crate::fake_upstream::fixture(
        "ollama/error_model_not_found.json",
    ))
    .unwrap();
    assert_eq!(body["error"]["message"], recorded["error"]);
}
