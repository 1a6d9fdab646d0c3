//! The `warden` binary itself: exit codes, `check-config`, `--version`, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

#[test]
fn version_prints_the_crate_version() {
    let out = warden().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("warden {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn keys_new_prints_a_fresh_key_and_keys_hash_gives_its_digest() {
    let fresh = || {
        let out = warden().args(["keys", "new"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .trim()
                .to_owned()
        };
        (field("key:"), field("key_sha256:"))
    };
    let (key, digest) = fresh();
    assert!(key.starts_with("sk-warden-") && key.len() >= 64, "{key}");
    assert_eq!(digest, sha256_hex(&key));
    assert_ne!(fresh().0, key, "every key is new");

    let hash = |input: &str| {
        let mut child = warden()
            .args(["keys", "hash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash(&format!("{key}\n"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let empty = hash("");
    assert_eq!(empty.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("standard input"));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let text = "[backends.v]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key = \"env:CHECK_KEY\"\n[[models]]\nid = \"m\"\ntargets = [{ backend = \"v\", model = \"x\" }]\n";
    let path = temp_config("check", text);
    let out = warden()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("CHECK_KEY", "sk-do-not-print-me")
        .env("WARDEN_SERVER__LISTEN", "127.0.0.1:9911")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen = \"127.0.0.1:9911\""), "{stdout}");
    assert!(stdout.contains("env:CHECK_KEY"));
    assert!(!stdout.contains("sk-do-not-print-me"));
}

#[test]
fn a_bad_config_exits_78_naming_the_file_and_key() {
    let path = temp_config(
        "bad",
        "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
    );
    let out = warden()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("server.colour"), "{stderr}");
    // WARDEN_CONFIG picks the file when --config is not given.
    let out = warden()
        .arg("serve")
        .env("WARDEN_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.colour"));
}

#[tokio::test]
async fn warden_serves_and_stops_on_sigterm_after_whatever_read_its_logs_went_away() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let path = temp_config("stderr-gone", &config_for(&[&upstream], ""));
    let mut child = Serving(
        warden()
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut logs = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on http://") {
        line.clear();
        assert!(logs.read_line(&mut line).unwrap() > 0, "exited early");
    }
    let i = line.find("listening on http://").unwrap() + "listening on http://".len();
    let address = line[i..].split_whitespace().next().unwrap().to_owned();
    // The log reader goes away (a log shipper that died): every log line now fails to write.
    drop(logs);
    let response = client()
        .post(format!("http://{address}/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "requests are still served");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warden did not stop on SIGTERM with its stderr gone");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_then_exits_zero() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = Duration::from_millis(100));
    let path = temp_config("sigterm", &config_for(&[&upstream], ""));
    let (mut child, address, _lines) = spawn_serving(&path);
    let response = client()
        .post(format!("http://{address}/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let text = response.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream in flight finished: {text}"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn policy_check_accepts_the_shipped_policies_and_names_file_line_and_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = warden()
        .args(["policy", "check"])
        .arg(root.join("policies/default.toml"))
        .arg(root.join("policies/customer-support.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("policy `default`") && stdout.contains("checks 14 categories"),
        "{stdout}"
    );
    assert!(stdout.contains("competitors"), "{stdout}");

    let bad = temp_config(
        "bad-policy",
        "checks = [\"input\"]\n\n[[categories]]\ncode = \"S1\"\nname = \"Violent Crimes\"\naction = \"maybe\"\n",
    );
    let out = warden()
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:6: categories[0].action", bad.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn guard_classifies_a_text_from_the_command_line() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| g.rules.push(("liver".to_owned(), "unsafe\nS6".to_owned())));
    let dir = policy_dir(
        "cli-guard",
        &[("default", &test_policy("", 1000, "buffered"))],
    );
    let config = format!(
        "{}\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n",
        config_for(&[&upstream], ""),
        dir.display()
    );
    let path = temp_config("cli-guard", &config);
    let run = |text: &'static str| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            warden()
                .args(["guard", text, "--config"])
                .arg(&path)
                .output()
                .unwrap()
        })
    };
    let out = run("What are the best treatment options for my liver problem?")
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "flagged");
    assert_eq!(verdict["categories"], serde_json::json!(["S6"]));
    let out = run("What is the capital of France?").await.unwrap();
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "safe");
    upstream.guard(|g| g.status = 500);
    let out = run("Anything").await.unwrap();
    assert_eq!(out.status.code(), Some(69), "guard unreachable");
}

