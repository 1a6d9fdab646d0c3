//! API keys: who may call, which models they see, and how a wrong key is answered.

use serde_json::json;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

/// Two models, and keys: `full` (both models), `narrow` (only `small`, by env reference).
async fn setup() -> (FakeUpstream, Warden) {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let config = format!(
        "{}\n[[models]]\nid = \"small\"\ntargets = [{{ backend = \"b0\", model = \"llama3.2\" }}]\n\
         [[keys]]\nname = \"full\"\nkey_sha256 = \"{}\"\ntenant = \"acme\"\n\
         [[keys]]\nname = \"narrow\"\nkey = \"env:NARROW_KEY\"\nmodels = [\"small\"]\n",
        config_for(&[&upstream], ""),
        sha256_hex("sk-full-key")
    );
    let env = warden::config::MapEnv::default().with("NARROW_KEY", "sk-narrow-key");
    let warden = Warden::start_with_env(&config, env).await;
    (upstream, warden)
}

fn chat(warden: &Warden, key: Option<&str>, model: &str) -> reqwest::RequestBuilder {
    let request = client()
        .post(warden.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_a_401_in_the_openai_shape() {
    let (upstream, warden) = setup().await;
    for key in [None, Some("sk-wrong"), Some("")] {
        let response = chat(&warden, key, "llama3.2").send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    assert_eq!(upstream.calls(), 0);
    assert_eq!(
        warden.get("/healthz").await.status(),
        200,
        "health needs no key"
    );
}

#[tokio::test]
async fn keys_see_and_use_only_their_models() {
    let (upstream, warden) = setup().await;
    assert_eq!(
        chat(&warden, Some("sk-full-key"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat(&warden, Some("sk-narrow-key"), "small")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let denied = chat(&warden, Some("sk-narrow-key"), "llama3.2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        denied.status(),
        404,
        "a model the key may not use is answered like an unknown one"
    );
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(upstream.calls(), 2);

    let list = |key: &'static str| {
        let url = warden.url("/v1/models");
        async move {
            let body: serde_json::Value = client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("sk-full-key").await, vec!["llama3.2", "small"]);
    assert_eq!(list("sk-narrow-key").await, vec!["small"]);
    let hidden = client()
        .get(warden.url("/v1/models/llama3.2"))
        .bearer_auth("sk-narrow-key")
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn non_admin_keys_cannot_use_the_admin_routes() {
    let (_upstream, warden) = setup().await;
    let response = client()
        .get(warden.url("/v1/collections"))
        .bearer_auth("sk-full-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
}

#[test]
fn serving_beyond_loopback_without_keys_needs_an_explicit_choice() {
    let text = "[server]\nlisten = \"0.0.0.0:8080\"\n[backends.b]\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:9\"\n[[models]]\nid = \"m\"\ntargets = [{ backend = \"b\", model = \"x\" }]\n";
    let parse = |text: &str| {
        warden::config::Config::parse(
            text,
            std::path::Path::new("w.toml"),
            &warden::config::MapEnv::default(),
        )
    };
    let err = parse(text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("server.listen"));
    assert!(err.message.contains("allow_anonymous"), "{err}");
    let allowed = text.replace(
        "listen = \"0.0.0.0:8080\"",
        "listen = \"0.0.0.0:8080\"\nallow_anonymous = true",
    );
    assert!(parse(&allowed).is_ok());
    let with_key = format!(
        "{text}[[keys]]\nname = \"k\"\nkey_sha256 = \"{}\"\n",
        sha256_hex("x")
    );
    assert!(parse(&with_key).is_ok());
    let bad_hash = format!("{text}[[keys]]\nname = \"k\"\nkey_sha256 = \"abc\"\n");
    assert_eq!(
        parse(&bad_hash).unwrap_err().key.as_deref(),
        Some("keys[0].key_sha256")
    );
    let inline = format!("{text}[[keys]]\nname = \"k\"\nkey = \"sk-inline\"\n");
    let err = parse(&inline).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("keys[0].key"));
    assert!(!err.to_string().contains("sk-inline"));
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_openai_headers() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let config = format!(
        "{}\n[[keys]]\nname = \"limited\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 3\n",
        config_for(&[&upstream], ""),
        sha256_hex("sk-limited")
    );
    let warden = Warden::start(&config).await;
    for expected_remaining in ["2", "1", "0"] {
        let response = chat(&warden, Some("sk-limited"), "llama3.2")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            response.headers()["x-ratelimit-remaining-requests"],
            expected_remaining
        );
        assert!(
            response
                .headers()
                .contains_key("x-ratelimit-reset-requests")
        );
    }
    let limited = chat(&warden, Some("sk-limited"), "llama3.2")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one request comes back every 20 s: {retry_after}"
    );
    assert_eq!(limited.headers()["x-ratelimit-remaining-requests"], "0");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn streams_count_as_in_flight_until_they_end() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = std::time::Duration::from_millis(100));
    let config = format!(
        "{}\n[[keys]]\nname = \"one\"\nkey_sha256 = \"{}\"\nmax_concurrent = 1\n[limits]\nmax_concurrent_requests = 2\n",
        config_for(&[&upstream], ""),
        sha256_hex("sk-one")
    );
    let warden = Warden::start(&config).await;
    let stream = |key: &str| {
        client()
            .post(warden.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(true))
            .send()
    };
    let first = stream("sk-one").await.unwrap();
    assert_eq!(first.status(), 200);
    let second = stream("sk-one").await.unwrap();
    assert_eq!(
        second.status(),
        429,
        "the key's one slot is taken by the running stream"
    );
    let text = first.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let third = stream("sk-one").await.unwrap();
    assert_eq!(
        third.status(),
        200,
        "the slot came back when the stream ended"
    );
    drop(third);
}

#[tokio::test]
async fn past_the_replica_limit_requests_get_503_at_once() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = std::time::Duration::from_millis(100));
    let warden = Warden::start(&config_for(&[&upstream], "").replace(
        "[server]",
        "[limits]\nmax_concurrent_requests = 1\n[server]",
    ))
    .await;
    let first = warden.post("/v1/chat/completions", chat_body(true)).await;
    assert_eq!(first.status(), 200);
    let second = warden.post("/v1/chat/completions", chat_body(false)).await;
    // Had it been queued, it would have waited for the stream and answered 200.
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_overloaded");
    drop(first);
}

#[tokio::test]
async fn the_token_budget_counts_the_prompt_before_and_the_usage_after() {
    // The recorded completion reports 41 tokens in all; a budget of 60 per minute lets one
    // request through whole, then the next waits.
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let config = format!(
        "{}\n[[keys]]\nname = \"tokens\"\nkey_sha256 = \"{}\"\ntokens_per_minute = 60\n",
        config_for(&[&upstream], ""),
        sha256_hex("sk-tokens")
    );
    let warden = Warden::start(&config).await;
    let first = chat(&warden, Some("sk-tokens"), "llama3.2")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "60");
    let remaining: u32 = first.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining >= 55,
        "only the short prompt was taken before: {remaining}"
    );
    let second = chat(&warden, Some("sk-tokens"), "llama3.2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        200,
        "the first usage (41) left room for this prompt"
    );
    let third = chat(&warden, Some("sk-tokens"), "llama3.2")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429, "the two usages drained the budget");
    assert_eq!(third.headers()["x-ratelimit-remaining-tokens"], "0");
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
    let huge = client()
        .post(warden.url("/v1/chat/completions"))
        .bearer_auth("sk-tokens")
        .json(&json!({"model": "llama3.2", "messages": [{"role": "user", "content": "word ".repeat(400)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        huge.status(),
        400,
        "a prompt bigger than the whole budget can never pass"
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn a_reload_swaps_the_keys_and_a_bad_file_keeps_them() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let base = config_for(&[&upstream], "");
    let key = |name: &str, secret: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n",
            sha256_hex(secret)
        )
    };
    let dir = std::env::temp_dir().join(format!("warden-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warden.toml");
    std::fs::write(&path, format!("{base}\n{}", key("first", "sk-first"))).unwrap();
    let config = warden::config::Config::load(&path, &warden::config::MapEnv::default()).unwrap();
    let state = warden::SharedState::new(warden::AppState::new(config).unwrap());
    let warden = Warden::serve_state(state.clone()).await;
    assert_eq!(
        chat(&warden, Some("sk-second"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    std::fs::write(
        &path,
        format!(
            "{base}\n{}{}",
            key("first", "sk-first"),
            key("second", "sk-second")
        ),
    )
    .unwrap();
    warden::cli::reload(&state).await;
    assert_eq!(
        chat(&warden, Some("sk-second"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat(&warden, Some("sk-first"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    std::fs::write(
        &path,
        format!(
            "{base}\n{}\nunknown_section_key = 1\n",
            key("first", "sk-first")
        ),
    )
    .unwrap();
    warden::cli::reload(&state).await;
    assert_eq!(
        chat(&warden, Some("sk-second"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "a file that does not validate keeps the keys in force"
    );
    std::fs::write(&path, format!("{base}\n{}", key("first", "sk-first"))).unwrap();
    warden::cli::reload(&state).await;
    assert_eq!(
        chat(&warden, Some("sk-second"), "llama3.2")
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "a revoked key stops working"
    );
}
