use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

#[tokio::test]
async fn a_failing_backend_is_skipped_and_marked_down() {
    let first = FakeUpstream::start(Flavor::OpenAi).await;
    let second = FakeUpstream::start(Flavor::Ollama).await;
    first.script(|s| {
        s.status = 503;
        s.body_fixture = "openai/error_400.json".into();
    });
    let warden = Warden::start(&config_for(&[&first, &second], "")).await;
    for stream in [false, true, false, true] {
        let response = warden.post("/v1/chat/completions", chat_body(stream)).await;
        assert_eq!(response.status(), 200, "served by the second backend");
        let _ = response.text().await.unwrap();
    }
    assert_eq!(first.calls(), 1, "marked down after its first failure");
    assert_eq!(second.calls(), 4);
}

#[tokio::test]
async fn an_unreachable_backend_fails_over_to_the_next() {
    let second = FakeUpstream::start(Flavor::OpenAi).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = format!(
        "[backends.gone]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         [backends.alive]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[models]]\nid = \"llama3.2\"\nbalance = \"round_robin\"\n\
         targets = [{{ backend = \"gone\", model = \"llama3.2:1b\" }}, {{ backend = \"alive\", model = \"llama3.2\" }}]\n",
        second.base_url()
    );
    let warden = Warden::start(&config).await;
    for _ in 0..3 {
        let text = warden
            .post("/v1/chat/completions", chat_body(true))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(
            streamed_text(&sse_chunks(&text)),
            fixture_text("openai/chat_stream_usage.sse")
        );
    }
    assert_eq!(second.calls(), 3);
}

#[tokio::test]
async fn nothing_is_retried_once_the_stream_began() {
    let first = FakeUpstream::start(Flavor::OpenAi).await;
    let second = FakeUpstream::start(Flavor::OpenAi).await;
    for upstream in [&first, &second] {
        upstream.script(|s| {
            s.break_after = Some(2);
            s.frame_delay = std::time::Duration::from_millis(20);
        });
    }
    let warden = Warden::start(&config_for(&[&first, &second], "")).await;
    let text = warden
        .post("/v1/chat/completions", chat_body(true))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"error\""));
    assert_eq!(
        first.calls() + second.calls(),
        1,
        "one backend, one attempt"
    );
}

#[tokio::test]
async fn round_robin_spreads_requests_over_healthy_backends() {
    let first = FakeUpstream::start(Flavor::OpenAi).await;
    let second = FakeUpstream::start(Flavor::OpenAi).await;
    let warden = Warden::start(&config_for(&[&first, &second], "")).await;
    for _ in 0..6 {
        assert_eq!(
            warden
                .post("/v1/chat/completions", chat_body(false))
                .await
                .status(),
            200
        );
    }
    assert_eq!((first.calls(), second.calls()), (3, 3));
}

#[tokio::test]
async fn least_in_flight_prefers_the_idle_backend() {
    let busy = FakeUpstream::start(Flavor::OpenAi).await;
    let idle = FakeUpstream::start(Flavor::OpenAi).await;
    busy.script(|s| s.frame_delay = std::time::Duration::from_millis(300));
    idle.script(|s| s.frame_delay = std::time::Duration::from_millis(300));
    let config = config_for(&[&busy, &idle], "").replace("round_robin", "least_in_flight");
    let warden = Warden::start(&config).await;
    // Hold two streams open; they must land on different backends.
    let a = warden.post("/v1/chat/completions", chat_body(true)).await;
    let b = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!((busy.calls(), idle.calls()), (1, 1));
    drop((a, b));
}
