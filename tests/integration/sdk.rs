//! The official `openai` SDKs against Warden, the real clients that users point at it: the Python
//! package (pytest, in the venv of `make sdk-venv`) and the Node package (npm, `make sdk-node`).

use std::process::Command;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

/// Warden in front of a fake Ollama (`llama3.2`, also the guard: "hotwire" is unsafe) and a fake
/// OpenAI-compatible backend (`llama3.2-vllm`), with the embedding model: what both SDK tests
/// drive. The fakes are returned too: they must outlive the test.
/// The fake upstreams behind the SDK tests' Warden.
struct Upstreams {
    /// `llama3.2`, and the guard.
    ollama: FakeUpstream,
    /// `llama3.2-vllm`.
    _openai: FakeUpstream,
    /// `llama3.2-tools`: answers every chat with a tool call.
    _tools: FakeUpstream,
}

async fn sdk_warden() -> (Upstreams, Warden) {
    let ollama = FakeUpstream::start(Flavor::Ollama).await;
    let openai = FakeUpstream::start(Flavor::OpenAi).await;
    let tools = FakeUpstream::start(Flavor::Ollama).await;
    tools.script(|s| {
        s.body_fixture = "ollama/chat_tool.json".to_owned();
        s.stream_fixture = "ollama/chat_tool_stream.ndjson".to_owned();
    });
    let config = format!(
        "[backends.local]\nkind = \"ollama\"\nbase_url = \"{}\"\n\
         [backends.vllm]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"local\", model = \"llama3.2:1b\" }}]\n\
         [[models]]\nid = \"llama3.2-vllm\"\ntargets = [{{ backend = \"vllm\", model = \"llama3.2\" }}]\n\
         [backends.tools]\nkind = \"ollama\"\nbase_url = \"{}\"\n\
         [[models]]\nid = \"llama3.2-tools\"\ntargets = [{{ backend = \"tools\", model = \"llama3.2:1b\" }}]\n",
        ollama.base_url(),
        openai.base_url(),
        tools.base_url()
    );
    let policies = policy_dir(
        "sdk",
        &[(
            "default",
            &test_policy("refusal = \"I can't help with that.\"", 1000, "buffered"),
        )],
    );
    let config = format!(
        "{config}\n[guard]\nbackend = \"local\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n[embeddings]\nmodel_dir = \"{}\"\n",
        policies.display(),
        crate::retrieval::model_dir()
    );
    ollama.guard(|g| {
        g.rules.push((
            "hotwire".to_owned(),
            "unsafe\n{Non-Violent Crimes}".to_owned(),
        ))
    });
    let warden = Warden::start(&config).await;
    let upstreams = Upstreams {
        ollama,
        _openai: openai,
        _tools: tools,
    };
    (upstreams, warden)
}

/// Runs an SDK's test script against `warden` (its URL and the text the fixture streams in
/// the environment) and fails the test with its output unless it passed; its stdout.
async fn run_against(mut command: Command, warden: &Warden) -> String {
    command
        .env("WARDEN_BASE_URL", format!("http://{}/v1", warden.addr))
        .env(
            "WARDEN_EXPECTED_TEXT",
            fixture_text("ollama/chat_stream.ndjson"),
        );
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK tests failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test]
#[ignore = "needs the Python venv with the openai SDK (OPENAI_SDK_PYTHON); `make test` runs it"]
async fn the_openai_python_sdk_works_against_warden() {
    let python = std::env::var("OPENAI_SDK_PYTHON")
        .expect("OPENAI_SDK_PYTHON must point at the venv's python");
    let (upstreams, warden) = sdk_warden().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/test_openai_sdk.py");
    let mut pytest = Command::new(python);
    pytest.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", script]);
    let stdout = run_against(pytest, &warden).await;
    assert!(stdout.contains("20 passed"), "{stdout}");
    tool_results_reached_the_model_and_the_guard(&upstreams.ollama);
}

/// The Responses tool round trip of both SDK tests sends the function's output back: it must
/// reach the model as a tool turn after the assistant's call, and the guard must judge it.
fn tool_results_reached_the_model_and_the_guard(ollama: &FakeUpstream) {
    let sent = ollama
        .received()
        .into_iter()
        .map(|r| r.body)
        .find(|body| body.to_string().contains(TOOL_RESULT))
        .expect("no chat request carried the tool result");
    let messages = sent["messages"].as_array().unwrap();
    let at = messages
        .iter()
        .position(|m| m["role"] == "tool" && m["content"] == TOOL_RESULT)
        .expect("the tool result is not a tool turn");
    let call = &messages[at - 1];
    assert_eq!(call["role"], "assistant", "{sent}");
    assert_eq!(
        call["tool_calls"][0]["function"]["name"],
        "get_current_weather"
    );
    assert!(
        ollama
            .guard_prompts()
            .iter()
            .any(|prompt| prompt.contains(TOOL_RESULT)),
        "the guard did not judge the tool result"
    );
}

