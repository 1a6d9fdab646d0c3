//! Warden's overhead, measured side by side with the same load sent straight to the upstream.
//!
//! `make bench` (or `cargo run --release --example bench`) starts, as separate processes, a fake
//! OpenAI-compatible upstream (this program with `upstream PORT`) and the release `warden`
//! binary in front of it, then drives both with an open-loop load generator: requests are sent
//! on a fixed schedule whatever the latency (the table shows how late the generator sent
//! them: the send lag), and latency is counted from the send. It prints:
//!
//! - non-streaming latency p50/p90/p99/max at fixed rates, direct and through Warden, and the
//!   difference (Warden's overhead);
//! - streaming: time to first byte, direct and through Warden;
//! - per-chunk delivery latency: the upstream writes its send time (wall clock, nanoseconds)
//!   into each chunk's content and the client subtracts it from the arrival time.
//!
//! Options (environment): BENCH_SECONDS (per run, default 5), BENCH_RATES (default "500,1000"),
//! BENCH_STREAMS_PER_SEC (default 50).

#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a benchmark program: prints its table, and any failure should stop it loudly"
)]

mod support;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Process, free_port, pct};

const CHAT_JSON: &str = include_str!("../tests/fixtures/openai/chat.json");
const CHUNKS_PER_STREAM: usize = 20;
const CHUNK_INTERVAL: Duration = Duration::from_millis(5);

fn main() {
    support::bench_main(upstream, orchestrate);
}

// ---------------------------------------------------------------- the fake upstream process

fn wall_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn upstream(port: u16) {
    let app = Router::new()
        .route("/v1/chat/completions", post(upstream_chat))
        .route("/v1/completions", post(upstream_guard))
        .route(
            "/v1/models",
            get(|| async { "{\"object\":\"list\",\"data\":[]}" }),
        );
    support::serve_on(port, app).await;
}

async fn upstream_chat(body: Bytes) -> Response {
    let streaming = memchr_stream_true(&body);
    if !streaming {
        return ([("content-type", "application/json")], CHAT_JSON).into_response();
    }
    let frames = futures_util::stream::unfold(0usize, |i| async move {
        if i > CHUNKS_PER_STREAM {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(CHUNK_INTERVAL).await;
        }
        let frame = if i == CHUNKS_PER_STREAM {
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_owned()
        } else {
            format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
                wall_nanos()
            )
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(frame)), i + 1))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(frames),
    )
        .into_response()
}

/// The fake Llama Guard: "safe" after BENCH_GUARD_MS milliseconds.
async fn upstream_guard() -> Response {
    tokio::time::sleep(Duration::from_millis(env_or("BENCH_GUARD_MS", 25))).await;
    (
        [("content-type", "application/json")],
        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"guard\",\"choices\":[{\"index\":0,\"text\":\"safe\",\"finish_reason\":\"stop\"}]}",
    )
        .into_response()
}

fn memchr_stream_true(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("\"stream\":true")
}

// ---------------------------------------------------------------- orchestration

