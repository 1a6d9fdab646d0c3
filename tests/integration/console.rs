//! The web console: its files and their headers, the admin views it reads (audit, policies,
//! documents), the same-origin rule, and the whole console in a real headless Chromium.

use serde_json::{Value, json};
use std::process::Command;

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

const ADMIN: &str = "console-admin-token";

/// A Warden with the console, the admin token, a guard that blocks "hotwire" (S2), an audit log
/// (with content or not), a key `team`, and `extra` config (a knowledge base).
async fn console_warden(
    test: &str,
    include_content: bool,
    extra: &str,
) -> (FakeUpstream, Warden, std::path::PathBuf) {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    upstream.guard(|g| {
        g.rules.push((
            "hotwire".to_owned(),
            "unsafe\n{Non-Violent Crimes}".to_owned(),
        ))
    });
    let policies = policy_dir(test, &[("default", &test_policy("", 1000, "buffered"))]);
    let audit = std::env::temp_dir().join(format!("warden-{test}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let config = format!(
        "{}\n[guard]\nbackend = \"b0\"\nmodel = \"llama-guard3:1b\"\npolicies_dir = \"{}\"\n\
         [audit]\npath = \"{}\"\ninclude_content = {include_content}\n[console]\nenabled = true\n\
         [[keys]]\nname = \"team\"\nkey_sha256 = \"{}\"\n{extra}",
        config_for(&[&upstream], "admin_token = \"env:CONSOLE_ADMIN_TOKEN\""),
        policies.display(),
        audit.display(),
        sha256_hex("sk-team"),
    );
    let warden = Warden::start_with_env(
        &config,
        warden::config::MapEnv::default().with("CONSOLE_ADMIN_TOKEN", ADMIN),
    )
    .await;
    (upstream, warden, audit)
}

async fn get_as(warden: &Warden, token: &str, path: &str) -> reqwest::Response {
    client()
        .get(warden.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn ask_as(warden: &Warden, token: &str, text: &str) -> u16 {
    client()
        .post(warden.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "llama3.2", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_console_is_off_unless_enabled_and_is_sent_under_a_strict_policy() {
    let upstream = FakeUpstream::start(Flavor::Ollama).await;
    let off = Warden::start(&config_for(&[&upstream], "")).await;
    let response = off.get("/console").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (_upstream, warden, _) = console_warden("console-files", false, "").await;
    let page = warden.get("/console").await;
    assert_eq!(
        page.status(),
        200,
        "the page needs no key: it holds no data"
    );
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let policy = headers["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(rule), "{policy}");
    }
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.get("set-cookie").is_none());
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/console/console.js") && !html.contains("<script>"),
        "no inline script"
    );
    let script = warden.get("/console/console.js").await;
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(!script.text().await.unwrap().contains(ADMIN));
    assert_eq!(warden.get("/console/secrets.toml").await.status(), 404);
}

#[tokio::test]
async fn the_audit_view_filters_entries_and_withholds_content_the_config_does_not_record() {
    let (_upstream, warden, _) = console_warden("console-audit", false, "").await;
    assert_eq!(
        ask_as(&warden, "sk-team", "How do I hotwire a car?").await,
        200
    );
    assert_eq!(
        ask_as(&warden, "sk-team", "Why is the sky blue?").await,
        200
    );

    let audit = |query: &'static str| {
        let warden = &warden;
        async move {
            let response = get_as(warden, ADMIN, &format!("/v1/admin/audit{query}")).await;
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Value>().await.unwrap()
        }
    };
    let all = audit("").await;
    assert_eq!(all["enabled"], true);
    assert_eq!(all["includes_content"], false);
    assert_eq!(
        all["matched"], 1,
        "safe verdicts are not audit events: {all}"
    );
    let entry = &all["data"][0];
    assert_eq!(entry["key"], "team");
    assert_eq!(entry["verdict"], "blocked");
    assert_eq!(entry["categories"], json!(["S2"]));
    assert!(entry.get("content").is_none());
    assert_eq!(
        audit("?category=S2&decision=blocked&key=team&turn=input").await["matched"],
        1
    );
    assert_eq!(audit("?decision=flagged").await["matched"], 0);
    assert_eq!(audit("?key=someone-else").await["matched"], 0);
    assert_eq!(audit("?since=2999-01-01T00:00:00Z").await["matched"], 0);
    assert_eq!(audit("?until=2999-01-01T00:00:00Z").await["matched"], 1);

    let response = get_as(&warden, ADMIN, "/v1/admin/audit?verdict=blocked").await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "verdict");
    assert_eq!(
        get_as(&warden, "sk-team", "/v1/admin/audit").await.status(),
        403
    );
    assert_eq!(warden.get("/v1/admin/audit").await.status(), 401);
    // A page of another site cannot use a token the browser holds.
    let cross_site = client()
        .get(warden.url("/v1/admin/audit"))
        .bearer_auth(ADMIN)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
}

#[tokio::test]
async fn the_policies_view_lists_each_policy_with_who_uses_it() {
    let (_upstream, warden, _) = console_warden("console-policies", true, "").await;
    let body: Value = get_as(&warden, ADMIN, "/v1/admin/policies")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["enabled"], true);
    assert_eq!(body["last_reload"], Value::Null, "not reloaded since start");
    let policy = &body["data"][0];
    assert_eq!(policy["name"], "default");
    assert_eq!(policy["default"], true);
    assert_eq!(policy["stream_mode"], "buffered");
    assert_eq!(policy["on_block"], "refusal");
    let s2 = policy["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "S2")
        .unwrap();
    assert_eq!(s2["action"], "block");
    assert!(
        !body.to_string().contains("sha256"),
        "no key hashes: {body}"
    );
}

#[tokio::test]
#[ignore = "needs Milvus, the embedding model, Debian's chromium and playwright-core (make test)"]
async fn the_console_works_in_a_real_headless_chromium() {
    let chromium = std::env::var("CHROMIUM_BIN").expect("CHROMIUM_BIN (make test sets it)");
    let modules =
        std::env::var("PLAYWRIGHT_MODULES").expect("PLAYWRIGHT_MODULES (make test sets it)");
    let collection = crate::store::unique("console");
    let (_upstream, warden, audit) = console_warden(
        "console-browser",
        true,
        &crate::retrieval::knowledge_config(),
    )
    .await;
    let ingested = client()
        .post(warden.url(&format!("/v1/collections/{collection}/documents")))
        .bearer_auth(ADMIN)
        .json(&json!({"create": true, "source": "kestrel.md", "text": "# Kestrel routers\n\nTo reset the Kestrel K7 router to factory settings, hold the recessed button on the back for twelve seconds until the light blinks amber."}))
        .send()
        .await
        .unwrap();
    assert_eq!(ingested.status(), 200);

    // Screenshots land in docs/console/ when asked (CONSOLE_SCREENSHOTS=docs/console), else in
    // a temporary folder.
    let shots = match std::env::var("CONSOLE_SCREENSHOTS") {
        Ok(dir) => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
        Err(_) => std::env::temp_dir().join(format!("warden-console-{}", std::process::id())),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/console/console.test.mjs"
    );
    let mut node = Command::new("node");
    node.arg(script)
        .env("WARDEN_URL", format!("http://{}", warden.addr))
        .env("ADMIN_TOKEN", ADMIN)
        .env("COLLECTION", &collection)
        .env("CHROMIUM_BIN", chromium)
        .env("PLAYWRIGHT_MODULES", modules)
        .env("SCREENSHOT_DIR", &shots);
    let output = tokio::task::spawn_blocking(move || node.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all passed"),
        "console test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for page in [
        "login",
        "overview",
        "audit",
        "policies",
        "knowledge",
        "playground",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{page}.png");
    }

    // What the browser did went through the admin routes: the audit file has the block, and
    // the uploaded document was deleted again while the first stays.
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"blocked\"") && l.contains("hotwire")),
        "{log}"
    );
    let documents: Value = get_as(
        &warden,
        ADMIN,
        &format!("/v1/collections/{collection}/documents"),
    )
    .await
    .json()
    .await
    .unwrap();
    let sources: Vec<&str> = documents["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["source"].as_str())
        .collect();
    assert_eq!(sources, ["kestrel.md"], "{documents}");
}
