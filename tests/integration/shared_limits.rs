//! `[limits] store = "redis"`: the keys' limits shared by several Warden replicas through a real
//! redis-server (Debian's, started by `make test`; REDIS_TEST_URL names it). The outage tests
//! start and stop their own server (REDIS_SERVER_BIN).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fake_upstream::{FakeUpstream, Flavor};

fn redis_url() -> String {
    std::env::var("REDIS_TEST_URL")
        .expect("REDIS_TEST_URL must name a running redis-server (make test starts one)")
}

/// A key prefix of this test's own, so that tests sharing the server never share counters.
fn prefix(test: &str) -> String {
    format!(
        "t{}-{test}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A config of one model, one key `team` (its secret in TEAM_KEY) with `limits`, and `store`.
fn config(upstream: &FakeUpstream, key_limits: &str, limits: &str) -> String {
    format!(
        "{}\n[[keys]]\nname = \"team\"\nkey = \"env:TEAM_KEY\"\n{key_limits}\n",
        config_for(&[upstream], limits)
    )
}

fn redis_limits(url: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[limits]\nstore = \"redis\"\n{extra}\n[limits.redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 200\nlease_ttl_ms = 1500\n"
    )
}

const KEY: &str = "sk-team-shared";

fn chat_as_team(address: &str, stream: bool) -> reqwest::RequestBuilder {
    client()
        .post(format!("http://{address}/v1/chat/completions"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(10))
        .json(&chat_body(stream))
}

/// The status of one non-streamed chat request as `team`.
async fn status_as_team(address: &str) -> u16 {
    chat_as_team(address, false)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Two `warden serve` processes of one config.
fn two_replicas(name: &str, text: &str) -> [(Serving, String); 2] {
    let path = temp_config(name, text);
    let env = [("RUST_LOG", "info"), ("TEAM_KEY", KEY)];
    let (a, address_a, _) = spawn_serving_with(&path, &env);
    let (b, address_b, _) = spawn_serving_with(&path, &env);
    [(a, address_a), (b, address_b)]
}

/// A Warden in this process for key `team`, its shared store up; and its address.
async fn team_warden(text: &str) -> (Warden, String) {
    let warden = Warden::start_with_env(
        text,
        warden::config::MapEnv::default().with("TEAM_KEY", KEY),
    )
    .await;
    let address = warden.addr.to_string();
    store_up(&address).await;
    (warden, address)
}

/// Waits until the replica's `/readyz` says the shared store is up (it connects in the
/// background after start-up).
async fn store_up(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let limits = limits_readiness(address).await;
        if limits["status"] == "up" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store never came up: {limits}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends 20 requests, alternating between the replicas; the statuses in order.
async fn twenty_alternating(replicas: &[(Serving, String); 2]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..20 {
        let response = chat_as_team(&replicas[i % 2].1, false)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        }
        statuses.push(status);
    }
    statuses
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_TEST_URL); `make test` runs it"]
async fn a_keys_rate_holds_across_two_replicas_sharing_redis() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let shared = two_replicas(
        "shared-rpm",
        &config(
            &upstream,
            "requests_per_minute = 10",
            &redis_limits(&redis_url(), &prefix("rpm"), ""),
        ),
    );
    store_up(&shared[0].1).await;
    store_up(&shared[1].1).await;
    let statuses = twenty_alternating(&shared).await;
    assert_eq!(
        statuses,
        [vec![200; 10], vec![429; 10]].concat(),
        "10 per minute for the key over both replicas"
    );
    assert_eq!(upstream.calls(), 10);

    // The same two replicas counting locally let each take the key's whole rate: what the
    // shared store is for.
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let local = two_replicas(
        "local-rpm",
        &config(&upstream, "requests_per_minute = 10", ""),
    );
    let statuses = twenty_alternating(&local).await;
    assert_eq!(statuses, vec![200; 20]);
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_TEST_URL); `make test` runs it"]
async fn a_killed_replica_gives_its_slots_back_when_their_leases_expire() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let [(mut a, address_a), (_b, address_b)] = two_replicas(
        "leases",
        &config(
            &upstream,
            "max_concurrent = 1",
            &redis_limits(&redis_url(), &prefix("leases"), ""),
        ),
    );
    store_up(&address_a).await;
    store_up(&address_b).await;

    // A finished request and a stream whose client left both give the slot back at once.
    let done = chat_as_team(&address_a, false).send().await.unwrap();
    assert_eq!(done.status(), 200);
    upstream.script(|s| s.frame_delay = Duration::from_millis(300));
    let mut left = chat_as_team(&address_a, true).send().await.unwrap();
    assert_eq!(left.status(), 200);
    assert_eq!(
        status_as_team(&address_b).await,
        429,
        "the stream on A holds the key's one slot"
    );
    left.chunk().await.unwrap();
    drop(left);
    upstream.script(|s| s.frame_delay = Duration::ZERO);
    let freed = poll_until_ok(&address_b, Duration::from_secs(1)).await;
    assert!(
        freed < Duration::from_secs(1),
        "released when the client left, not by expiry"
    );

    // The slot is back before the client has read the end of the stream: the next request,
    // sent at once, finds it free.
    let whole = chat_as_team(&address_a, true).send().await.unwrap();
    assert!(whole.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(status_as_team(&address_b).await, 200);
    // The same for a Responses stream, which ends with `response.completed` (no `[DONE]`).
    let response = client()
        .post(format!("http://{address_a}/v1/responses"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"model": "llama3.2", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: response.completed\n"), "{text}");
    assert_eq!(status_as_team(&address_b).await, 200);

    // A request held past the lease's time to live keeps its slot (renewed), until its
    // replica dies; then the slot comes back when the lease expires.
    // A frame a second: the stream outlives twice the lease's time to live (1.5 s) within the
    // backend's idle timeout (2 s).
    upstream.script(|s| s.frame_delay = Duration::from_millis(1000));
    let holding = chat_as_team(&address_a, true).send().await.unwrap();
    assert_eq!(holding.status(), 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        status_as_team(&address_b).await,
        429,
        "renewed: held twice its time to live and still held"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    let killed = Instant::now();
    upstream.script(|s| s.frame_delay = Duration::ZERO);
    assert_eq!(
        status_as_team(&address_b).await,
        429,
        "the dead replica's lease is still there"
    );
    drop(holding);
    poll_until_ok(&address_b, Duration::from_secs(5)).await;
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "given back by expiry (1.5 s), not at once: {:?}",
        killed.elapsed()
    );
}

/// Sends requests to `address` until one is answered 200; how long that took.
async fn poll_until_ok(address: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = status_as_team(address).await;
        if status == 200 {
            return started.elapsed();
        }
        assert_eq!(status, 429);
        assert!(
            started.elapsed() < within,
            "no slot came back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_TEST_URL); `make test` runs it"]
async fn a_keys_token_budget_is_shared_by_the_replicas() {
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let text = config(
        &upstream,
        "tokens_per_minute = 60",
        &redis_limits(&redis_url(), &prefix("tpm"), ""),
    );
    let (_a, a) = team_warden(&text).await;
    let (_b, b) = team_warden(&text).await;
    let first = chat_as_team(&a, false).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "60");
    // The usage is settled in the background once the answer is out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = chat_as_team(&b, false).send().await.unwrap();
    assert_eq!(second.status(), 200, "the first usage (41) left room");
    let remaining: u32 = second.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining < 20,
        "B saw what A's request used: {remaining} left of 60"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = chat_as_team(&a, false).send().await.unwrap();
    assert_eq!(
        third.status(),
        429,
        "the two usages drained the shared budget"
    );
    assert_eq!(third.headers()["x-ratelimit-remaining-tokens"], "0");
}

/// A redis-server of one test, on a port of its own, that the test stops and starts again.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    /// Its arguments, from its port and folder.
    args: fn(u16, &std::path::Path) -> Vec<String>,
    child: Option<Child>,
}

fn plain_server(port: u16, dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(["--port".to_owned(), port.to_string()])
    .collect()
}

fn redis_bin(name: &str) -> std::path::PathBuf {
    let server = std::env::var("REDIS_SERVER_BIN")
        .expect("REDIS_SERVER_BIN must name redis-server (make test sets it)");
    std::path::Path::new(&server).with_file_name(name)
}

impl OwnRedis {
    fn start() -> OwnRedis {
        Self::start_with(plain_server)
    }

    fn start_with(args: fn(u16, &std::path::Path) -> Vec<String>) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("warden-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = OwnRedis {
            port,
            dir,
            args,
            child: None,
        };
        redis.up();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = std::process::Command::new(redis_bin("redis-server"))
            .args((self.args)(self.port, &self.dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli` against this server.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(redis_bin("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the server: a Redis that holds connections open and
    /// answers nothing, as a stalled one does.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server of the test's own, and a Warden for key `team` (`per_minute` requests) that
/// counts in it, with `on_store_unavailable = fallback`.
async fn behind_own_redis(
    per_minute: u32,
    fallback: &str,
) -> (OwnRedis, FakeUpstream, Warden, String) {
    let redis = OwnRedis::start();
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let text = config(
        &upstream,
        &format!("requests_per_minute = {per_minute}"),
        &redis_limits(
            &redis.url(),
            &prefix(fallback),
            &format!("on_store_unavailable = \"{fallback}\""),
        ),
    );
    let (warden, address) = team_warden(&text).await;
    (redis, upstream, warden, address)
}

async fn readiness(warden: &Warden) -> (u16, serde_json::Value) {
    let response = warden.get("/readyz").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_SERVER_BIN); `make test` runs it"]
async fn with_redis_down_or_frozen_fail_refuses_without_waiting_and_recovers_by_itself() {
    let (mut redis, upstream, warden, address) = behind_own_redis(100, "fail").await;
    assert_eq!(status_as_team(&address).await, 200);

    redis.down();
    // The client's own timeout (10 s) is the hang detector: each answer comes at once.
    for _ in 0..3 {
        let refused = chat_as_team(&address, false).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert!(refused.headers().contains_key("x-request-id"));
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "limits_unavailable", "{body}");
    }
    let (status, ready) = readiness(&warden).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["limits"]["status"], "down");
    assert_eq!(ready["limits"]["required"], true);
    assert!(ready["limits"]["error"].is_string(), "{ready}");
    assert_eq!(upstream.calls(), 1, "nothing refused went upstream");

    redis.up();
    store_up(&address).await;
    assert_eq!(status_as_team(&address).await, 200);
    let (status, _) = readiness(&warden).await;
    assert_eq!(status, 200);
    let metrics = warden.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("warden_limits_store_up 1"), "{metrics}");
    assert!(
        metrics.contains("warden_limits_store_unavailable_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );

    // Slow rather than gone: a frozen server keeps the connection and answers nothing. The
    // call gives up after timeout_ms (200 here) and the requests after it do not wait at all.
    redis.signal("STOP");
    let started = Instant::now();
    let refused = chat_as_team(&address, false).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let waited = started.elapsed();
    let started = Instant::now();
    let again = chat_as_team(&address, false).send().await.unwrap();
    assert_eq!(again.status(), 503);
    assert!(
        started.elapsed() < waited,
        "once found down, no request waits for the store: {:?} then {waited:?}",
        started.elapsed()
    );
    redis.signal("CONT");
    store_up(&address).await;
    assert_eq!(status_as_team(&address).await, 200);
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_SERVER_BIN); `make test` runs it"]
async fn with_redis_down_local_counts_in_the_replica_until_it_is_back() {
    let (mut redis, _upstream, warden, address) = behind_own_redis(2, "local").await;
    assert_eq!(status_as_team(&address).await, 200);
    assert_eq!(status_as_team(&address).await, 200);
    assert_eq!(
        status_as_team(&address).await,
        429,
        "the shared count: 2 per minute"
    );

    redis.down();
    // This replica's own counters, fresh: two more, then its own limit.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..3).map(|_| status_as_team(&address))).await;
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 200, 429], "{statuses:?}");
    let (status, ready) = readiness(&warden).await;
    assert_eq!(status, 200, "still serving, with local limits: {ready}");
    assert_eq!(ready["limits"]["status"], "down");
    assert_eq!(ready["limits"]["on_unavailable"], "local");
    let metrics = warden.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("warden_limits_store_up 0"), "{metrics}");
    assert!(
        metrics.contains("warden_limits_store_unavailable_total{outcome=\"local\"} 3"),
        "{metrics}"
    );

    // Back (empty: the server kept nothing), and shared again.
    redis.up();
    store_up(&address).await;
    let statuses = [
        status_as_team(&address).await,
        status_as_team(&address).await,
        status_as_team(&address).await,
    ];
    assert_eq!(statuses, [200, 200, 429]);
}

/// Three rate checks of key `team` (2 per minute) at `warden`: the shared count.
async fn two_then_refused(address: &str) -> [u16; 3] {
    let mut statuses = [0; 3];
    for status in &mut statuses {
        *status = status_as_team(address).await;
    }
    statuses
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_SERVER_BIN); `make test` runs it"]
async fn a_redis_cluster_holds_the_shared_counts() {
    fn cluster_node(port: u16, dir: &std::path::Path) -> Vec<String> {
        let mut args = plain_server(port, dir);
        args.extend([
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-config-file".to_owned(),
            dir.join("nodes.conf").display().to_string(),
        ]);
        args
    }
    let nodes = [
        OwnRedis::start_with(cluster_node),
        OwnRedis::start_with(cluster_node),
        OwnRedis::start_with(cluster_node),
    ];
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addresses.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    nodes[0].cli(&create);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let urls: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let prefix = prefix("cluster");
    let limits = format!(
        "[limits]\nstore = \"redis\"\n[limits.redis]\ncluster = [{}]\nkey_prefix = \"{prefix}\"\n",
        urls.join(", ")
    );
    let text = config(
        &upstream,
        "requests_per_minute = 2\nmax_concurrent = 4",
        &limits,
    );
    let (_warden, address) = team_warden(&text).await;
    assert_eq!(two_then_refused(&address).await, [200, 200, 429]);
    // The key's counters sit on the one node that owns their hash tag.
    let slot_key = format!("{{{prefix}:team}}:rpm");
    let holders = nodes
        .iter()
        .filter(|n| n.cli(&["exists", &slot_key]).trim() == "1")
        .count();
    assert_eq!(holders, 1, "{slot_key} on exactly one node");
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_SERVER_BIN); `make test` runs it"]
async fn redis_sentinel_names_the_primary_that_holds_the_counts() {
    let primary = OwnRedis::start();
    // Sentinel rewrites its config file: one of its own, in a folder of its own.
    static PRIMARY_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    PRIMARY_PORT.set(primary.port).unwrap();
    fn sentinel(port: u16, dir: &std::path::Path) -> Vec<String> {
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\nsentinel monitor wardenprimary 127.0.0.1 {} 1\n",
                dir.display(),
                PRIMARY_PORT.get().unwrap()
            ),
        )
        .unwrap();
        vec![conf.display().to_string(), "--sentinel".to_owned()]
    }
    let sentinel = OwnRedis::start_with(sentinel);

    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let prefix = prefix("sentinel");
    let through_sentinel = format!(
        "[limits]\nstore = \"redis\"\n[limits.redis]\nsentinels = [\"{}\"]\nsentinel_service = \"wardenprimary\"\nkey_prefix = \"{prefix}\"\n",
        sentinel.url()
    );
    let (_warden, address) = team_warden(&config(
        &upstream,
        "requests_per_minute = 2",
        &through_sentinel,
    ))
    .await;
    assert_eq!(two_then_refused(&address).await, [200, 200, 429]);
    // A Warden that speaks to the primary directly sees the same count: Sentinel led there.
    let (_direct, address) = team_warden(&config(
        &upstream,
        "requests_per_minute = 2",
        &redis_limits(&primary.url(), &prefix, ""),
    ))
    .await;
    assert_eq!(two_then_refused(&address).await, [429, 429, 429]);
}

const TLS_PASSWORD: &str = "redis-test-password-9f2c";

/// A redis-server that speaks TLS only, with a certificate for 127.0.0.1 from a CA of its own
/// (made here with openssl, in the server's folder) and a password.
fn tls_server(port: u16, dir: &std::path::Path) -> Vec<String> {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    if !dir.join("server.crt").exists() {
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=warden-test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        file("server.crt"),
        "--tls-key-file".into(),
        file("server.key"),
        "--tls-ca-cert-file".into(),
        file("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
        "--requirepass".into(),
        TLS_PASSWORD.into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

async fn limits_readiness(address: &str) -> serde_json::Value {
    let ready: serde_json::Value = client()
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["limits"].clone()
}

#[tokio::test]
#[ignore = "needs redis-server (REDIS_SERVER_BIN) and openssl; `make test` runs it"]
async fn rediss_verifies_the_servers_certificate_and_sends_the_password_by_reference() {
    let redis = OwnRedis::start_with(tls_server);
    let upstream = FakeUpstream::start(Flavor::OpenAi).await;
    let limits = format!(
        "[limits]\nstore = \"redis\"\non_store_unavailable = \"fail\"\n[limits.redis]\nurl = \"rediss://127.0.0.1:{}\"\npassword = \"env:REDIS_PASSWORD\"\nkey_prefix = \"{}\"\n",
        redis.port,
        prefix("tls")
    );
    let path = temp_config(
        &format!("tls-{}", redis.port),
        &config(&upstream, "requests_per_minute = 2", &limits),
    );
    let ca = redis.dir.join("ca.crt").display().to_string();
    let start = |env: &[(&str, &str)]| {
        let mut all = vec![("RUST_LOG", "info"), ("TEAM_KEY", KEY)];
        all.extend_from_slice(env);
        spawn_serving_with(&path, &all)
    };

    // The server's CA trusted (as a system's roots would hold it) and the right password.
    let (_trusting, address, _) =
        start(&[("SSL_CERT_FILE", &ca), ("REDIS_PASSWORD", TLS_PASSWORD)]);
    store_up(&address).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status_as_team(&address).await);
    }
    assert_eq!(statuses, [200, 200, 429]);

    // A certificate nobody vouched for is refused, and so is a wrong password: down, with the
    // reason, and never the password in it.
    let empty_roots = redis.dir.join("no-roots.pem");
    std::fs::write(&empty_roots, "").unwrap();
    let untrusted = empty_roots.display().to_string();
    for (env, reason) in [
        (
            vec![
                ("SSL_CERT_FILE", untrusted.as_str()),
                ("REDIS_PASSWORD", TLS_PASSWORD),
            ],
            "certificate",
        ),
        (
            vec![("SSL_CERT_FILE", ca.as_str()), ("REDIS_PASSWORD", "not-it")],
            "pass",
        ),
    ] {
        let (_refused, address, _) = start(&env);
        let deadline = Instant::now() + Duration::from_secs(10);
        let limits = loop {
            let limits = limits_readiness(&address).await;
            let error = limits["error"].as_str().unwrap_or("").to_lowercase();
            if error.contains(reason) || Instant::now() > deadline {
                break limits;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(limits["status"], "down", "{limits}");
        let error = limits["error"].as_str().unwrap().to_lowercase();
        assert!(error.contains(reason), "{limits}");
        assert!(
            !error.contains(TLS_PASSWORD) && !error.contains("not-it"),
            "{limits}"
        );
        let refused = chat_as_team(&address, false).send().await.unwrap();
        assert_eq!(refused.status(), 503);
    }
}