async fn wait_for(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

async fn orchestrate() {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "500,1000".to_owned())
        .split(',')
        .map(|r| r.trim().parse().unwrap())
        .collect();
    let streams_per_sec: u64 = env_or("BENCH_STREAMS_PER_SEC", 50);

    let me = std::env::current_exe().unwrap();
    let warden_bin = me.parent().unwrap().parent().unwrap().join("warden");
    assert!(
        warden_bin.exists(),
        "build the release binary first: cargo build --release"
    );

    let upstream_port = free_port();
    let _upstream = Process(
        Command::new(&me)
            .args(["upstream", &upstream_port.to_string()])
            .spawn()
            .unwrap(),
    );
    let dir = std::env::temp_dir().join(format!("warden-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let direct = format!("http://127.0.0.1:{upstream_port}/v1/chat/completions");
    wait_for(&format!("http://127.0.0.1:{upstream_port}/v1/models")).await;
    let (warden, through) = start_warden(&warden_bin, &dir, "plain", upstream_port, None).await;

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("# Warden benchmark");
    println!();
    println!("machine: {cores} cores; fake upstream, warden and load generator share them");
    println!(
        "open loop (requests leave on a fixed schedule), latency from the send, {seconds} s per run after a 1 s warm-up"
    );
    println!();
    println!("## Non-streaming: latency (ms) and Warden's overhead");
    println!();
    println!("| rate (req/s) | path | ok | errors | send lag p99 | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .build()
        .unwrap();
    let body = Arc::new(
        serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
            .to_string(),
    );
    let mut overheads = Vec::new();
    for &rate in &rates {
        let _ = open_loop(&client, &direct, &body, rate, 1).await;
        let d = open_loop(&client, &direct, &body, rate, seconds).await;
        let _ = open_loop(&client, &through, &body, rate, 1).await;
        let w = open_loop(&client, &through, &body, rate, seconds).await;
        print_row(rate, "direct", &d);
        print_row(rate, "warden", &w);
        overheads.push((
            rate,
            pct(&w.latencies, 50.0) - pct(&d.latencies, 50.0),
            pct(&w.latencies, 99.0) - pct(&d.latencies, 99.0),
        ));
    }
    println!();
    println!("| rate (req/s) | overhead p50 (ms) | overhead p99 (ms) |");
    println!("|---|---|---|");
    for (rate, p50, p99) in overheads {
        println!("| {rate} | {p50:.3} | {p99:.3} |");
    }

    println!();
    println!(
        "## Streaming: {CHUNKS_PER_STREAM} chunks {} ms apart, {streams_per_sec} streams/s",
        CHUNK_INTERVAL.as_millis()
    );
    println!();
    let stream_body = Arc::new(
        serde_json::json!({"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
            .to_string(),
    );
    let _ = streams(&client, &direct, &stream_body, streams_per_sec, 1).await;
    let d = streams(&client, &direct, &stream_body, streams_per_sec, seconds).await;
    let _ = streams(&client, &through, &stream_body, streams_per_sec, 1).await;
    let w = streams(&client, &through, &stream_body, streams_per_sec, seconds).await;
    println!("| measure (ms) | path | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for (name, direct_values, warden_values) in [
        ("time to first byte", &d.ttfb, &w.ttfb),
        ("chunk delivery", &d.chunk_delay, &w.chunk_delay),
    ] {
        for (path, values) in [("direct", direct_values), ("warden", warden_values)] {
            println!(
                "| {name} | {path} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                values.len(),
                pct(values, 50.0),
                pct(values, 90.0),
                pct(values, 99.0),
                pct(values, 100.0)
            );
        }
    }
    println!();
    println!(
        "added time to first byte: p50 {:.3} ms, p99 {:.3} ms; added per-chunk latency: p50 {:.3} ms, p99 {:.3} ms; stream errors: direct {}, warden {}",
        pct(&w.ttfb, 50.0) - pct(&d.ttfb, 50.0),
        pct(&w.ttfb, 99.0) - pct(&d.ttfb, 99.0),
        pct(&w.chunk_delay, 50.0) - pct(&d.chunk_delay, 50.0),
        pct(&w.chunk_delay, 99.0) - pct(&d.chunk_delay, 99.0),
        d.errors,
        w.errors
    );
    responses_section(
        &client,
        &through,
        rates.first().copied().unwrap_or(500),
        streams_per_sec,
        seconds,
    )
    .await;
    drop(warden);
    guard_section(&client, &warden_bin, &dir, upstream_port, seconds).await;
    keys_section(&warden_bin, &dir, upstream_port, seconds).await;
    layers_section(upstream_port).await;
    shared_limits_section(upstream_port, &dir).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The Responses API against chat completions through the same Warden: what the translation
/// (request in, `Response` object or events out) adds.
async fn responses_section(
    client: &reqwest::Client,
    chat_url: &str,
    rate: u64,
    streams_per_sec: u64,
    seconds: u64,
) {
    let responses_url = chat_url.replace("/chat/completions", "/responses");
    let question = "Why is the sky blue?";
    let chat = Arc::new(
        serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": question}]})
            .to_string(),
    );
    let response = Arc::new(
        serde_json::json!({"model": "llama3.2", "input": question, "store": false}).to_string(),
    );
    println!();
    println!(
        "## Responses API: /v1/responses against /v1/chat/completions through the same Warden"
    );
    println!();
    println!("| request | path | n | errors | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    let _ = open_loop(client, chat_url, &chat, rate, 1).await;
    let c = open_loop(client, chat_url, &chat, rate, seconds).await;
    let _ = open_loop(client, &responses_url, &response, rate, 1).await;
    let r = open_loop(client, &responses_url, &response, rate, seconds).await;
    for (path, run) in [("chat", &c), ("responses", &r)] {
        println!(
            "| {rate} req/s, whole | {path} | {} | {} | {:.3} | {:.3} |",
            run.latencies.len(),
            run.errors,
            pct(&run.latencies, 50.0),
            pct(&run.latencies, 99.0)
        );
    }
    let with_stream = |body: &Arc<String>| {
        let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
        value["stream"] = serde_json::json!(true);
        Arc::new(value.to_string())
    };
    let (chat_stream, response_stream) = (with_stream(&chat), with_stream(&response));
    let _ = streams(client, chat_url, &chat_stream, streams_per_sec, 1).await;
    let cs = streams(client, chat_url, &chat_stream, streams_per_sec, seconds).await;
    let _ = streams(client, &responses_url, &response_stream, streams_per_sec, 1).await;
    let rs = streams(
        client,
        &responses_url,
        &response_stream,
        streams_per_sec,
        seconds,
    )
    .await;
    for (path, run) in [("chat", &cs), ("responses", &rs)] {
        println!(
            "| {streams_per_sec} streams/s, first byte | {path} | {} | {} | {:.3} | {:.3} |",
            run.ttfb.len(),
            run.errors,
            pct(&run.ttfb, 50.0),
            pct(&run.ttfb, 99.0)
        );
        println!(
            "| {streams_per_sec} streams/s, chunk delivery | {path} | {} | {} | {:.3} | {:.3} |",
            run.chunk_delay.len(),
            run.errors,
            pct(&run.chunk_delay, 50.0),
            pct(&run.chunk_delay, 99.0)
        );
    }
    println!();
    println!(
        "responses added, whole: p50 {:.3} ms, p99 {:.3} ms; streamed chunk delivery: p50 {:.3} ms, p99 {:.3} ms",
        pct(&r.latencies, 50.0) - pct(&c.latencies, 50.0),
        pct(&r.latencies, 99.0) - pct(&c.latencies, 99.0),
        pct(&rs.chunk_delay, 50.0) - pct(&cs.chunk_delay, 50.0),
        pct(&rs.chunk_delay, 99.0) - pct(&cs.chunk_delay, 99.0),
    );
}

/// Starts `warden serve` in front of the fake upstream, with a guard policy when given.
async fn start_warden(
    warden_bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    upstream_port: u16,
    policy: Option<String>,
) -> (Process, String) {
    start_warden_with(warden_bin, dir, name, upstream_port, policy, "").await
}

/// Like `start_warden`, with extra config text (keys, limits) appended.
async fn start_warden_with(
    warden_bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    upstream_port: u16,
    policy: Option<String>,
    extra: &str,
) -> (Process, String) {
    let port = free_port();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n\
         [backends.fake]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{upstream_port}/v1\"\n\
         [[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"fake\", model = \"llama3.2\" }}]\n"
    );
    if let Some(policy) = policy {
        let policies = dir.join(format!("policies-{name}"));
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("default.toml"), policy).unwrap();
        config.push_str(&format!(
            "[guard]\nbackend = \"fake\"\nmodel = \"guard\"\npolicies_dir = \"{}\"\n",
            policies.display()
        ));
    }
    config.push_str(extra);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let process = Process(
        Command::new(warden_bin)
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for(&format!("http://127.0.0.1:{port}/healthz")).await;
    (
        process,
        format!("http://127.0.0.1:{port}/v1/chat/completions"),
    )
}

/// A policy over S1–S14, all blocked, with the given checks and output settings.
fn bench_policy(checks: &str, window: usize, mode: &str) -> String {
    let mut text =
        format!("checks = {checks}\n[output]\nwindow_chars = {window}\nmode = \"{mode}\"\n");
    for (code, name) in warden::guard::policy::STANDARD_CATEGORIES {
        text.push_str(&format!(
            "[[categories]]\ncode = \"{code}\"\nname = \"{name}\"\naction = \"block\"\n"
        ));
    }
    text
}

/// Time to first byte and to the end of the stream with the guard in each of its modes.
async fn guard_section(
    client: &reqwest::Client,
    warden_bin: &std::path::Path,
    dir: &std::path::Path,
    upstream_port: u16,
    seconds: u64,
) {
    let guard_ms = env_or("BENCH_GUARD_MS", 25);
    let rate = env_or("BENCH_GUARD_STREAMS_PER_SEC", 20);
    let window = 200;
    println!();
    println!(
        "## Guard: a fake Llama Guard that answers in {guard_ms} ms, {rate} streams/s, every question different (no cache hits)"
    );
    println!();
    println!("| setup | n | errors | first byte p50 | p99 | whole stream p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    let setups: [(&str, Option<String>); 4] = [
        ("no guard", None),
        (
            "input guard",
            Some(bench_policy("[\"input\"]", window, "buffered")),
        ),
        (
            "output guard, buffered",
            Some(bench_policy("[\"output\"]", window, "buffered")),
        ),
        (
            "output guard, stream_first",
            Some(bench_policy("[\"output\"]", window, "stream_first")),
        ),
    ];
    let mut first_byte_p50 = Vec::new();
    for (i, (name, policy)) in setups.into_iter().enumerate() {
        let (process, url) =
            start_warden(warden_bin, dir, &format!("guard{i}"), upstream_port, policy).await;
        let _ = streams_unique(client, &url, rate, 1).await;
        let run = streams_unique(client, &url, rate, seconds).await;
        println!(
            "| {name} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            run.ttfb.len(),
            run.errors,
            pct(&run.ttfb, 50.0),
            pct(&run.ttfb, 99.0),
            pct(&run.total, 50.0),
            pct(&run.total, 99.0)
        );
        first_byte_p50.push(pct(&run.ttfb, 50.0));
        drop(process);
    }
    println!();
    println!(
        "input guard: added time to first byte p50 {:.3} ms for a guard of {guard_ms} ms (target: at most {guard_ms} + 2 ms); output window {window} characters, {CHUNKS_PER_STREAM} chunks of ~19 characters",
        first_byte_p50[1] - first_byte_p50[0]
    );
}

/// Like `streams`, but each request asks something new, so no guard verdict is cached.
async fn streams_unique(client: &reqwest::Client, url: &str, rate: u64, seconds: u64) -> StreamRun {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let body = Arc::new(
            serde_json::json!({"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": format!("Why is the sky blue? (question {i} at {})", wall_nanos())}]})
                .to_string(),
        );
        tasks.push(tokio::spawn(one_stream(
            client.clone(),
            url.to_owned(),
            body,
        )));
    }
    let mut run = StreamRun::default();
    for task in tasks {
        match task.await.unwrap() {
            Some((ttfb, delays, total)) => {
                run.ttfb.push(ttfb);
                run.chunk_delay.extend(delays);
                run.total.push(total);
            }
            None => run.errors += 1,
        }
    }
    run
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Run {
    latencies: Vec<f64>,
    /// How late each request left against its schedule (the generator keeping up).
    lag: Vec<f64>,
    errors: usize,
}

fn print_row(rate: u64, path: &str, run: &Run) {
    println!(
        "| {rate} | {path} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        run.latencies.len(),
        run.errors,
        pct(&run.lag, 99.0),
        pct(&run.latencies, 50.0),
        pct(&run.latencies, 90.0),
        pct(&run.latencies, 99.0),
        pct(&run.latencies, 100.0)
    );
}

/// Sends `rate` requests per second for `seconds`, each at its scheduled time.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    body: &Arc<String>,
    rate: u64,
    seconds: u64,
) -> Run {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let url = url.to_owned();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.as_str().to_owned())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                    Ok((
                        sent.elapsed().as_secs_f64() * 1000.0,
                        (sent - scheduled).as_secs_f64() * 1000.0,
                    ))
                }
                _ => Err(()),
            }
        }));
    }
    let mut run = Run::default();
    for task in tasks {
        match task.await.unwrap() {
            Ok((ms, lag)) => {
                run.latencies.push(ms);
                run.lag.push(lag);
            }
            Err(()) => run.errors += 1,
        }
    }
    run
}

