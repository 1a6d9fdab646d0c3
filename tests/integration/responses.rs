//! `/v1/responses` end to end through the chat pipeline: its stream under the output guard in
//! both modes, a whole answer blocked, a failure after the stream began. A stream's
//! shared-limit slot is checked in `shared_limits`; the official SDKs' side (the events as they
//! parse them, the tool round trip) in `sdk`.

use serde_json::{Value, json};
use std::time::Duration;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

/// The events of a Responses stream, each checked: its `event:` line names its `type`, and the
/// sequence numbers count from 0 with no gap.
pub fn response_events(body: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let kind = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        let (Some(kind), Some(data)) = (kind, data) else {
            // A keep-alive comment.
            assert!(block.starts_with(':'), "not an event: {block:?}");
            continue;
        };
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["type"], kind, "{block}");
        assert_eq!(event["sequence_number"], events.len(), "{block}");
        events.push(event);
    }
    assert!(!body.contains("[DONE]"), "a Responses stream has no [DONE]");
    events
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn deltas(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect()
}

fn ask(text: &str, stream: bool) -> Value {
    json!({"model": "llama3.2", "input": text, "stream": stream})
}

#[tokio::test]
async fn a_streamed_response_is_judged_like_a_chat_stream_in_both_modes() {
    for mode in ["buffered", "stream_first"] {
        let (upstream, warden) = guarded(
            Flavor::OpenAi,
            &format!("responses-{mode}"),
            &test_policy("refusal = \"Not that.\"", 20, mode),
        )
        .await;
        upstream.script(|s| s.frame_delay = Duration::from_millis(20));
        upstream.guard(|g| {
            g.rules
                .push(("rayleigh".to_owned(), "unsafe\n{Violent Crimes}".to_owned()))
        });
        let response = warden
            .post("/v1/responses", ask("Why is the sky blue?", true))
            .await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let events = response_events(&response.text().await.unwrap());
        assert_eq!(
            types(&events)[..2],
            ["response.created", "response.in_progress"]
        );
        let released = deltas(&events);
        assert!(
            released.starts_with("The sky is blue"),
            "{mode}: safe windows were released: {released:?}"
        );
        if mode == "buffered" {
            assert!(
                !released.to_lowercase().contains("rayleigh"),
                "{mode}: unjudged text went out: {released:?}"
            );
        }
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete", "{mode}");
        let final_response = &last["response"];
        assert_eq!(final_response["status"], "incomplete");
        assert_eq!(
            final_response["incomplete_details"]["reason"],
            "content_filter"
        );
        let content = &final_response["output"][0]["content"];
        assert_eq!(
            content[0]["text"], released,
            "{mode}: the text part is what was released"
        );
        assert_eq!(
            content[1],
            json!({"type": "refusal", "refusal": "Not that."})
        );
        assert_eq!(
            final_response["warden"]["guard"]["output"],
            json!({"verdict": "blocked", "categories": ["S1"]}),
            "{mode}"
        );
        assert_eq!(
            final_response["warden"]["guard"]["input"]["verdict"],
            "safe"
        );
        assert!(
            upstream.wait_abandoned(Duration::from_secs(1)).await,
            "{mode}: the upstream generation was cancelled"
        );
    }
}

