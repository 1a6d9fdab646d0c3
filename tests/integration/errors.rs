use serde_json::json;
use std::time::Duration;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    assert!(
        response.headers().contains_key("x-request-id"),
        "every response carries x-request-id"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(
            error.as_object().unwrap().contains_key(key),
            "envelope lacks {key}: {body}"
        );
    }
    (status, error)
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let (_upstream, warden) = single(Flavor::OpenAi).await;
    let response = client()
        .post(warden.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"llama3.2\", ")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body")
    );
}

#[tokio::test]
async fn missing_and_invalid_fields_are_named() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    let (status, error) = error_of(
        warden
            .post("/v1/chat/completions", json!({"model": "llama3.2"}))
            .await,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (400, Some("messages")));
    let (status, error) = error_of(
        warden
            .post(
                "/v1/chat/completions",
                json!({"model": "llama3.2", "messages": [{"role": "robot", "content": "x"}]}),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, error["param"].as_str()),
        (400, Some("messages[0].role"))
    );
    let (status, error) = error_of(
        warden
            .post(
                "/v1/chat/completions",
                json!({"model": "llama3.2", "messages": []}),
            )
            .await,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (400, Some("messages")));
    let mut body = chat_body(false);
    body["stream_options"] = json!({"include_usage": true});
    let (status, error) = error_of(warden.post("/v1/chat/completions", body).await).await;
    assert_eq!(
        (status, error["param"].as_str()),
        (400, Some("stream_options"))
    );
    let mut body = chat_body(false);
    body["warden"] = json!({"no_such_option": true});
    let (status, error) = error_of(warden.post("/v1/chat/completions", body).await).await;
    assert_eq!(status, 400);
    assert_eq!(error["param"], "warden.no_such_option");
    assert_eq!(upstream.calls(), 0, "nothing invalid reaches the backend");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let warden = Warden::start(&config_for(&[&upstream], "max_body_bytes = 1024")).await;
    let mut body = chat_body(false);
    body["messages"][0]["content"] = json!("x".repeat(4096));
    let (status, error) = error_of(warden.post("/v1/chat/completions", body).await).await;
    assert_eq!(status, 413);
    assert!(error["message"].as_str().unwrap().contains("1024"));
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn an_unknown_model_is_a_404_model_not_found() {
    let (_upstream, warden) = single(Flavor::OpenAi).await;
    let mut body = chat_body(false);
    body["model"] = json!("gpt-9");
    let (status, error) = error_of(warden.post("/v1/chat/completions", body).await).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
}

#[tokio::test]
async fn an_upstream_4xx_keeps_its_status_and_message() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| {
        s.status = 400;
        s.body_fixture = "openai/error_400.json".into();
    });
    for stream in [false, true] {
        let (status, error) =
            error_of(warden.post("/v1/chat/completions", chat_body(stream)).await).await;
        assert_eq!(status, 400);
        assert!(error["message"].as_str().unwrap().contains("temperature"));
        assert_eq!(error["param"], "temperature");
        assert_eq!(error["code"], "decimal_above_max_value");
    }
}

#[tokio::test]
async fn an_upstream_5xx_is_a_502_without_upstream_details() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| {
        s.status = 500;
        s.body_fixture = "openai/error_400.json".into();
    });
    for stream in [false, true] {
        let (status, error) =
            error_of(warden.post("/v1/chat/completions", chat_body(stream)).await).await;
        assert_eq!(status, 502);
        assert_eq!(error["type"], "server_error");
        assert!(!error["message"].as_str().unwrap().contains("temperature"));
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // Bind a port, then free it: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = format!(
        "[backends.gone]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n[[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"gone\", model = \"llama3.2\" }}]\n"
    );
    let warden = Warden::start(&config).await;
    for stream in [false, true] {
        let (status, error) =
            error_of(warden.post("/v1/chat/completions", chat_body(stream)).await).await;
        assert_eq!(status, 502);
        assert_eq!(error["code"], "upstream_unreachable");
        assert!(
            !error["message"]
                .as_str()
                .unwrap()
                .contains(&port.to_string()),
            "no internal address leaks"
        );
    }
}

#[tokio::test]
async fn no_first_token_in_time_is_a_504() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| s.first_byte_delay = Duration::from_secs(4));
    let (status, error) =
        error_of(warden.post("/v1/chat/completions", chat_body(true)).await).await;
    assert_eq!(status, 504);
    assert_eq!(error["code"], "upstream_timeout");
    assert!(error["message"].as_str().unwrap().contains("first token"));
}

#[tokio::test]
async fn a_stream_that_breaks_halfway_ends_with_an_error_event_and_done() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    upstream.script(|s| {
        s.break_after = Some(3);
        // Paced, so the frames before the break are on the wire before the connection is cut.
        s.frame_delay = Duration::from_millis(20);
    });
    let response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    let n = data.len();
    assert_eq!(data[n - 1], "[DONE]");
    let error: serde_json::Value = serde_json::from_str(&data[n - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(
        sse_chunks(&text).len(),
        3,
        "the three chunks sent before the break, then the error"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let (_upstream, warden) = single(Flavor::OpenAi).await;
    let (status, error) = error_of(warden.get("/v1/nothing-here").await).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "unknown_url");
    let (status, _) = error_of(warden.get("/v1/chat/completions").await).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() {
    let (upstream, warden) = single(Flavor::OpenAi).await;
    let response = warden.post("/v1/chat/completions", chat_body(false)).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"));
    assert_eq!(
        upstream.received()[0].headers["x-request-id"]
            .to_str()
            .unwrap(),
        id
    );
    let echoed = client()
        .get(warden.url("/v1/models"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
}