#[derive(Default)]
struct StreamRun {
    ttfb: Vec<f64>,
    /// From the send to `[DONE]`.
    total: Vec<f64>,
    chunk_delay: Vec<f64>,
    errors: usize,
}

async fn streams(
    client: &reqwest::Client,
    url: &str,
    body: &Arc<String>,
    rate: u64,
    seconds: u64,
) -> StreamRun {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let url = url.to_owned();
        let body = body.clone();
        tasks.push(tokio::spawn(
            async move { one_stream(client, url, body).await },
        ));
    }
    let mut run = StreamRun::default();
    for task in tasks {
        match task.await.unwrap() {
            Some((ttfb, delays, total)) => {
                run.ttfb.push(ttfb);
                run.chunk_delay.extend(delays);
                run.total.push(total);
            }
            None => run.errors += 1,
        }
    }
    run
}

async fn one_stream(
    client: reqwest::Client,
    url: String,
    body: Arc<String>,
) -> Option<(f64, Vec<f64>, f64)> {
    let sent = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.as_str().to_owned())
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut bytes = response.bytes_stream();
    let mut ttfb = None;
    let mut delays = Vec::new();
    let mut buffer = String::new();
    let mut done = false;
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.ok()?;
        let arrived = wall_nanos();
        ttfb.get_or_insert_with(|| sent.elapsed().as_secs_f64() * 1000.0);
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            // A Responses API event has an `event:` line before its data.
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or("");
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let value: serde_json::Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if value["type"] == "response.completed" {
                done = true;
            }
            let piece = match value["type"].as_str() {
                Some("response.output_text.delta") => value["delta"].as_str(),
                _ => value["choices"][0]["delta"]["content"].as_str(),
            };
            if let Some(sent) = piece.and_then(|s| s.parse::<u128>().ok()) {
                delays.push(arrived.saturating_sub(sent) as f64 / 1e6);
            }
        }
    }
    done.then(|| {
        (
            ttfb.unwrap_or(f64::NAN),
            delays,
            sent.elapsed().as_secs_f64() * 1000.0,
        )
    })
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Resident memory of a process, from /proc (Linux), in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Auth, rate limiting and metrics on the proxy path: the same load without keys and with
/// BENCH_KEYS keys (each with a request limit and a concurrency cap), and the memory they take.
async fn keys_section(
    warden_bin: &std::path::Path,
    dir: &std::path::Path,
    upstream_port: u16,
    seconds: u64,
) {
    let count = env_or("BENCH_KEYS", 10_000) as usize;
    let rate = 1000;
    println!();
    println!("## Keys: auth + rate limits + metrics at {rate} req/s, no keys vs {count} keys");
    println!();
    let mut keys = String::new();
    for i in 0..count {
        keys.push_str(&format!(
            "[[keys]]\nname = \"key-{i}\"\nkey_sha256 = \"{}\"\ntenant = \"t{}\"\nrequests_per_minute = 1000000\nmax_concurrent = 1000\n",
            sha256_hex(&format!("sk-bench-{i}")),
            i % 100
        ));
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .default_headers({
            let mut headers = reqwest::header::HeaderMap::new();
            let key = format!("Bearer sk-bench-{}", count / 2);
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&key).unwrap(),
            );
            headers
        })
        .build()
        .unwrap();
    let body = Arc::new(
        serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}).to_string(),
    );
    println!("| setup | RSS after start (MiB) | ok | errors | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for (name, extra) in [("no keys", String::new()), ("keys", keys)] {
        let (process, url) = start_warden_with(
            warden_bin,
            dir,
            &format!("keys-{}", p50s.len()),
            upstream_port,
            None,
            &extra,
        )
        .await;
        let rss = rss_kib(process.0.id())
            .map(|k| k as f64 / 1024.0)
            .unwrap_or(f64::NAN);
        let _ = open_loop(&client, &url, &body, rate, 1).await;
        let run = open_loop(&client, &url, &body, rate, seconds).await;
        println!(
            "| {name} | {rss:.1} | {} | {} | {:.3} | {:.3} |",
            run.latencies.len(),
            run.errors,
            pct(&run.latencies, 50.0),
            pct(&run.latencies, 99.0)
        );
        p50s.push((pct(&run.latencies, 50.0), pct(&run.latencies, 99.0), rss));
        drop(process);
    }
    println!();
    println!(
        "added by {count} keys: p50 {:.3} ms, p99 {:.3} ms, memory {:.1} MiB ({:.0} bytes per key)",
        p50s[1].0 - p50s[0].0,
        p50s[1].1 - p50s[0].1,
        p50s[1].2 - p50s[0].2,
        (p50s[1].2 - p50s[0].2) * 1024.0 * 1024.0 / count as f64
    );
}