#[tokio::test]
async fn a_safe_streamed_response_completes_with_the_whole_text_and_usage() {
    let (_upstream, warden) = guarded(
        Flavor::Ollama,
        "responses-safe",
        &test_policy("", 20, "buffered"),
    )
    .await;
    let streamed = warden
        .post("/v1/responses", ask("Why is the sky blue?", true))
        .await
        .text()
        .await
        .unwrap();
    let events = response_events(&streamed);
    let expected = fixture_text("ollama/chat_stream.ndjson");
    assert_eq!(deltas(&events), expected);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    let done = &last["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], expected);
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(done["warden"]["guard"]["output"]["verdict"], "safe");
    // The same request not streamed answers the same text.
    let whole: Value = warden
        .post("/v1/responses", ask("Why is the sky blue?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["status"], "completed");
    let recorded: Value =
        serde_json::from_str(&crate::fake_upstream::fixture("ollama/chat.json")).unwrap();
    assert_eq!(
        whole["output"][0]["content"][0]["text"],
        recorded["message"]["content"]
    );
    assert_ne!(whole["id"], done["id"]);
}

#[tokio::test]
async fn an_unsafe_whole_answer_becomes_an_incomplete_response_with_the_refusal_only() {
    let (upstream, warden) = guarded(
        Flavor::Ollama,
        "responses-whole",
        &test_policy("refusal = \"Not that.\"", 20, "buffered"),
    )
    .await;
    upstream.guard(|g| {
        g.rules
            .push(("rayleigh".to_owned(), "unsafe\n{Violent Crimes}".to_owned()))
    });
    let body: Value = warden
        .post("/v1/responses", ask("Why is the sky blue?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "incomplete");
    assert_eq!(
        body["output"][0]["content"],
        json!([{"type": "refusal", "refusal": "Not that."}]),
        "nothing of the blocked answer is left"
    );
}

#[tokio::test]
async fn a_failure_after_the_stream_began_is_an_error_event_and_a_failed_response() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.script(|s| s.stream_fixture = "ollama/error_midstream.ndjson".into());
    let warden = Warden::start(&config_for(&[&upstream], "")).await;
    let response = warden
        .post("/v1/responses", ask("Why is the sky blue?", true))
        .await;
    assert_eq!(response.status(), 200);
    let events = response_events(&response.text().await.unwrap());
    let n = events.len();
    assert_eq!(types(&events)[n - 2..], ["error", "response.failed"]);
    assert!(
        events[n - 2]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected EOF")
    );
    let failed = &events[n - 1]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["message"], events[n - 2]["message"]);
    assert_eq!(deltas(&events), "The sky is");
}

/// A Warden with two keys and stored responses kept for `ttl_seconds`.
async fn two_keys(upstream: &FakeUpstream, ttl_seconds: u64) -> Warden {
    let config = format!(
        "{}\n[[keys]]\nname = \"ada\"\nkey_sha256 = \"{}\"\n[[keys]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n\
         [responses]\nttl_seconds = {ttl_seconds}\n",
        config_for(&[upstream], ""),
        sha256_hex("sk-ada"),
        sha256_hex("sk-bob")
    );
    Warden::start(&config).await
}

async fn send_as(
    warden: &Warden,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, warden.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = match text.strip_prefix("event: ") {
        // A stream: its final response.
        Some(_) => response_events(&text).last().unwrap()["response"].clone(),
        None => serde_json::from_str(&text).unwrap(),
    };
    (status, body)
}

#[tokio::test]
async fn previous_response_id_continues_the_stored_conversation_of_the_same_key_only() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let warden = two_keys(&upstream, 3600).await;
    let post = reqwest::Method::POST;
    // The first turn streamed, with instructions (which do not carry over).
    let (status, first) = send_as(
        &warden,
        "sk-ada",
        post.clone(),
        "/v1/responses",
        Some(json!({"model": "llama3.2", "input": "My name is Ada.", "instructions": "Be brief.", "stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first["store"], true, "kept unless the request says not to");
    let first_id = first["id"].as_str().unwrap().to_owned();
    let answer = first["output"][0]["content"][0]["text"].clone();

    let (status, second) = send_as(
        &warden,
        "sk-ada",
        post.clone(),
        "/v1/responses",
        Some(json!({"model": "llama3.2", "input": "What is my name?", "previous_response_id": first_id})),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], first_id.as_str());
    assert_eq!(
        upstream.last_body()["messages"],
        json!([
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "What is my name?"},
        ])
    );

    // Stored as answered, for its key only.
    let path = format!("/v1/responses/{first_id}");
    let (status, stored) = send_as(&warden, "sk-ada", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(stored, first);
    let (status, error) = send_as(&warden, "sk-bob", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "response_not_found");
    let (status, error) = send_as(
        &warden,
        "sk-bob",
        post.clone(),
        "/v1/responses",
        Some(json!({"model": "llama3.2", "input": "And mine?", "previous_response_id": first_id})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["param"], "previous_response_id");
    let (status, _) = send_as(&warden, "sk-bob", reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 404, "another key cannot delete it");

    let (status, deleted) = send_as(&warden, "sk-ada", reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"id": first_id, "object": "response", "deleted": true})
    );
    let (status, _) = send_as(&warden, "sk-ada", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404);

    // `store: false` keeps nothing.
    let (_, unstored) = send_as(
        &warden,
        "sk-ada",
        post,
        "/v1/responses",
        Some(json!({"model": "llama3.2", "input": "hi", "store": false})),
    )
    .await;
    assert_eq!(unstored["store"], false);
    let path = format!("/v1/responses/{}", unstored["id"].as_str().unwrap());
    let (status, _) = send_as(&warden, "sk-ada", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stored_response_expires_after_its_time_to_live() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let warden = two_keys(&upstream, 1).await;
    let (_, first) = send_as(
        &warden,
        "sk-ada",
        reqwest::Method::POST,
        "/v1/responses",
        Some(json!({"model": "llama3.2", "input": "hi"})),
    )
    .await;
    let path = format!("/v1/responses/{}", first["id"].as_str().unwrap());
    let (status, _) = send_as(&warden, "sk-ada", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = send_as(&warden, "sk-ada", reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_stored_turns_are_judged_again_when_a_conversation_continues() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let policies = policy_dir(
        "responses-continued",
        &[("default", &test_policy("", 1000, "buffered"))],
    );
    // No verdict cache: the stored answer is judged afresh, not remembered as safe.
    let guard = format!(
        "[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\ncache_capacity = 0\n",
        policies.display()
    );
    let warden = Warden::start(&format!("{}\n{guard}", config_for(&[&upstream], ""))).await;
    let first: Value = warden
        .post(
            "/v1/responses",
            json!({"model": "llama3.2", "input": "Tell me about the sky."}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "completed");
    // The policy's view changed since: the stored answer itself is now unsafe.
    upstream.guard(|g| {
        g.rules
            .push(("rayleigh".to_owned(), "unsafe\n{Violent Crimes}".to_owned()))
    });
    let calls = upstream.calls();
    let second: Value = warden
        .post(
            "/v1/responses",
            json!({"model": "llama3.2", "input": "Go on.", "previous_response_id": first["id"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["status"], "incomplete", "{second}");
    assert_eq!(second["incomplete_details"]["reason"], "content_filter");
    assert_eq!(
        upstream.calls(),
        calls,
        "the blocked turn never reached the model"
    );
}

#[tokio::test]
async fn stored_responses_put_no_content_in_the_logs() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let path = temp_config("responses-logs", &config_for(&[&upstream], ""));
    let (_serving, address, lines) = spawn_serving_with(&path, &[("RUST_LOG", "debug")]);
    let secret = "zebra-umbrella-4471";
    let base = format!("http://{address}");
    let created: Value = client()
        .post(format!("{base}/v1/responses"))
        .json(&json!({"model": "llama3.2", "input": format!("My locker code is {secret}."), "instructions": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let streamed = client()
        .post(format!("{base}/v1/responses"))
        .json(&json!({"model": "llama3.2", "input": "And again?", "previous_response_id": id, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(response_events(&streamed).last().unwrap()["type"] == "response.completed");
    let stored = client()
        .get(format!("{base}/v1/responses/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    assert!(
        upstream.last_body().to_string().contains(secret),
        "the stored turn reached the model"
    );
    // Everything logged so far, at debug level.
    wait_for_line(&lines, "/v1/responses/");
    let mut logged = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        logged.push(line);
    }
    assert!(
        !logged.iter().any(|line| line.contains(secret)),
        "content in the logs:\n{}",
        logged.join("\n")
    );
}
