//! `/metrics` shows the counters of what a test just did.

use crate::common::*;
use crate::fake_upstream::Flavor;

#[tokio::test]
async fn metrics_count_requests_verdicts_streams_and_errors() {
    let (upstream, warden) = guarded(
        Flavor::Ollama,
        "metrics",
        &test_policy("", 1000, "buffered"),
    )
    .await;
    upstream.guard(|g| {
        g.rules.push((
            "hotwire".to_owned(),
            "unsafe\n{Non-Violent Crimes}".to_owned(),
        ))
    });
    for _ in 0..2 {
        assert_eq!(
            warden
                .post("/v1/chat/completions", chat_body(false))
                .await
                .status(),
            200
        );
    }
    let text = warden
        .post("/v1/chat/completions", chat_body(true))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let mut blocked = chat_body(false);
    blocked["messages"][0]["content"] = serde_json::json!("how to hotwire a car");
    assert_eq!(
        warden.post("/v1/chat/completions", blocked).await.status(),
        200
    );
    let mut unknown = chat_body(false);
    unknown["model"] = serde_json::json!("made-up-model-name");
    assert_eq!(
        warden.post("/v1/chat/completions", unknown).await.status(),
        404
    );
    upstream.script(|s| s.status = 500);
    assert_eq!(
        warden
            .post("/v1/chat/completions", chat_body(false))
            .await
            .status(),
        502
    );

    let response = warden.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let ok = metric(
        &text,
        "warden_requests_total{route=\"/v1/chat/completions\",model=\"llama3.2\",key=\"anonymous\",status=\"200\"}",
    );
    assert_eq!(ok, Some(4.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "warden_requests_total{route=\"/v1/chat/completions\",model=\"unknown\",key=\"anonymous\",status=\"404\"}"
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("made-up-model-name"),
        "made-up names do not become labels"
    );
    assert_eq!(
        metric(
            &text,
            "warden_guard_verdicts_total{policy=\"default\",turn=\"input\",verdict=\"blocked\",category=\"S2\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, "warden_guard_verdicts_total{policy=\"default\",turn=\"output\",verdict=\"safe\",category=\"\"}").unwrap() >= 3.0);
    assert_eq!(
        metric(
            &text,
            "warden_upstream_errors_total{backend=\"b0\",kind=\"status\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "warden_time_to_first_token_seconds_count{model=\"llama3.2\"}"
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "warden_stage_duration_seconds_count{stage=\"guard_input\"}"
        )
        .unwrap()
            >= 4.0
    );
    assert_eq!(metric(&text, "warden_streams_in_flight"), Some(0.0));
    // Two non-streamed answers and one stream of the recorded fixtures: 3 × 31 prompt tokens.
    assert_eq!(
        metric(
            &text,
            "warden_tokens_total{key=\"anonymous\",direction=\"prompt\"}"
        ),
        Some(93.0),
        "{text}"
    );
}
