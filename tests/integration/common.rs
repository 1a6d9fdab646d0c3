//! Starting Warden in-process against fake upstreams, and reading its answers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warden::AppState;
use warden::config::{Config, MapEnv};

use crate::fake_upstream::{FakeUpstream, Flavor};

pub struct Warden {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Warden {
    pub async fn start(config_text: &str) -> Warden {
        Self::start_with_env(config_text, MapEnv::default()).await
    }

    pub async fn start_with_env(config_text: &str, env: MapEnv) -> Warden {
        let config = Config::parse(config_text, Path::new("test.toml"), &env)
            .unwrap_or_else(|err| panic!("test config: {err}"));
        Self::serve_state(AppState::new(config).unwrap()).await
    }

    /// Serves an already built state (a test keeps a clone of it to act on).
    pub async fn serve_state(state: impl Into<warden::SharedState>) -> Warden {
        let state: warden::SharedState = state.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(warden::serve(state, listener, shutdown.clone()));
        Warden {
            addr,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.unwrap()
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A config with one model `llama3.2` served by the given upstreams, in order.
pub fn config_for(upstreams: &[&FakeUpstream], extra: &str) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nsse_keep_alive_ms = 60000\nshutdown_grace_ms = 5000\n",
    );
    text.push_str(extra);
    text.push('\n');
    let mut targets = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        let (kind, model) = match upstream.state.flavor {
            Flavor::Ollama => ("ollama", "llama3.2:1b"),
            Flavor::OpenAi => ("openai", "llama3.2"),
        };
        text.push_str(&format!(
            "[backends.b{i}]\nkind = \"{kind}\"\nbase_url = \"{}\"\ndown_for_ms = 60000\n[backends.b{i}.timeouts]\nfirst_token_ms = 2000\nidle_ms = 2000\ntotal_ms = 10000\n",
            upstream.base_url()
        ));
        targets.push(format!("{{ backend = \"b{i}\", model = \"{model}\" }}"));
    }
    text.push_str(&format!(
        "[[models]]\nid = \"llama3.2\"\nbalance = \"round_robin\"\ntargets = [{}]\n",
        targets.join(", ")
    ));
    text
}

/// Starts one fake upstream and a Warden in front of it.
pub async fn single(flavor: Flavor) -> (FakeUpstream, Warden) {
    let upstream = FakeUpstream::start(flavor).await;
    let warden = Warden::start(&config_for(&[&upstream], "")).await;
    (upstream, warden)
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "stream": stream,
    })
}

/// The `data:` payloads of an SSE body, in order, with comments noted as `:`.
pub fn sse_data(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    for event in body.split("\n\n") {
        let mut data = Vec::new();
        for line in event.lines() {
            if let Some(rest) = line.strip_prefix("data:") {
                data.push(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
            } else if line.starts_with(':') {
                out.push(":".to_owned());
            }
        }
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// The JSON chunks of an SSE body (everything but `[DONE]` and comments).
pub fn sse_chunks(body: &str) -> Vec<serde_json::Value> {
    sse_data(body)
        .into_iter()
        .filter(|d| d != "[DONE]" && d != ":")
        .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}")))
        .collect()
}

/// The text of all content deltas.
pub fn streamed_text(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The text of all content pieces of a fixture.
pub fn fixture_text(name: &str) -> String {
    let text = crate::fake_upstream::fixture(name);
    if name.ends_with(".ndjson") {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["message"]["content"].as_str().map(str::to_owned))
            .collect()
    } else {
        streamed_text(&sse_chunks(&text))
    }
}

/// A folder of policy files for one test.
pub fn policy_dir(test: &str, policies: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-policies-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in policies {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }
    dir
}

/// A policy over Llama Guard's S1–S14 (S6 flagged, S8 allowed, the rest blocked), with
/// extra top-level lines and an `[output]` table.
pub fn test_policy(top: &str, window: usize, mode: &str) -> String {
    let mut text = format!("{top}\n[output]\nwindow_chars = {window}\nmode = \"{mode}\"\n");
    for (code, name) in warden::guard::policy::STANDARD_CATEGORIES {
        let action = match code {
            "S6" => "flag",
            "S8" => "allow",
            _ => "block",
        };
        text.push_str(&format!(
            "\n[[categories]]\ncode = \"{code}\"\nname = \"{name}\"\naction = \"{action}\"\n"
        ));
    }
    text
}

/// A config whose guard is `upstream` (model `llama-guard3:1b`) with one `default` policy that
/// answers `refusal`; also the policy folder, for a test that rewrites it.
pub fn guarded_config(
    test: &str,
    upstream: &FakeUpstream,
    refusal: &str,
) -> (String, std::path::PathBuf) {
    let dir = policy_dir(
        test,
        &[(
            "default",
            &test_policy(&format!("refusal = \"{refusal}\""), 1000, "buffered"),
        )],
    );
    let config = format!(
        "{}\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n",
        config_for(&[upstream], ""),
        dir.display()
    );
    (config, dir)
}

/// Warden with one chat upstream that also serves the guard model, and a policy folder.
pub async fn guarded(flavor: Flavor, test: &str, policy: &str) -> (FakeUpstream, Warden) {
    let upstream = FakeUpstream::start(flavor).await;
    let dir = policy_dir(test, &[("default", policy)]);
    let guard = format!(
        "[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\ntimeout_ms = 2000\ncontext_chars = 600\n",
        dir.display()
    );
    let warden = Warden::start(&format!("{}\n{guard}", config_for(&[&upstream], ""))).await;
    (upstream, warden)
}

/// The hex SHA-256 of a key, as `key_sha256` in the config wants it.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of one series (its name and labels exactly as rendered) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The text of the answer to one user message, asked at `base` (`http://HOST:PORT`).
pub async fn answer(base: &str, content: &str) -> String {
    let body: serde_json::Value = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer text in {body}"))
        .to_owned()
}

/// The `warden` binary, with no `WARDEN_*` override from around the test run.
pub fn warden() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    // Only what a test sets: any WARDEN_* variable around the test run would be an override.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("WARDEN_")) {
        command.env_remove(name);
    }
    command.env("NO_COLOR", "1");
    command
}

pub fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `warden serve` that a test started: killed when the test ends, even by a failed assertion,
/// so no server outlives its test.
pub struct Serving(pub std::process::Child);

impl std::ops::Deref for Serving {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `warden serve` and waits for the address it listens on.
pub fn spawn_serving(
    path: &std::path::Path,
) -> (Serving, String, std::sync::mpsc::Receiver<String>) {
    spawn_serving_with(path, &[("RUST_LOG", "info")])
}

/// [`spawn_serving`] with these environment variables.
pub fn spawn_serving_with(
    path: &std::path::Path,
    env: &[(&str, &str)],
) -> (Serving, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Serving(
        warden()
            .args(["serve", "--config"])
            .arg(path)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = wait_for_line(&rx, "listening on http://");
    let i = line.find("listening on http://").unwrap();
    // Text lines end the address with a space, JSON lines with a quote.
    let address = line[i + "listening on http://".len()..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':'))
        .next()
        .unwrap()
        .to_owned();
    (child, address, rx)
}

pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with `{needle}`"));
        if line.contains(needle) {
            return line;
        }
    }
}
