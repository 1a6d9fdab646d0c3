use std::time::Duration;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_streams_in_flight() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.script(|s| s.frame_delay = Duration::from_millis(100));
    let warden = Warden::start(&config_for(&[&upstream], "")).await;
    let response = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(response.status(), 200);
    warden.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = client().get(warden.url("/healthz")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown began");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        streamed_text(&sse_chunks(&text)),
        fixture_text("ollama/chat_stream.ndjson")
    );
}

#[tokio::test]
async fn the_drain_deadline_ends_a_stream_that_would_not_finish() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = Duration::from_millis(900));
    let config =
        config_for(&[&upstream], "").replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 300");
    let mut warden = Warden::start(&config).await;
    let _response = warden.post("/v1/chat/completions", chat_body(true)).await;
    warden.shutdown.cancel();
    let served = tokio::time::timeout(Duration::from_secs(3), &mut warden.task).await;
    let result = served
        .expect("serve returned after the drain deadline")
        .unwrap();
    assert!(result.is_ok());
}