/// What the SDK tests' weather function returns.
const TOOL_RESULT: &str = "18 degrees and sunny";

#[tokio::test]
#[ignore = "needs the Node SDK (OPENAI_NODE_MODULES, from `make sdk-node`); `make test` runs it"]
async fn the_openai_node_sdk_works_against_warden() {
    let modules = std::env::var("OPENAI_NODE_MODULES")
        .expect("OPENAI_NODE_MODULES must name the node_modules that `make sdk-node` filled");
    let (upstreams, warden) = sdk_warden().await;
    let mut node = Command::new("node");
    node.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/test_openai_sdk.mjs"
    ))
    .env("OPENAI_NODE_MODULES", modules);
    let stdout = run_against(node, &warden).await;
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
    tool_results_reached_the_model_and_the_guard(&upstreams.ollama);
}

#[tokio::test]
#[ignore = "needs the Python venv with the openai SDK (OPENAI_SDK_PYTHON); `make test` runs it"]
async fn the_openai_python_sdk_raises_access_errors() {
    let hex = sha256_hex;
    let python = std::env::var("OPENAI_SDK_PYTHON")
        .expect("OPENAI_SDK_PYTHON must point at the venv's python");
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let config = format!(
        "{}\n[[models]]\nid = \"small\"\ntargets = [{{ backend = \"b0\", model = \"llama3.2\" }}]\n\
         [[keys]]\nname = \"narrow\"\nkey_sha256 = \"{}\"\nmodels = [\"small\"]\n\
         [[keys]]\nname = \"limited\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 2\n\
         [[keys]]\nname = \"admin\"\nkey_sha256 = \"{}\"\nadmin = true\n",
        config_for(&[&upstream], ""),
        hex("sk-narrow"),
        hex("sk-limited"),
        hex("sk-admin")
    );
    let warden = Warden::start(&config).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/test_openai_sdk_access.py"
    );
    let base_url = format!("http://{}/v1", warden.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", script])
            .env("WARDEN_BASE_URL", base_url)
            .env("NARROW_KEY", "sk-narrow")
            .env("LIMITED_KEY", "sk-limited")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "SDK access tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("4 passed"), "{stdout}");

    // What the SDK run caused, as operators see it: per key, its requests, its refusal, and the
    // tokens the backend reported for its two answers.
    let metrics = warden.get("/metrics").await.text().await.unwrap();
    let series = |name: &str| -> f64 {
        metric(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let chat = "route=\"/v1/chat/completions\",model=\"llama3.2\"";
    assert_eq!(
        series(&format!(
            "warden_requests_total{{{chat},key=\"limited\",status=\"200\"}}"
        )),
        2.0
    );
    // The limit refuses before the body (and so the model) is read.
    assert_eq!(
        series(
            "warden_requests_total{route=\"/v1/chat/completions\",model=\"\",key=\"limited\",status=\"429\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&format!(
            "warden_requests_total{{{chat},key=\"narrow\",status=\"404\"}}"
        )),
        1.0
    );
    assert_eq!(
        series(
            "warden_requests_total{route=\"/v1/chat/completions\",model=\"\",key=\"-\",status=\"401\"}"
        ),
        1.0,
        "a wrong key is counted, under no key name"
    );
    assert_eq!(
        series("warden_rate_limited_total{key=\"limited\",reason=\"requests_per_minute\"}"),
        1.0
    );
    let usage: serde_json::Value =
        serde_json::from_str(&crate::fake_upstream::fixture("openai/chat.json")).unwrap();
    for direction in ["prompt", "completion"] {
        let per_answer = usage["usage"][format!("{direction}_tokens")]
            .as_f64()
            .unwrap();
        assert_eq!(
            series(&format!(
                "warden_tokens_total{{key=\"limited\",direction=\"{direction}\"}}"
            )),
            2.0 * per_answer,
            "{direction}"
        );
    }
    assert!(!metrics.contains("sk-"), "no key material in the metrics");
}