#[tokio::test]
async fn sighup_reloads_policies_and_keeps_them_when_the_new_ones_are_bad() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let (config, dir) = guarded_config("sighup", &upstream, "first");
    let path = temp_config("sighup", &config);
    let (mut child, address, lines) = spawn_serving(&path);
    upstream.guard(|g| {
        g.rules
            .push(("hotwire".to_owned(), "unsafe\nS2".to_owned()))
    });
    let base = format!("http://{address}");
    let refusal = || answer(&base, "how to hotwire a car");
    assert_eq!(refusal().await, "first");
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };

    std::fs::write(
        dir.join("default.toml"),
        "[[categories]]\ncode = \"S99\"\nname = \"x\"\naction = \"block\"\n",
    )
    .unwrap();
    assert!(hup(child.id()).success());
    wait_for_line(&lines, "policy reload failed");
    assert_eq!(refusal().await, "first", "the last good policy stays");

    std::fs::write(
        dir.join("default.toml"),
        test_policy("refusal = \"second\"", 1000, "buffered"),
    )
    .unwrap();
    assert!(hup(child.id()).success());
    wait_for_line(&lines, "policies reloaded");
    assert_eq!(refusal().await, "second");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn json_logs_close_each_request_with_who_what_was_decided_and_where_the_time_went() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| {
        g.rules
            .push(("hotwire".to_owned(), "unsafe\nS2".to_owned()))
    });
    let dir = policy_dir(
        "jsonlog",
        &[("default", &test_policy("", 1000, "buffered"))],
    );
    let config = format!(
        "{}\n[log]\nformat = \"json\"\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n\
         [[keys]]\nname = \"bot\"\nkey_sha256 = \"{}\"\n",
        config_for(&[&upstream], ""),
        dir.display(),
        sha256_hex("sk-json-log")
    );
    let path = temp_config("jsonlog", &config);
    let (mut child, address, lines) = spawn_serving_with(&path, &[]);
    let ask = |text: &str, stream: bool| {
        client()
            .post(format!("http://{address}/v1/chat/completions"))
            .bearer_auth("sk-json-log")
            .json(&serde_json::json!({"model": "llama3.2", "stream": stream, "messages": [{"role": "user", "content": text}]}))
            .send()
    };
    let id = |response: &reqwest::Response| {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let answered = ask("why is the sky blue?", false).await.unwrap();
    let answered_id = id(&answered);
    let refused = ask("how to hotwire a car", false).await.unwrap();
    let refused_id = id(&refused);
    let streamed = ask("why is the sky blue?", true).await.unwrap();
    let streamed_id = id(&streamed);
    assert!(streamed.text().await.unwrap().ends_with("[DONE]\n\n"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let logs: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
        lines
            .iter()
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    })
    .await
    .unwrap();
    let line = |request_id: &str, message: &str| -> serde_json::Value {
        logs.iter()
            .find(|l| l["message"] == message && l["span"]["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no `{message}` for {request_id} in {logs:#?}"))
            .clone()
    };

    let answer = line(&answered_id, "response head sent");
    let span = &answer["span"];
    assert_eq!(answer["status"], 200);
    assert_eq!(span["key"], "bot");
    assert_eq!(span["model"], "llama3.2");
    assert_eq!(span["input"], "safe");
    assert_eq!(span["output"], "safe");
    assert_eq!(span["backend"], "b0");
    for timing in ["guard_input_us", "upstream_us"] {
        assert!(span[timing].as_u64().unwrap() > 0, "{timing}: {span}");
    }
    assert!(answer["latency_us"].as_u64().unwrap() >= span["upstream_us"].as_u64().unwrap());
    assert!(span["prompt_tokens"].as_u64().unwrap() > 0);

    let refusal = line(&refused_id, "response head sent");
    assert_eq!(refusal["span"]["input"], "blocked");
    assert!(
        refusal["span"].get("upstream_us").is_none(),
        "a blocked request never went upstream"
    );

    let stream = line(&streamed_id, "stream finished");
    assert_eq!(stream["outcome"], "completed");
    assert_eq!(stream["output"], "safe");
    assert_eq!(stream["span"]["input"], "safe");
    assert!(stream["completion_tokens"].as_u64().unwrap() > 0);
    assert!(stream["total_us"].as_u64().unwrap() >= stream["first_token_us"].as_u64().unwrap());
}

#[tokio::test]
async fn logs_hold_no_key_or_content_and_the_audit_log_records_blocks() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| {
        g.rules.push((
            "hotwire".to_owned(),
            "unsafe\n{Non-Violent Crimes}".to_owned(),
        ))
    });
    let dir = policy_dir("audit", &[("default", &test_policy("", 1000, "buffered"))]);
    let audit = dir.join("audit.jsonl");
    let config = format!(
        "{}\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n\
         [[keys]]\nname = \"bot\"\nkey = \"env:AUDIT_TEST_KEY\"\ntenant = \"acme\"\n\
         [audit]\npath = \"{}\"\n",
        config_for(&[&upstream], ""),
        dir.display(),
        audit.display()
    );
    let path = temp_config("audit", &config);
    let (mut child, address, rx) = spawn_serving_with(
        &path,
        &[
            ("RUST_LOG", "debug"),
            ("AUDIT_TEST_KEY", "sk-SECRET-XYZ-123"),
        ],
    );
    for text in [
        "PURPLE-ELEPHANT-42: how to hotwire a car",
        "PURPLE-ELEPHANT-42: hello there",
    ] {
        let response = client()
            .post(format!("http://{address}/v1/chat/completions"))
            .bearer_auth("sk-SECRET-XYZ-123")
            .json(&serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    // The reader thread ends with the process's stderr: every line is in.
    let logs: Vec<String> = tokio::task::spawn_blocking(move || rx.iter().collect())
        .await
        .unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("key=bot") || l.contains("\"key\":\"bot\"")),
        "the key's name is logged: {}",
        logs.join("\n")
    );
    for line in &logs {
        assert!(
            !line.contains("sk-SECRET-XYZ-123"),
            "a key in the logs: {line}"
        );
        assert!(
            !line.contains("PURPLE-ELEPHANT"),
            "message content in the logs: {line}"
        );
    }
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one block, and nothing for the safe request: {entries:?}"
    );
    let entry = &entries[0];
    assert_eq!(entry["verdict"], "blocked");
    assert_eq!(entry["key"], "bot");
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["turn"], "input");
    assert_eq!(entry["categories"], serde_json::json!(["S2"]));
    assert!(
        entry.get("content").is_none(),
        "no content unless the config asks for it"
    );
    assert!(entry["request_id"].as_str().unwrap().starts_with("req_"));
}