/// What the layers in front of every handler cost, measured in-process, without the network
/// and the upstream that dominate the figures above: the same `GET /v1/models` through the bare
/// routes (with the caller put in by hand) and through `build_app` (request id, generation pin,
/// body limit, auth over every key, metrics, rate limits), alternately, with no keys and with
/// BENCH_KEYS keys (each with a request limit and a concurrency cap).
async fn layers_section(upstream_port: u16) {
    use tower::ServiceExt;
    let count = env_or("BENCH_KEYS", 10_000) as usize;
    let calls = env_or("BENCH_LAYER_CALLS", 20_000) as usize;
    println!();
    println!(
        "## Layers in-process: GET /v1/models through the bare routes and through build_app, {calls} calls each"
    );
    println!();
    println!("| setup | bare p50 (µs) | layered p50 (µs) | added p50 (µs) | added p99 (µs) |");
    println!("|---|---|---|---|---|");
    let mut keys = String::new();
    for i in 0..count {
        keys.push_str(&format!(
            "[[keys]]\nname = \"key-{i}\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 100000000\nmax_concurrent = 1000\n",
            sha256_hex(&format!("sk-bench-{i}"))
        ));
    }
    let base = format!(
        "[limits]\nmax_concurrent_requests = 100000\n[backends.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{upstream_port}/v1\"\n[[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"up\", model = \"llama3.2\" }}]\n"
    );
    let bearer = format!("Bearer sk-bench-{}", count / 2);
    for (name, extra) in [("no keys", String::new()), ("keys", keys)] {
        let config = warden::config::Config::parse(
            &format!("{base}{extra}"),
            std::path::Path::new("bench.toml"),
            &warden::config::MapEnv::default(),
        )
        .unwrap();
        let shared = warden::SharedState::new(warden::AppState::new(config).unwrap());
        let current = shared.current();
        let caller = warden::server::auth::authenticate(
            &current.access,
            current.config.server.admin_token.as_ref(),
            Some(&bearer["Bearer ".len()..]),
        )
        .unwrap();
        let bare = warden::server::routes::routes()
            .layer(axum::Extension(caller))
            .with_state(shared.clone());
        let layered = warden::build_app(shared);
        let mut times: [Vec<f64>; 2] = [Vec::with_capacity(calls), Vec::with_capacity(calls)];
        for round in 0..calls + 1_000 {
            for (which, app) in [&bare, &layered].into_iter().enumerate() {
                let request = axum::http::Request::get("/v1/models")
                    .header("authorization", &bearer)
                    .body(Body::empty())
                    .unwrap();
                let started = Instant::now();
                let response = app.clone().oneshot(request).await.unwrap();
                assert!(
                    response.status().is_success(),
                    "{name}: {}",
                    response.status()
                );
                let _ = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                // The first thousand warm up.
                if round >= 1_000 {
                    times[which].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        let label = if name == "keys" {
            format!("{count} keys")
        } else {
            name.to_owned()
        };
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pct(&times[0], 50.0),
            pct(&times[1], 50.0),
            pct(&times[1], 50.0) - pct(&times[0], 50.0),
            pct(&times[1], 99.0) - pct(&times[0], 99.0)
        );
    }
}

/// What the shared limits store costs a request: `GET /v1/models` through `build_app` for a key
/// with a request rate and a concurrency cap, counted locally and in a redis-server on
/// 127.0.0.1 (REDIS_SERVER_BIN, default `redis-server`; `scripts/redis.sh setup` installs it),
/// alternately, in-process.
async fn shared_limits_section(upstream_port: u16, dir: &std::path::Path) {
    use tower::ServiceExt;
    let calls = env_or("BENCH_LAYER_CALLS", 20_000) as usize;
    println!();
    println!(
        "## Shared limits: GET /v1/models through build_app for a key with requests_per_minute and max_concurrent, {calls} calls each"
    );
    println!();
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
    let port = free_port();
    let Ok(redis) = Command::new(&bin)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
    else {
        println!("skipped: no {bin} (scripts/redis.sh setup installs it)");
        return;
    };
    let _redis = Process(redis);
    let key = format!(
        "[[keys]]\nname = \"team\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 100000000\nmax_concurrent = 1000\n",
        sha256_hex("sk-bench-team")
    );
    let base = format!(
        "[backends.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{upstream_port}/v1\"\n[[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"up\", model = \"llama3.2\" }}]\n{key}"
    );
    let redis_limits = format!(
        "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"bench{}\"\n",
        std::process::id()
    );
    let mut apps = Vec::new();
    for limits in ["", redis_limits.as_str()] {
        let config = warden::config::Config::parse(
            &format!("{limits}{base}"),
            std::path::Path::new("bench.toml"),
            &warden::config::MapEnv::default(),
        )
        .unwrap();
        let shared = warden::SharedState::new(warden::AppState::new(config).unwrap());
        if let Some(store) = shared.current().access.limits.shared() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !store.health().up {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {port} never answered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        apps.push(warden::build_app(shared));
    }
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(calls), Vec::with_capacity(calls)];
    for round in 0..calls + 1_000 {
        for (which, app) in apps.iter().enumerate() {
            let request = axum::http::Request::get("/v1/models")
                .header("authorization", "Bearer sk-bench-team")
                .body(Body::empty())
                .unwrap();
            let started = Instant::now();
            let response = app.clone().oneshot(request).await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let _ = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            if round >= 1_000 {
                times[which].push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    println!("| store | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|");
    for (name, values) in [("local", &times[0]), ("redis (127.0.0.1)", &times[1])] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            pct(values, 50.0),
            pct(values, 99.0)
        );
    }
    println!();
    println!(
        "redis added: p50 {:.1} µs, p99 {:.1} µs (target: p99 under 1 ms); two script calls per request: the admission, and the lease given back before the answer",
        pct(&times[1], 50.0) - pct(&times[0], 50.0),
        pct(&times[1], 99.0) - pct(&times[0], 99.0)
    );
}
