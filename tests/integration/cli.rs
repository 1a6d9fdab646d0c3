//! The `warden` binary itself: exit codes, `check-config`, `--version`, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

fn warden() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
    // Only what a test sets: any WARDEN_* variable around the test run would be an override.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("WARDEN_")) {
        command.env_remove(name);
    }
    command.env("NO_COLOR", "1");
    command
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

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
async fn sigterm_lets_a_stream_finish_then_exits_zero() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    upstream.script(|s| s.frame_delay = Duration::from_millis(100));
    let path = temp_config("sigterm", &config_for(&[&upstream], ""));
    let mut child = warden()
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log names the address it listens on.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let address = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no listening line");
        if let Some(i) = line.find("listening on http://") {
            break line[i + "listening on http://".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
        }
    };
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
